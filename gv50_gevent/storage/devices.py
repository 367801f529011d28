"""`vehicles` (the operator's registry) and `devices` (live state, ours).

Connection changes are written at once. Per-message state (last_seen_at, last_position, ignition,
identity, `telemetry`) is coalesced in memory and flushed as one bulk write per interval: a
per-message update would cost about 270 µs of mongod CPU each, more than the whole rest of the
ingest path. The configuration shadow (`config`, from settings dumps) is `config_shadow.py`'s.
"""

from __future__ import annotations

import logging
from collections import deque
from datetime import datetime, timezone
from typing import Any

import gevent
from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import PyMongoError

from ..protocol import Report
from ..protocol.reports_info import SettingsReport
from .config_shadow import ConfigShadow
from .database import DB, DEVICES, VEHICLES
from .telemetry import SINCE, Telemetry, held_key, report_telemetry

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
        self.config = ConfigShadow(db, gateway_id)

    # --- connection: written at once ---

    def connected(self, imei: str, session_id: str, remote_addr: str, at: datetime) -> dict[str, Any] | None:
        """Mark online; returns the document as it was, so a caller can see who held it before."""
        return self.coll.find_one_and_update(
            {"_id": imei},
            {"$set": {"online": True, "gateway_id": self.gateway_id, "session_id": session_id,
                      "remote_addr": remote_addr, "connected_at": at},
             "$max": {"last_seen_at": at}},
            upsert=True, return_document=ReturnDocument.BEFORE,
            projection={"online": 1, "remote_addr": 1, "gateway_id": 1, "session_id": 1, "sack_enable": 1})

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

    def set_now(self, imei: str, fields: dict[str, Any]) -> None:
        self.coll.update_one({"_id": imei}, {"$set": fields}, upsert=True)

    # --- per-message state: coalesced ---

    def note_report(self, report: Report, received_at: datetime, fields: dict[str, Any] | None = None,
                    position: dict[str, Any] | None = None) -> None:
        """`note` for a report: also its telemetry, and a settings dump goes to the config shadow.

        The telemetry is read from the reports at the flush, not here: a tracker sends many
        reports of one kind per flush, and the newest of each kind says all they would (older
        ones lose to it parameter by parameter anyway). What a report costs here is keeping it."""
        self.note(report.imei, received_at, fields, position)
        held = self._pending[report.imei]["reports"]
        key = held_key(report)
        at = report.sent_at or received_at
        old = held.get(key)
        if old is None or at >= old[0]:
            held[key] = (at, report, received_at)
        if isinstance(report, SettingsReport):
            self.config.collect(report, received_at)

    def note(self, imei: str, seen_at: datetime, fields: dict[str, Any] | None = None,
             position: dict[str, Any] | None = None, telemetry: Telemetry | None = None) -> None:
        """Remember the newest state of a device; flushed within `flush_interval_s`."""
        entry = self._pending.get(imei)
        if entry is None:
            entry = self._pending[imei] = {"seen": seen_at, "set": {}, "position": None, "telemetry": {},
                                           "reports": {}}
        elif seen_at > entry["seen"]:
            entry["seen"] = seen_at
        if fields:
            entry["set"].update(fields)
        if position is not None:
            held = entry["position"]
            if held is None or position["fix_time"] > held["fix_time"]:
                entry["position"] = position
        if telemetry:
            _merge_telemetry(entry["telemetry"], telemetry)

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill()
            self._greenlet = None
        self.flush()
        self.config.join(timeout=2.0)

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
                _merge_held(newer["telemetry"], _held_telemetry(entry))
                if newer["position"] is None or (entry["position"] is not None and
                                                 entry["position"]["fix_time"] > newer["position"]["fix_time"]):
                    newer["position"] = entry["position"]


# Held telemetry: param -> (value, at, since). `since` is when, within what is held, the value
# began; the flush keeps the stored `since` when the stored value is the same.
Held = dict[str, tuple[Any, datetime, datetime]]


def _merge_telemetry(held: Held, telemetry: Telemetry) -> None:
    """Each parameter moves forward in its own time: an older value (a +BUFF replay) is dropped."""
    for param, (value, at) in telemetry.items():
        old = held.get(param)
        if old is None:
            held[param] = (value, at, at)
        elif at >= old[1]:
            held[param] = (value, at, old[2] if value == old[0] else at)


