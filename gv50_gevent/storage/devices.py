"""`vehicles` (the operator's registry) and `devices` (live state, ours).

Connection changes are written at once. Per-message state (last_seen_at, last_position, ignition,
identity, `telemetry`) is coalesced in memory and flushed as one bulk write per interval: a
per-message update would cost about 270 µs of mongod CPU each, more than the whole rest of the
ingest path. The configuration shadow (`config`, from settings dumps) is `config_shadow.py`'s.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import Any

import gevent
from gevent.event import Event
from bson.datetime_ms import DatetimeMS
from pymongo import ReturnDocument, UpdateOne
from pymongo.errors import DuplicateKeyError, PyMongoError

from ..logs import about
from ..protocol import Position, Report
from .config_shadow import SETTINGS_REPORTS, ConfigShadow
from .database import DB, DEVICES, GATEWAY_STATE, GATEWAY_STATE_PREFIX, VEHICLES
from .telemetry import SINCE, Telemetry, held_key, report_telemetry
from .writer import Batch

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
FLUSH_CHUNK = 100  # device updates per bulk_write
# A tracker's fixed reports (GTFRI) update `telemetry` at most this often, unless the device status
# they carry (ignition, motion, inputs, outputs) changed; any other report is written at the next
# flush. Writing a GTFRI's 16 parameters costs the gateway about 30 µs and mongod about 50 µs more
# per device update (bench/telemetry.py), which a tracker reporting every second would pay each time.
TELEMETRY_INTERVAL_S = 10.0
PERIODIC_REPORTS = frozenset({"GTFRI", "GTFRI!"})  # `held_key`s that may wait
MAX_TELEMETRY_STATE = 200_000  # trackers whose last telemetry write is remembered
NOT_REGISTERED = "IMEI not registered in vehicles"
UNREGISTERED_REFUSED = NOT_REGISTERED + " (AUTO_REGISTER=false)"


class HeldOnTcp(Exception):
    """The device is online over TCP at another gateway: a datagram or request may not take it."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Vehicles:
    def __init__(self, db: DB, auto_register: bool) -> None:
        self.coll = db[VEHICLES]
        self.auto_register = auto_register

    def admit(self, imei: str, register: bool | None = None) -> tuple[bool, str | None, str | None]:
        """May this IMEI be served? Returns (allowed, reason when not, command password). An
        operator's `enabled: false` is honoured whatever AUTO_REGISTER says. `register=False`
        only looks (an unknown IMEI is refused with `NOT_REGISTERED`); by default an unknown IMEI
        is registered when AUTO_REGISTER is on."""
        if self.auto_register and register is not False:
            doc = self.coll.find_one_and_update(
                {"_id": imei},
                {"$setOnInsert": {"enabled": True, "auto_registered": True, "created_at": utcnow()}},
                upsert=True, return_document=ReturnDocument.AFTER, projection={"enabled": 1, "password": 1})
        else:
            doc = self.coll.find_one({"_id": imei}, projection={"enabled": 1, "password": 1})
            if doc is None:
                return False, NOT_REGISTERED if self.auto_register else UNREGISTERED_REFUSED, None
        if doc is None or doc.get("enabled") is not True:
            return False, "vehicle is not enabled", None
        password = doc.get("password")
        return True, None, password if isinstance(password, str) and password else None


