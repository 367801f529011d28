"""`vehicles` (the operator's registry) and `devices` (live state, ours).

Connection changes are written at once. Per-message state (last_seen_at, last_position, ignition,
identity) is coalesced in memory and flushed as one bulk write per interval: a per-message
update would cost about 270 µs of mongod CPU each, more than the whole rest of the ingest path.
"""

from __future__ import annotations

import logging
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import Any

import gevent
from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import PyMongoError

from .database import DB, DEVICES, VEHICLES

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
FLUSH_CHUNK = 100  # device updates per bulk_write


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Vehicles:
    def __init__(self, db: DB, auto_register: bool) -> None:
        self.coll = db[VEHICLES]
        self.auto_register = auto_register

    def admit(self, imei: str) -> tuple[bool, str | None, str | None]:
        """May this IMEI be served? Returns (allowed, reason when not, command password). An
        operator's `enabled: false` is honoured whatever AUTO_REGISTER says."""
        if self.auto_register:
            doc = self.coll.find_one_and_update(
                {"_id": imei},
                {"$setOnInsert": {"enabled": True, "auto_registered": True, "created_at": utcnow()}},
                upsert=True, return_document=ReturnDocument.AFTER, projection={"enabled": 1, "password": 1})
        else:
            doc = self.coll.find_one({"_id": imei}, projection={"enabled": 1, "password": 1})
            if doc is None:
                return False, "IMEI not registered in vehicles (AUTO_REGISTER=false)", None
        if doc is None or doc.get("enabled") is not True:
            return False, "vehicle is not enabled", None
        password = doc.get("password")
        return True, None, password if isinstance(password, str) and password else None


class Devices:
    def __init__(self, db: DB, gateway_id: str, flush_interval_s: float = 1.0) -> None:
        self.coll = db[DEVICES]
        self.gateway_id = gateway_id
        self.flush_interval_s = flush_interval_s
        self._pending: dict[str, dict[str, Any]] = {}
        self._offline_later: deque[tuple[str, str, datetime]] = deque(maxlen=1_000_000)
        self._greenlet: gevent.Greenlet | None = None

    # --- connection: written at once ---

    def connected(self, imei: str, session_id: str, remote_addr: str, at: datetime,
                  transport: str = "tcp") -> dict[str, Any] | None:
        """Mark online; returns the document as it was, so a caller can see who held it before."""
        return self.coll.find_one_and_update(
            {"_id": imei},
            {"$set": {"online": True, "gateway_id": self.gateway_id, "session_id": session_id,
                      "remote_addr": remote_addr, "connected_at": at, "transport": transport},
             "$max": {"last_seen_at": at}},
            upsert=True, return_document=ReturnDocument.BEFORE,
            projection={"online": 1, "remote_addr": 1, "gateway_id": 1, "session_id": 1, "sack_enable": 1,
                        "transport": 1})

    def disconnected(self, imei: str, session_id: str, at: datetime) -> None:
        """Mark offline, only this session's own record (a takeover has already moved the device
        on). If MongoDB is down, the mark is kept and written by the next flush."""
        try:
            self._mark_offline(imei, session_id, at)
        except PyMongoError as exc:
            log.warning("%s: could not mark offline now, will retry: %s", imei, exc)
            self._offline_later.append((imei, session_id, at))

    def _mark_offline(self, imei: str, session_id: str, at: datetime) -> None:
        self.coll.update_one({"_id": imei, "session_id": session_id},
                             {"$set": {"online": False, "disconnected_at": at}})

    def mark_gateway_offline(self, gateway_id: str | None = None, at: datetime | None = None) -> int:
        result = self.coll.update_many({"gateway_id": gateway_id or self.gateway_id, "online": True},
                                       {"$set": {"online": False, "disconnected_at": at or utcnow()}})
        return result.modified_count

    def mark_silent_offline(self, silent_s: float, transports: tuple[str, ...]) -> int:
        """Trackers of this gateway that hold no connection (UDP, short TCP, HTTP) and sent nothing
        for `silent_s` are offline."""
        now = utcnow()
        result = self.coll.update_many(
            {"gateway_id": self.gateway_id, "online": True, "transport": {"$in": list(transports)},
             "last_seen_at": {"$lt": now - timedelta(seconds=silent_s)}},
            {"$set": {"online": False, "disconnected_at": now}})
        return result.modified_count

    def set_now(self, imei: str, fields: dict[str, Any]) -> None:
        self.coll.update_one({"_id": imei}, {"$set": fields}, upsert=True)

    # --- per-message state: coalesced ---

    def note(self, imei: str, seen_at: datetime, fields: dict[str, Any] | None = None,
             position: dict[str, Any] | None = None) -> None:
        """Remember the newest state of a device; flushed within `flush_interval_s`."""
        entry = self._pending.get(imei)
        if entry is None:
            entry = self._pending[imei] = {"seen": seen_at, "set": {}, "position": None}
        elif seen_at > entry["seen"]:
            entry["seen"] = seen_at
        if fields:
            entry["set"].update(fields)
        if position is not None:
            held = entry["position"]
            if held is None or position["fix_time"] > held["fix_time"]:
                entry["position"] = position

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill()
            self._greenlet = None
        self.flush()

    def _run(self) -> None:
        while True:
            gevent.sleep(self.flush_interval_s)
            self.flush()

    def flush(self) -> int:
        while self._offline_later:
            imei, session_id, at = self._offline_later[0]
            try:
                self._mark_offline(imei, session_id, at)
            except PyMongoError:
                break  # still down: the next flush tries again
            self._offline_later.popleft()
        pending, self._pending = self._pending, {}
        items = list(pending.items())
        stored = 0
        for start in range(0, len(items), FLUSH_CHUNK):
            # In chunks: building and encoding 1,000 pipeline updates holds the hub for about
            # 16 ms, and every greenlet (a command on its way to a tracker, a SACK) waits that long.
            ops = [UpdateOne({"_id": imei}, _state_update(entry), upsert=True)
                   for imei, entry in items[start:start + FLUSH_CHUNK]]
            try:
                self.coll.bulk_write(ops, ordered=False)
            except PyMongoError as exc:
                log.warning("device state flush of %d devices failed, keeping it for the next one: %s",
                            len(items) - start, exc)
                self._keep(items[start:])
                break
            stored += len(ops)
        return stored

    def _keep(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        """Put back state that could not be written, merged with what arrived since."""
        for imei, entry in items:
            newer = self._pending.get(imei)
            if newer is None:
                self._pending[imei] = entry
            else:  # merge: what arrived since wins, the older position only if newer
                entry["set"].update(newer["set"])
                newer["set"] = entry["set"]
                newer["seen"] = max(newer["seen"], entry["seen"])
                if newer["position"] is None or (entry["position"] is not None and
                                                 entry["position"]["fix_time"] > newer["position"]["fix_time"]):
                    newer["position"] = entry["position"]


def _state_update(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """A pipeline update: `last_position` only moves forward in fix time (a +BUFF replay of an
    older fix never replaces a newer one); `last_seen_at` only moves forward too."""
    stage: dict[str, Any] = {key: {"$literal": value} for key, value in entry["set"].items()}
    stage["last_seen_at"] = {"$max": ["$last_seen_at", {"$literal": entry["seen"]}]}
    position = entry["position"]
    if position is not None:
        stage["last_position"] = {"$cond": [
            {"$gt": [{"$literal": position["fix_time"]}, {"$ifNull": ["$last_position.fix_time", EPOCH]}]},
            {"$literal": position},
            "$last_position",
        ]}
    return [{"$set": stage}]
