"""The `commands` collection: normalising what the operator inserts, and every status transition.

Each transition is one `find_one_and_update` whose filter states what the caller last saw (status,
attempts, gateway): a compare-and-set. When two gateways, or a gateway's dispatcher and its ACK
handler, race on one command, exactly one update matches and the others get `None` and re-read.
Every transition sets `status` and appends `{status, at, ...}` to `history` in the same update.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

from bson import ObjectId
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.collection import Collection

from ..logs import about
from ..protocol.commands import CommandError, validate_command
from ..storage.database import COMMANDS, DB
from ..storage.stats import MinuteCounts
from .lifecycle import OPEN_STATUSES, is_imei, moved
from .registry import OpenCommand

log = logging.getLogger(__name__)

Doc = dict[str, Any]
MAX_ATTEMPTS_LIMIT = 100
OPEN_LIMIT = 1000  # open commands of one device read at once; more wait for these to finish
# What the dispatcher never needs: left out of its reads and of the registry's copies.
UNUSED_FIELDS = ("history", "ack", "answer")
ROLLOUT_PREFIX = "profile:"  # `commands.source` of a rollout's commands
RECENT_SERIALS = 32  # a late duplicate ACK must not match a new command: avoid recently used serials


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def created_at_of(doc: Mapping[str, Any], now: datetime) -> datetime:
    created = doc.get("created_at")
    if isinstance(created, datetime):
        return created
    if isinstance(doc.get("_id"), ObjectId):
        return doc["_id"].generation_time
    return now


def first_open(docs: list[Doc] | list[Mapping[str, Any]]) -> Doc | None:
    """The command to work on among a device's open ones: the one awaiting its ACK if there is
    one (one at a time), else the operator's oldest, else a rollout's oldest. A command the
    operator just inserted has no `created_at` yet, so the order is computed here rather than by
    a MongoDB sort (which would put the missing dates first)."""
    if not docs:
        return None
    now = utcnow()
    return dict(min(docs, key=lambda d: (d.get("status") != "sent", is_rollout(d), created_at_of(d, now),
                                         str(d["_id"]))))


def is_rollout(doc: Mapping[str, Any]) -> bool:
    """A command a profile's rollout queued (`source: "profile:<name>"`). The operator's own
    commands go before these: a rollout to 10,000 trackers must not hold up a `block`."""
    source = doc.get("source")
    return isinstance(source, str) and source.startswith(ROLLOUT_PREFIX)


def problem_of(doc: Mapping[str, Any]) -> CommandError | None:
    """Why this command can never be sent, or None. Checked before anything is sent."""
    imei = doc.get("imei")
    if not is_imei(imei):
        return CommandError("imei", "must be a string of 14-15 digits")
    try:
        validate_command(doc.get("type"), doc.get("params"))  # type: ignore[arg-type]
    except CommandError as exc:
        if exc.field in ("type", "params"):
            return exc
        return CommandError(f"params.{exc.field}", exc.reason)  # name it as the operator wrote it
    attempts = doc.get("max_attempts")
    if attempts is not None:
        if isinstance(attempts, bool) or not isinstance(attempts, (int, float)) or attempts != int(attempts) \
                or not 1 <= attempts <= MAX_ATTEMPTS_LIMIT:
            return CommandError("max_attempts", f"must be an integer between 1 and {MAX_ATTEMPTS_LIMIT}")
    expires = doc.get("expires_at")
    if expires is not None and not isinstance(expires, datetime):
        return CommandError("expires_at", "must be a date")
    return None


class CommandStore:
    def __init__(self, db: DB, gateway_id: str, ttl_s: float, max_attempts: int, *,
                 claim_db: DB | None = None) -> None:
        self.coll = db[COMMANDS]
        # The claims (the write between an operator's insert and the bytes on the wire), the
        # dispatcher's reads of a device's next command and the ACKs (the next command waits for
        # them) may go through a client of their own (see app.py), so that they never queue for a
        # connection behind the command room's other writes and the fleet's work.
        self.dispatch = self.coll if claim_db is None else claim_db[COMMANDS]
        self.gateway_id = gateway_id
        self.ttl = timedelta(seconds=ttl_s)
        self.default_max_attempts = max_attempts
        self.transitions = MinuteCounts()  # status changes this gateway made, last minute

    # --- reading ---

    def expires_at(self, doc: Mapping[str, Any]) -> datetime | None:
        own = doc.get("expires_at")
        if isinstance(own, datetime):
            return own
        created = doc.get("created_at")
        return created + self.ttl if isinstance(created, datetime) else None

    def max_attempts(self, doc: Mapping[str, Any]) -> int:
        value = doc.get("max_attempts")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and 1 <= value <= MAX_ATTEMPTS_LIMIT:
            return int(value)
        return self.default_max_attempts

    def open_entry(self, doc: Mapping[str, Any]) -> OpenCommand:
        kept = {key: value for key, value in doc.items() if key not in UNUSED_FIELDS}
        return OpenCommand(doc["_id"], doc["imei"], doc.get("status"), doc.get("created_at"), self.expires_at(doc),
                           kept)

    def open_commands(self) -> list[Doc]:
        """The sweep: every command that may still need work (open, or not normalised yet)."""
        query = {"$or": [{"status": {"$in": list(OPEN_STATUSES)}}, {"status": {"$exists": False}}]}
        return list(self.coll.find(query, projection=dict.fromkeys(UNUSED_FIELDS, 0)))

    def next_open(self, imei: str) -> Doc | None:
        """The command to work on (see `first_open`), fresh from MongoDB."""
        return first_open(list(self.dispatch.find({"imei": imei, "status": {"$in": [*OPEN_STATUSES, None]}},
                                                  projection=dict.fromkeys(UNUSED_FIELDS, 0),
                                                  sort=[("_id", ASCENDING)], limit=OPEN_LIMIT)))

    def get(self, command_id: Any) -> Doc | None:
        return self.coll.find_one({"_id": command_id})

    def pick_serial(self, imei: str, recent: set[str], others_open: bool) -> str:
        """A 4-hex serial unused by the device's open commands and its recently used ones.
        `recent` is what this gateway used lately for the device (kept in memory: a late duplicate
        ACK must not match a new command); MongoDB is asked only when other open commands exist."""
        used = set(recent)
        if others_open:
            used |= {str(d.get("serial")) for d in self.dispatch.find(
                {"imei": imei, "status": {"$in": list(OPEN_STATUSES)}, "serial": {"$exists": True}}, {"serial": 1})}
        while True:
            serial = f"{secrets.randbelow(0x10000):04X}"
            if serial not in used:
                return serial

    def find_sent(self, imei: str, serial: str) -> Doc | None:
        return self.dispatch.find_one({"imei": imei, "serial": serial, "status": "sent"})

    def find_cancelled_after_send(self, imei: str, serial: str) -> Doc | None:
        """The most recently cancelled command with this serial that had been sent."""
        return self.coll.find_one({"imei": imei, "serial": serial, "status": "cancelled", "sent_at": {"$exists": True}},
                                  sort=[("finished_at", DESCENDING)])

    def find_acknowledged_by(self, imei: str, serial: str, raw: str) -> Doc | None:
        """The command this very ACK line acknowledged: after a write whose answer was lost (an
        election), the retry finds here that the first try landed."""
        return self.dispatch.find_one({"imei": imei, "serial": serial, "status": "acknowledged", "ack": raw},
                                  sort=[("acknowledged_at", DESCENDING)])

    def record_late_ack(self, doc: Mapping[str, Any], raw: str) -> Doc | None:
        """An ACK for a command the operator cancelled after it was sent: kept in `late_ack`
        ({raw, at}) and nothing else changes. Only its first late ACK (a duplicate does not
        overwrite it)."""
        return self.coll.find_one_and_update(
            {"_id": doc["_id"], "status": "cancelled", "late_ack": {"$exists": False}},
            {"$set": {"late_ack": {"raw": raw, "at": utcnow()}}}, return_document=ReturnDocument.AFTER)

    # --- writing ---

    def normalise(self, doc: Mapping[str, Any]) -> Doc | None:
        """Fill what the operator may leave out (status, created_at, attempts, history) once, and fail
        a command that can never be sent. Returns the document after, or None if it changed meanwhile."""
        now = utcnow()
        status = doc.get("status")
        fields: Doc = {"status": status or "pending", "attempts": 0, "history": [],
                       "created_at": created_at_of(doc, now)}
        problem = problem_of(doc)
        if problem is not None and fields["status"] == "pending":
            fields.update(status="failed", error=str(problem), finished_at=now,
                          history=[{"status": "failed", "at": now, "error": str(problem)}])
        expect: Doc = {"_id": doc["_id"], "attempts": {"$exists": False}, "status": status}  # None: null or absent
        after = self.coll.find_one_and_update(expect, {"$set": fields}, return_document=ReturnDocument.AFTER)
        if after is not None:
            self._log(after, status, after["status"], after.get("error"))
        return after

    def transition(self, doc: Mapping[str, Any], status: str, *, set_: Doc | None = None, inc: Doc | None = None,
                   note: Doc | None = None, expect: Doc | None = None, now: datetime | None = None,
                   coll: Collection[Doc] | None = None) -> Doc | None:
        """Move `doc` to `status` if it is still as the caller saw it. Returns the document after.
        One transition is one moment: `now` (read once, by the caller when it also sets a time of its
        own) is the history entry's `at`, `finished_at`, and whatever time the caller sets."""
        update = moved(status, utcnow() if now is None else now, set_=set_, inc=inc, note=note)
        if expect is None:
            expect = {"status": doc.get("status"), "attempts": doc.get("attempts"),
                      "gateway_id": doc.get("gateway_id")}
        after = (self.coll if coll is None else coll).find_one_and_update(
            {"_id": doc["_id"], **expect}, update, return_document=ReturnDocument.AFTER)
        if after is not None:
            self._log(after, doc.get("status"), status, (set_ or {}).get("error") or (note or {}).get("reason"))
        return after

    def fail(self, doc: Mapping[str, Any], error: str) -> Doc | None:
        return self.transition(doc, "failed", set_={"error": error}, note={"error": error})

    def claim(self, doc: Mapping[str, Any], serial: str, session_id: str, *, via: Doc | None = None,
              takeover_from: str | None = None) -> Doc | None:
        """pending -> sent, or sent -> sent (a resend, or taking over a dead gateway's command): the
        compare-and-set that makes this gateway the only sender of this attempt. A command the
        operator just inserted (not normalised yet) is normalised by this same write: one durable
        write between the insert and the bytes on the wire, not two."""
        now = utcnow()
        attempt = int(doc.get("attempts") or 0) + 1
        note: Doc = {"attempt": attempt, "gateway_id": self.gateway_id, "serial": serial}
        if takeover_from is not None:
            note["taken_over_from"] = takeover_from
        # `session_id`: the connection it went to; a resend on a later connection is due at once.
        # `sent_via`: the link it went out on ({transport, session_id, address, at}); only an ACK that
        # comes back on a link this command could have reached acknowledges it (`link.link_refusal`).
        fields: Doc = {"gateway_id": self.gateway_id, "session_id": session_id, "serial": serial, "sent_at": now}
        if via is not None:
            fields["sent_via"] = {**via, "session_id": session_id, "at": now}
        if "attempts" not in doc:
            fields["created_at"] = created_at_of(doc, now)
        return self.transition(doc, "sent", set_=fields, inc={"attempts": 1}, note=note, now=now,
                               coll=self.dispatch)

    def acknowledge(self, doc: Mapping[str, Any], raw: str) -> Doc | None:
        now = utcnow()
        return self.transition(doc, "acknowledged", set_={"acknowledged_at": now, "ack": raw},
                               note={"serial": doc.get("serial")},
                               expect={"status": "sent", "serial": doc.get("serial")}, now=now, coll=self.dispatch)

    def expire(self, command_id: Any, now: datetime) -> Doc | None:
        """pending -> expired, only if it is still pending and past its deadline in MongoDB too."""
        doc = self.coll.find_one({"_id": command_id, "status": "pending"})
        if doc is None:
            return None
        deadline = self.expires_at(doc)
        if deadline is None or deadline > now:
            return None
        return self.transition(doc, "expired", note={"expires_at": deadline}, now=now)

    def record_answer(self, command_id: Any, report: str, raw: str, at: datetime) -> None:
        self.coll.update_one({"_id": command_id, "answer": {"$exists": False}},
                             {"$set": {"answer": {"report": report, "raw": raw, "received_at": at}}})

    def _log(self, doc: Mapping[str, Any], old: str | None, new: str, detail: Any = None) -> None:
        self.transitions.add(new)
        extra = f" ({detail})" if detail else ""
        attempts = f", attempt {doc.get('attempts')}" if new == "sent" else ""
        log.info("command %s %s for %s: %s -> %s%s%s", doc.get("_id"), doc.get("type"), doc.get("imei"),
                 old or "new", new, attempts, extra, extra=about(doc.get("imei"), command_id=doc.get("_id")))