class Devices:
    def __init__(self, db: DB, gateway_id: str, flush_interval_s: float = 1.0,
                 telemetry_interval_s: float = TELEMETRY_INTERVAL_S) -> None:
        self.coll = db[DEVICES]
        self.gateway_id = gateway_id
        self.flush_interval_s = flush_interval_s
        self.telemetry_interval_s = telemetry_interval_s
        self._pending: dict[str, dict[str, Any]] = {}
        # Telemetry that may wait (fixed reports), and per tracker when its telemetry was last
        # written and the GTFRI device status it had.
        self._deferred: dict[str, Reports] = {}
        self._telemetry_state: dict[str, _TelemetryState] = {}
        self._offline_later: deque[tuple[str, str, datetime]] = deque(maxlen=1_000_000)
        self._greenlet: gevent.Greenlet | None = None
        self._stopping = Event()
        self.config = ConfigShadow(db, gateway_id)

    # --- connection: written at once ---

    def connected(self, imei: str, session_id: str, remote_addr: str, at: datetime,
                  transport: str = "tcp", replacing: str | None = None) -> dict[str, Any] | None:
        """Mark online; returns the document as it was, so a caller can see who held it before.

        Over a connectionless transport (`transport` is not "tcp") the write is conditional: it
        never takes the device from a TCP connection online at another gateway (a forged datagram
        would overwrite the tracker's state), unless that connection's session is `replacing`
        (its gateway was found dead). Then nothing is written and `HeldOnTcp` is raised: a TCP
        connection that came in between the caller's check and this write wins."""
        query: dict[str, Any] = {"_id": imei}
        if transport != "tcp":
            query["$or"] = [{"online": {"$ne": True}}, {"transport": {"$ne": "tcp"}}, {"gateway_id": self.gateway_id},
                            *([{"session_id": replacing}] if replacing is not None else [])]
        try:
            before = self.coll.find_one_and_update(
                query,
                {"$set": {"online": True, "gateway_id": self.gateway_id, "session_id": session_id,
                          "remote_addr": remote_addr, "connected_at": at, "transport": transport},
                 "$max": {"last_seen_at": at}},
                upsert=True, return_document=ReturnDocument.BEFORE,
                projection={"online": 1, "remote_addr": 1, "gateway_id": 1, "session_id": 1, "sack_enable": 1,
                            "transport": 1, "protocol_version": 1, **{f"telemetry.{p}": 1 for p in SINCE}})
        except DuplicateKeyError:
            if transport == "tcp":
                raise
            raise HeldOnTcp(imei) from None  # the document exists and did not match: held on TCP elsewhere
        # What the stored `since` values are, so that the flush can write them as plain values.
        known: dict[str, tuple[Any, Any]] = {}
        stored = (before or {}).get("telemetry") or {}
        for param in SINCE:
            held = stored.get(param)
            if isinstance(held, dict) and "value" in held:
                known[param] = (held["value"], held.get("since"))
        state = self._telemetry_state.get(imei)
        if state is None:
            self._telemetry_state[imei] = _TelemetryState(known)
        else:
            state.known = known
        return before

    def tcp_holder(self, imei: str, alive_since: datetime) -> dict[str, Any] | None:
        """Who holds the device over TCP at another gateway, if anyone: its `devices` fields
        (`gateway_id`, `session_id`, `remote_addr`), and `alive`: whether that gateway's liveness
        record (`gateway_state.alive_at`) is `alive_since` or newer."""
        doc = self.coll.find_one({"_id": imei, "online": True, "transport": "tcp",
                                  "gateway_id": {"$ne": self.gateway_id}},
                                 {"gateway_id": 1, "session_id": 1, "remote_addr": 1})
        if doc is None:
            return None
        state = self.coll.database[GATEWAY_STATE].find_one(
            {"_id": GATEWAY_STATE_PREFIX + str(doc.get("gateway_id")), "alive_at": {"$gte": alive_since}}, {"_id": 1})
        return {**doc, "alive": state is not None}

    def disconnected(self, imei: str, session_id: str, at: datetime) -> None:
        """Mark offline, only this session's own record (a takeover has already moved the device
        on). If MongoDB is down, the mark is kept and written by the next flush."""
        self._telemetry_state.pop(imei, None)  # what it deferred goes out with the next flush
        try:
            self._mark_offline(imei, session_id, at)
        except PyMongoError as exc:
            log.warning("%s: could not mark offline now, will retry: %s", imei, exc, extra=about(imei))
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

    def note_report(self, report: Report, received_at: datetime, fields: dict[str, Any] | None = None,
                    position: LastPosition | None = None) -> Batch | None:
        """`note` for a report: also its telemetry, and a settings dump goes to the config shadow.

        The telemetry is read from the reports at the flush, not here: a tracker may send many
        reports of one kind per flush, and the newest of each kind says all they would (older
        ones lose to it parameter by parameter anyway). What a report costs here is keeping it.

        Returns, for the packet that completes a settings dump, what to wait for before the
        frame's SACK: the dump written to the config shadow."""
        reports = self.note(report.imei, received_at, fields, position)["reports"]
        # `_hold`, spelled out: this runs for every report.
        positions = report.positions
        key = report.type + "!" if positions and not positions[-1].gps_accuracy else report.type
        old = reports.get(key)
        if old is None or (report.sent_at or received_at) >= (old[0].sent_at or old[1]):
            reports[key] = (report, received_at)
        if report.type in SETTINGS_REPORTS:  # not isinstance: on a pydantic model it costs ~1 µs
            return self.config.collect(report, received_at)  # type: ignore[arg-type]
        return None

    def note(self, imei: str, seen_at: datetime, fields: dict[str, Any] | None = None,
             position: LastPosition | None = None) -> dict[str, Any]:
        """Remember the newest state of a device; flushed within `flush_interval_s`. Returns the
        device's pending entry."""
        entry = self._pending.get(imei)
        if entry is None:
            entry = self._pending[imei] = {"seen": seen_at, "set": {}, "position": None, "reports": {}}
        elif entry["seen"] is None or seen_at > entry["seen"]:
            entry["seen"] = seen_at
        if fields:
            entry["set"].update(fields)
        if position is not None:
            held = entry["position"]
            if held is None or position.fix_time > held.fix_time:
                entry["position"] = position
        return entry

    def start(self) -> None:
        self._stopping.clear()
        self.config.start()
        self._greenlet = gevent.spawn(self._run)

    def stop(self, timeout: float = 10.0) -> None:
        """Let a flush under way finish (within `timeout`), then flush what is left once more. A
        flush cut off after all keeps what it had not written (see `flush`)."""
        self._stopping.set()
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None:
            greenlet.join(timeout)
            if not greenlet.dead:
                log.warning("device state flush still running after %.0fs; stopping it", timeout)
                greenlet.kill()
        self.flush()
        self.config.join(timeout=2.0)

    def _run(self) -> None:
        while not self._stopping.wait(self.flush_interval_s):
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
        self._telemetry_due(pending)
        items = [(imei, entry) for imei, entry in pending.items() if entry["seen"] is not None or entry["reports"]]
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
            except BaseException:
                # Killed (shutdown) in the middle: what this chunk and the rest held is kept for
                # the last flush (writing a chunk twice is harmless: the updates only move forward).
                self._keep(items[start:])
                raise
            stored += len(ops)
        return stored

    def _telemetry_due(self, pending: dict[str, dict[str, Any]]) -> None:
        """Leave in each entry only the reports whose telemetry is due now; defer the rest."""
        now = time.monotonic()
        deferred, self._deferred = self._deferred, {}
        for imei, reports in deferred.items():
            entry = pending.get(imei)
            if entry is None:
                entry = pending[imei] = {"seen": None, "set": {}, "position": None, "reports": {}}
            for report, received_at in reports.values():
                _hold(entry["reports"], report, received_at)
        state = self._telemetry_state
        if len(state) > MAX_TELEMETRY_STATE:
            state.clear()  # everyone's telemetry is written once more, then remembered again
        for imei, entry in pending.items():
            reports = entry["reports"]
            if not reports:
                continue
            fixed = reports.get("GTFRI") or reports.get("GTFRI!")
            status = getattr(fixed[0], "status", None) if fixed is not None else None
            last = state.get(imei)
            if last is None:
                last = state[imei] = _TelemetryState(None)
            if (now - last.written >= self.telemetry_interval_s or any(key not in PERIODIC_REPORTS for key in reports)
                    or (status is not None and status != last.status)):
                last.written = now
                if status is not None:
                    last.status = status
                entry["known"] = last.known
            else:
                self._deferred[imei] = reports
                entry["reports"] = {}

    def _keep(self, items: list[tuple[str, dict[str, Any]]]) -> None:
        """Put back state that could not be written, merged with what arrived since."""
        for imei, entry in items:
            newer = self._pending.get(imei)
            if newer is None:
                self._pending[imei] = entry
            else:  # merge: what arrived since wins, the older position only if newer
                entry["set"].update(newer["set"])
                newer["set"] = entry["set"]
                newer["seen"] = max(newer["seen"], entry["seen"]) if newer["seen"] and entry["seen"] \
                    else newer["seen"] or entry["seen"]
                for report, received_at in entry["reports"].values():
                    _hold(newer["reports"], report, received_at)
                if newer["position"] is None or (entry["position"] is not None and
                                                 entry["position"].fix_time > newer["position"].fix_time):
                    newer["position"] = entry["position"]


