"""The in-memory registry of open commands (`pending` or `sent`, or not yet normalised), per IMEI.

It is a cache that says *which devices have something to do*, and keeps each command's document
as last seen (from the change stream, the sweep or this gateway's own writes). The dispatcher acts
on those copies when it has them, which saves a read between the operator's insert and the
tracker; every transition is a compare-and-set in MongoDB, so a stale copy costs one failed write
and a fresh read, never a wrong send.

Greenlet safety: no method yields (no I/O, no locks), so under gevent each call is atomic with
respect to every other greenlet. Callers must not hold iterators across a yield; the methods
return copies.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .lifecycle import OPEN_STATUSES



@dataclass(frozen=True, slots=True)
class OpenCommand:
    id: Any
    imei: str
    status: str | None          # None: inserted by the operator, not normalised yet
    created_at: datetime | None
    expires_at: datetime | None  # the effective deadline (own `expires_at`, else created_at + TTL)
    doc: Mapping[str, Any]      # the document as last seen, without its history


def is_open(doc: Mapping[str, Any]) -> bool:
    status = doc.get("status")
    return status in OPEN_STATUSES or (status is None and "attempts" not in doc)


class CommandRegistry:
    def __init__(self) -> None:
        self._by_imei: dict[str, dict[Any, OpenCommand]] = {}
        self._imei_of: dict[Any, str] = {}
        self._versions: dict[str, int] = {}
        self._clock = itertools.count(1)

    # --- changes ---

    def upsert(self, cmd: OpenCommand) -> None:
        old_imei = self._imei_of.get(cmd.id)
        if old_imei is not None and old_imei != cmd.imei:
            self.discard(cmd.id)
        self._by_imei.setdefault(cmd.imei, {})[cmd.id] = cmd
        self._imei_of[cmd.id] = cmd.imei
        self._versions[cmd.imei] = next(self._clock)

    def discard(self, command_id: Any) -> str | None:
        """Forget one command; returns its IMEI if it was known."""
        imei = self._imei_of.pop(command_id, None)
        if imei is None:
            return None
        entries = self._by_imei.get(imei)
        if entries is not None:
            entries.pop(command_id, None)
            if not entries:
                del self._by_imei[imei]
                self._versions.pop(imei, None)
        return imei

    def replace_all(self, commands: list[OpenCommand]) -> None:
        """After a sweep: the registry becomes exactly what MongoDB holds."""
        self._by_imei.clear()
        self._imei_of.clear()
        self._versions.clear()
        for cmd in commands:
            self.upsert(cmd)

    def drop(self, imei: str, version: int) -> bool:
        """Forget a device's entries, but only if nothing was added since `version` was read: the
        dispatcher found nothing open in MongoDB and must not lose a command that arrived meanwhile."""
        if self._versions.get(imei, 0) != version:
            return False
        for command_id in self._by_imei.pop(imei, {}):
            self._imei_of.pop(command_id, None)
        self._versions.pop(imei, None)
        return True

    # --- questions ---

    def version(self, imei: str) -> int:
        return self._versions.get(imei, 0)

    def has(self, imei: str) -> bool:
        return imei in self._by_imei

    def documents(self, imei: str) -> list[Mapping[str, Any]]:
        """The last seen documents of every open command of the device."""
        return [cmd.doc for cmd in self._by_imei.get(imei, {}).values()]

    def for_imei(self, imei: str) -> list[OpenCommand]:
        return list(self._by_imei.get(imei, {}).values())

    def imeis(self) -> list[str]:
        return list(self._by_imei)

    def overdue(self, now: datetime, limit: int = 1000) -> list[OpenCommand]:
        """Pending commands past their deadline (at most `limit`, so one pass stays short)."""
        found: list[OpenCommand] = []
        for entries in self._by_imei.values():
            for cmd in entries.values():
                if cmd.status == "pending" and cmd.expires_at is not None and cmd.expires_at <= now:
                    found.append(cmd)
                    if len(found) >= limit:
                        return found
        return found

    def __len__(self) -> int:
        return len(self._imei_of)