def _merge_held(newer: Held, older: Held) -> None:
    for param, old in older.items():
        new = newer.get(param)
        if new is None or old[1] > new[1]:
            newer[param] = old


def _held_telemetry(entry: dict[str, Any]) -> Held:
    """The entry's telemetry with what its held reports carry, oldest report first (a later one
    wins a tie, as it arrived later). The reports are read once and dropped."""
    held: Held = entry["telemetry"]
    reports = entry["reports"]
    if reports:
        for _, report, received_at in sorted(reports.values(), key=lambda r: r[0]):
            _merge_telemetry(held, report_telemetry(report, received_at))
        reports.clear()
    return held


def _constant(value: Any) -> Any:
    # Numbers, booleans, dates and our own dicts of them are constants in an expression as they
    # are; only a string that starts with `$` would be read as a field path.
    return {"$literal": value} if isinstance(value, str) and value.startswith("$") else value


def _paths(param: str) -> tuple[str, str, str, str]:
    key = "telemetry." + param
    return key, "$" + key, "$" + key + ".value", "$" + key + ".since"


_PATHS: dict[str, tuple[str, str, str, str]] = {}
# Times go into the update once each, as fields of a first stage that the last one removes: the
# parameters refer to them by name. Encoding an aware datetime to BSON costs about as much as
# building the whole expression around it, and a GTFRI's 16 parameters share two times.
_TIME_FIELDS = tuple(f"_telemetry_t{k}" for k in range(64))


def _telemetry_stage(held: Held) -> tuple[dict[str, Any], dict[str, Any]]:
    """The times stage and the `telemetry.<param>` fields of the main stage. Each parameter is
    stored as `{at, value}`, `at` first, so that `$max` of the stored and the new document orders
    them by `at` (BSON compares documents field by field): the cheapest expression that only
    moves forward. Of two values with the same `at` (two reports sent in the same second), the
    greater stays. Parameters with `since` (when the value last changed) look at the stored value,
    so they take a `$cond` (replaced when at least as new: the later arrival wins a tie)."""
    times: dict[datetime, str] = {}
    first: dict[str, Any] = {}
    fields: dict[str, Any] = {}
    for param, (value, at, since) in held.items():
        paths = _PATHS.get(param)
        if paths is None:
            paths = _PATHS[param] = _paths(param)
        key, path, path_value, path_since = paths
        t = times.get(at)
        if t is None:
            if len(times) == len(_TIME_FIELDS):  # more distinct times than fields: spelled out
                t = at
            else:
                name = _TIME_FIELDS[len(times)]
                times[at] = t = "$" + name
                first[name] = at
        if isinstance(value, dict):
            value = {k: _constant(v) for k, v in value.items()}
        else:
            value = _constant(value)
        if param not in SINCE:
            fields[key] = {"$max": [path, {"at": t, "value": value}]}
            continue
        s = times.get(since)
        if s is None:
            s = since
        new = {"at": t, "value": value,
               "since": {"$cond": [{"$eq": [path_value, value]}, {"$ifNull": [path_since, s]}, s]}}
        fields[key] = {"$cond": [{"$gte": [t, path + ".at"]}, new, path]}
    return first, fields


def _state_update(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """A pipeline update: `last_position` only moves forward in fix time (a +BUFF replay of an
    older fix never replaces a newer one); `last_seen_at` only moves forward too, and so does
    each `telemetry.<param>` in its own `at`."""
    stage: dict[str, Any] = {key: {"$literal": value} for key, value in entry["set"].items()}
    stage["last_seen_at"] = {"$max": ["$last_seen_at", {"$literal": entry["seen"]}]}
    position = entry["position"]
    if position is not None:
        stage["last_position"] = {"$cond": [
            {"$gt": [{"$literal": position["fix_time"]}, {"$ifNull": ["$last_position.fix_time", EPOCH]}]},
            {"$literal": position},
            "$last_position",
        ]}
    held = _held_telemetry(entry)
    if not held:
        return [{"$set": stage}]
    times, fields = _telemetry_stage(held)
    stage.update(fields)
    return [{"$set": times}, {"$set": stage}, {"$unset": list(times)}] if times else [{"$set": stage}]