class LastPosition:
    """A report's newest fix, as `devices.last_position` will hold it. The document is built at the
    flush, once per device, not for every report that arrives in between."""

    __slots__ = ("report", "position", "received_at", "fix_time")

    def __init__(self, report: Report, position: Position, received_at: datetime) -> None:
        self.report = report
        self.position = position
        self.received_at = received_at
        self.fix_time: datetime = position.fix_time  # type: ignore[assignment]  # only fixes with a time are held

    @classmethod
    def of(cls, report: Report, received_at: datetime) -> LastPosition | None:
        """The report's newest fix with coordinates, or None."""
        best = None
        for p in report.positions:
            if p.fix_time is not None and p.has_coordinates and (best is None or p.fix_time > best.fix_time):  # type: ignore[operator]
                best = p
        return None if best is None else cls(report, best, received_at)

    def doc(self) -> dict[str, Any]:
        p, report = self.position, self.report
        return {
            "fix_time": p.fix_time, "location": {"type": "Point", "coordinates": [p.longitude, p.latitude]},
            "speed_kmh": p.speed_kmh, "azimuth": p.azimuth, "altitude_m": p.altitude_m,
            "gps_accuracy": p.gps_accuracy, "valid": p.valid, "report": report.type, "count": report.count,
            "sent_at": report.sent_at, "received_at": self.received_at, "buffered": report.buffered,
        }


