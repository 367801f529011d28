"""What the command room needs of a tracker's connection, and how it finds one: narrow interfaces
that the transports satisfy without this room importing them (and without them importing it)."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from ..protocol.connection import ArchiveKind


class Link(Protocol):
    """A live connection to one tracker. `send` raises ConnectionError once the connection is gone;
    `closing` says why it can take nothing now (None while it can)."""

    @property
    def id(self) -> str: ...
    @property
    def password(self) -> str | None: ...
    @property
    def connected_at(self) -> datetime: ...
    @property
    def closing(self) -> str | None: ...
    @property
    def imei(self) -> str | None: ...
    def send(self, data: bytes, kind: ArchiveKind) -> None: ...
    def set_sack(self, enabled: bool) -> None: ...


class Links(Protocol):
    def link(self, imei: str) -> Link | None: ...
