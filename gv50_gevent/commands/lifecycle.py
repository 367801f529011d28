"""The command lifecycle in one place: its statuses, the IMEI rule it checks, and the writes that
create a command or move it on. The gateway's `CommandStore` and the operator's CLI both use these,
so a command queued or cancelled from the command line looks exactly like one the gateway moved.

Plain pymongo and the pure protocol package only: the CLI imports this without gevent.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from bson import ObjectId
from pymongo import ReturnDocument
from pymongo.collection import Collection

from ..protocol.fields import is_imei
from ..storage.database import durable

__all__ = ["STATUSES", "OPEN_STATUSES", "FINAL_STATUSES", "CANCELLABLE", "is_imei", "new_command", "moved",
           "insert_command", "cancel_command"]

Doc = dict[str, Any]

OPEN_STATUSES: tuple[str, ...] = ("pending", "sent")
FINAL_STATUSES: tuple[str, ...] = ("acknowledged", "failed", "expired", "cancelled")
STATUSES: tuple[str, ...] = OPEN_STATUSES + FINAL_STATUSES
# `None`: inserted by the operator (without a status) and not yet taken up by a gateway.
CANCELLABLE: tuple[str | None, ...] = (*OPEN_STATUSES, None)


def new_command(imei: str, type_: str, params: Mapping[str, Any], now: datetime, *,
                expires_at: datetime | None = None, max_attempts: int | None = None,
                command_id: ObjectId | None = None, source: str | None = None,
                extra: Mapping[str, Any] | None = None) -> Doc:
    """A command as a gateway would have normalised it: pending, no attempt yet, one history entry.
    `source`: who queued it (`profile:<name>` for a rollout; none for the operator); `extra`: more
    fields of the caller's own."""
    doc: Doc = {"_id": command_id or ObjectId(), "imei": imei, "type": type_, "params": dict(params),
                "status": "pending", "created_at": now, "attempts": 0,
                "history": [{"status": "pending", "at": now}]}
    if expires_at is not None:
        doc["expires_at"] = expires_at
    if max_attempts is not None:
        doc["max_attempts"] = max_attempts
    if source is not None:
        doc["source"] = source
    if extra:
        doc.update({key: value for key, value in extra.items() if key not in doc})
    return doc


def expires_in(now: datetime, seconds: float | None) -> datetime | None:
    return None if seconds is None else now + timedelta(seconds=seconds)


def moved(status: str, now: datetime, *, set_: Doc | None = None, inc: Doc | None = None,
          note: Doc | None = None) -> Doc:
    """The update of one transition: the status, `finished_at` when it is final, and its history
    entry, all at the one moment `now`."""
    fields: Doc = {"status": status, **(set_ or {})}
    if status in FINAL_STATUSES:
        fields["finished_at"] = now
    update: Doc = {"$set": fields, "$push": {"history": {"status": status, "at": now, **(note or {})}}}
    if inc:
        update["$inc"] = inc
    return update


def insert_command(coll: Collection[Doc], doc: Doc) -> None:
    """Insert with w=majority, j=true: a change stream (the gateways' watchers) sees only
    majority-committed writes."""
    coll.with_options(write_concern=durable("majority")).insert_one(doc)


def cancel_command(coll: Collection[Doc], command_id: Any, now: datetime, *, reason: str | None = None,
                   statuses: tuple[str | None, ...] = CANCELLABLE) -> Doc | None:
    """pending or sent -> cancelled: a compare-and-set on the status, like every transition. A
    gateway claiming the command for a (re)send at the same moment filters on the status it saw,
    so after this write its claim matches nothing and the command is never sent again. Returns the
    document after, or None when it was not cancellable (or does not exist). `reason` goes in
    `error` and the history entry; `statuses`: only from these (a subset of CANCELLABLE)."""
    set_: Doc = {"cancelled_at": now}
    if reason is not None:
        set_["error"] = reason
    return coll.with_options(write_concern=durable("majority")).find_one_and_update(
        {"_id": command_id, "status": {"$in": [s for s in statuses if s in CANCELLABLE]}},
        moved("cancelled", now, set_=set_, note=None if reason is None else {"reason": reason}),
        return_document=ReturnDocument.AFTER)