# Held reports: kind (`telemetry.held_key`) -> (report, received_at), the newest of each kind.
Reports = dict[str, tuple[Report, datetime]]
# Telemetry to write: param -> (value, at, since). `since` is when, within what is held, the value
# began; the flush keeps the stored `since` when the stored value is the same.
Held = dict[str, tuple[Any, datetime, datetime]]


def _hold(reports: Reports, report: Report, received_at: datetime) -> None:
    key = held_key(report)
    old = reports.get(key)
    if old is None or (report.sent_at or received_at) >= (old[0].sent_at or old[1]):
        reports[key] = (report, received_at)


def _merge_telemetry(held: Held, telemetry: Telemetry) -> None:
    """Each parameter moves forward in its own time: an older value is dropped."""
    for param, (value, at) in telemetry.items():
        old = held.get(param)
        if old is None:
            held[param] = (value, at, at)
        elif at >= old[1]:
            held[param] = (value, at, old[2] if value == old[0] else at)


def _held_telemetry(reports: Reports) -> tuple[Held, Held]:
    """What the held reports carry: from live reports, and from +BUFF replays. Oldest report
    first, so a later one wins a tie (it arrived later)."""
    live: Held = {}
    replayed: Held = {}
    for report, received_at in sorted(reports.values(), key=lambda r: r[0].sent_at or r[1]):
        _merge_telemetry(replayed if report.buffered else live, report_telemetry(report))
    return live, replayed


def _constant(value: Any) -> Any:
    # Numbers, booleans, dates and our own dicts of them are constants in an expression as they
    # are; only a string that starts with `$` would be read as a field path.
    return {"$literal": value} if isinstance(value, str) and value.startswith("$") else value


class _TelemetryState:
    """Per tracker: when its telemetry was last written (monotonic), the GTFRI device status it
    had, and the stored value and `since` of the parameters that keep one (None: not known)."""

    __slots__ = ("known", "status", "written")

    def __init__(self, known: dict[str, tuple[Any, Any]] | None) -> None:
        self.written = float("-inf")
        self.status: Any = None
        self.known = known


class _Millis:
    """Times as BSON dates, each distinct one converted once: a GTFRI's 16 parameters share two."""

    def __init__(self) -> None:
        self._seen: dict[datetime, DatetimeMS] = {}

    def __call__(self, at: datetime) -> DatetimeMS:
        ms = self._seen.get(at)
        if ms is None:
            ms = self._seen[at] = DatetimeMS(int(at.timestamp() * 1000))
        return ms


def _since(param: str, value: Any, since: Any) -> dict[str, Any]:
    """The stored `since` when the stored value is the same, else ours."""
    path = "$telemetry." + param
    return {"$cond": [{"$eq": [path + ".value", value]}, {"$ifNull": [path + ".since", since]}, since]}


