"""What the command room needs of a tracker's connection, and how it finds one: narrow interfaces
that the transports satisfy without this room importing them (and without them importing it)."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol


class Link(Protocol):
    """A live connection to one tracker. `send` raises ConnectionError once the connection is gone."""

    id: str
    password: str | None
    connected_at: datetime
    closing: str | None

    @property
    def imei(self) -> str | None: ...
    def send(self, data: bytes, kind: str) -> None: ...   # kind: the archive kind, "command"
    def set_sack(self, enabled: bool) -> None: ...


class Links(Protocol):
    def link(self, imei: str) -> Link | None: ...