def _telemetry_fields(live: Held, replayed: Held, known: dict[str, tuple[Any, Any]] | None) -> dict[str, Any]:
    """`telemetry` and `telemetry_at` for the update's `$set` stage: each parameter only moves
    forward in its own `at`.

    Live reports come in the order the tracker sent them, so their values are newer than any
    stored, except when another gateway has written the device meanwhile (it reconnected there):
    one guard on `telemetry_at`, the newest `at` written, keeps that from going back, and the
    live values are merged into `telemetry` as one literal document (mongod evaluates no
    expression per parameter: measured, that halves its cost). A `since` is worked out here from
    `known` (the stored value and `since`, read when the tracker connected, updated with each
    write); only when it is not known does mongod compare with the stored value.

    +BUFF replays are older by nature: each of their parameters is compared with its stored `at`.
    Stored as `{at, value}`, `at` first, so that `$max` of the stored and the replayed document
    orders them by `at` (BSON compares documents field by field; of two with the same `at`, the
    greater value stays)."""
    ms = _Millis()
    parts: list[Any] = ["$telemetry"]
    if live:
        literal: dict[str, Any] = {}
        compared: dict[str, Any] = {}
        last_at: datetime | None = None
        last_ms: Any = None
        newest_live: datetime | None = None
        for param, (value, at, since) in live.items():
            if at is not last_at:  # a report's parameters share its time object
                last_at, last_ms = at, ms(at)
                if newest_live is None or at > newest_live:
                    newest_live = at
            if param not in SINCE:
                literal[param] = {"at": last_ms, "value": value}
                continue
            held = known.get(param) if known is not None else None
            if known is not None and (held is None or held[0] != value or held[1] is not None):
                if held is not None and held[0] == value:
                    since = held[1]
                known[param] = (value, since)
                literal[param] = {"at": last_ms, "value": value, "since": ms(since)}
            else:  # not known: mongod compares with what is stored
                constant = {k: _constant(v) for k, v in value.items()} if isinstance(value, dict) else _constant(value)
                compared[param] = {"at": last_ms, "value": constant, "since": _since(param, constant, ms(since))}
        new: Any = {"$literal": literal}
        if compared:
            new = {"$mergeObjects": [new, compared]}
        assert newest_live is not None
        guard = ms(newest_live)
        parts.append({"$cond": [{"$gte": [guard, "$telemetry_at"]}, new, {}]})
    older: dict[str, Any] = {}
    for param, (value, at, since) in replayed.items():
        if param in live and live[param][1] >= at:
            continue
        value = {k: _constant(v) for k, v in value.items()} if isinstance(value, dict) else _constant(value)
        path, t = "$telemetry." + param, ms(at)
        if param in SINCE:
            new = {"at": t, "value": value, "since": _since(param, value, ms(since))}
            older[param] = {"$cond": [{"$gte": [t, path + ".at"]}, new, path]}
            if known is not None:
                known.pop(param, None)  # mongod decides: no longer known here
        else:
            older[param] = {"$max": [path, {"at": t, "value": value}]}
    if older:
        parts.append(older)
    newest = max(at for _, at, _ in (*live.values(), *replayed.values()))
    return {"telemetry": {"$mergeObjects": parts}, "telemetry_at": {"$max": ["$telemetry_at", ms(newest)]}}


def _state_update(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """A pipeline update: `last_position` only moves forward in fix time (a +BUFF replay of an
    older fix never replaces a newer one); `last_seen_at` only moves forward too, and so does
    each `telemetry.<param>` in its own `at`."""
    stage: dict[str, Any] = {key: {"$literal": value} for key, value in entry["set"].items()}
    if entry["seen"] is not None:  # None: only deferred telemetry
        stage["last_seen_at"] = {"$max": ["$last_seen_at", {"$literal": entry["seen"]}]}
    held = entry["position"]
    if held is not None:
        position = held.doc()
        stage["last_position"] = {"$cond": [
            {"$gt": [{"$literal": position["fix_time"]}, {"$ifNull": ["$last_position.fix_time", EPOCH]}]},
            {"$literal": position},
            "$last_position",
        ]}
    if entry["reports"]:
        live, replayed = _held_telemetry(entry["reports"])
        if live or replayed:
            stage.update(_telemetry_fields(live, replayed, entry.get("known")))
    return [{"$set": stage}]
