"""Document models (the schema): what the gateway writes to `positions`, `events` and `messages` (CONTRACT.md),
and how a parsed message becomes them. Field names here are the contract; do not rename.

`warnings` (positions, events, messages) lists the values of the message kept although outside
their documented range (`protocol.fields`); it is absent when there are none.

The stored key of what a report produced (`report_key`, the one place it is built) is
(imei, report, sent_at, count), and the index for a position (its `_id`). The count is 16 bits and
wraps (every 7.6 days at one report per 10 s), so it is unique only together with the send time.
When the report has no send time (a HEX mask without bit 4, an empty ASCII field), the key also
carries `key_time` (`key_time()`):
- the fix time, only when the report has a count and the fix is a new one (GPS accuracy above 0):
  a resend of the same frame has the same fix time and count and is still one document, and a
  count wrap comes with another fix;
- otherwise the time the gateway received the report, to the second. A tracker without a fix
  (accuracy 0) repeats its last fix time in every report, and a mask may leave out the count as
  well: keyed by that fix time, every report after the first would be taken for a resend,
  SACKed and lost. Keyed by the receive time, a resend of such a report (after a lost SACK) is
  stored twice. Nothing lost beats no duplicates.
A report with a send time has no `key_time`: its key, and every document stored before, are
unchanged."""

from __future__ import annotations

import itertools
import os
import random
import struct
from datetime import datetime
from typing import Any, Literal

from bson import ObjectId
from pydantic import BaseModel, ConfigDict

from ..protocol import Position, Report
from ..protocol.connection import ArchiveKind, ArchiveStatus

Direction = Literal["in", "out"]
# When a reply recorded on the frame it answers went out: a heartbeat's at once, a `+SACK` once
# the frame and everything it produced were stored (see docs/archive.md).
ReplyWhen = Literal["at_once", "once_stored"]


class Doc(BaseModel):
    """The schema of a stored document. `extra="allow"`: reports add their own fields."""

    model_config = ConfigDict(frozen=True, extra="allow")


class Cell(BaseModel):
    model_config = ConfigDict(frozen=True)
    mcc: str | None = None
    mnc: str | None = None
    lac: str | None = None
    cell_id: str | None = None


class GeoPoint(BaseModel):
    model_config = ConfigDict(frozen=True)
    type: Literal["Point"] = "Point"
    coordinates: tuple[float, float]


class PositionDoc(Doc):
    imei: str
    report: str
    buffered: bool
    count: str | None  # None only from a HEX frame whose mask leaves it out
    index: int
    fix_time: datetime | None
    sent_at: datetime | None
    received_at: datetime
    speed_kmh: float | None
    azimuth: int | None
    altitude_m: float | None
    gps_accuracy: int | None
    valid: bool
    ignition: bool | None
    mileage_km: float | None
    cell: Cell
    location: GeoPoint | None = None
    warnings: tuple[str, ...] = ()  # absent when empty


class EventDoc(Doc):
    imei: str
    type: str
    report: str
    occurred_at: datetime
    received_at: datetime
    buffered: bool
    sent_at: datetime | None
    count: str | None
    key_time: datetime | None = None  # absent when the report has a send time (see report_key)
    location: GeoPoint | None = None
    warnings: tuple[str, ...] = ()  # absent when empty


class MessageDoc(Doc):
    imei: str | None
    direction: Direction
    raw: str
    at: datetime
    kind: ArchiveKind
    status: ArchiveStatus
    error: str | None = None
    remote_addr: str | None
    gateway_id: str
    warnings: tuple[str, ...] = ()  # absent when empty
    reply: str | None = None  # the `+SACK` or heartbeat reply to this frame; absent when none
    reply_when: ReplyWhen | None = None  # absent with `reply`

    model_config = ConfigDict(frozen=True, extra="forbid")


# The builders below write plain dicts on purpose. Everything in them comes from a message model
# that pydantic has already validated, and validating again through PositionDoc costs about 6 µs
# per document (measured: 9.8 µs against 3.0 µs), a tenth of the whole per-message budget. The
# models above stay the schema: the integration tests validate stored documents against them.


def geo_point(position: Position) -> dict[str, Any] | None:
    if position.longitude is None or position.latitude is None:
        return None
    return {"type": "Point", "coordinates": [position.longitude, position.latitude]}


def key_time(report: Report, received_at: datetime, position: Position | None) -> datetime:
    """What stands in for a missing send time in a key (see the module's docstring): the fix time
    of a new fix in a report with a count, else the receive time to the second."""
    if report.count is not None and position is not None and position.fix_time is not None \
            and position.gps_accuracy:
        return position.fix_time
    return received_at.replace(microsecond=0)


def report_key(report: Report, received_at: datetime, position: Position | None) -> dict[str, Any]:
    """The stored key of a report's position (`_id`, with its index) or event: `key_time` is added
    only when the report has no send time (see the module's docstring)."""
    key = {"imei": report.imei, "report": report.type, "sent_at": report.sent_at, "count": report.count}
    if report.sent_at is None:
        key["key_time"] = key_time(report, received_at, position)
    return key


def position_docs(report: Report, received_at: datetime) -> list[dict[str, Any]]:
    """One document per position block: a GTFRI with N points gives N documents."""
    if not report.positions:
        return []
    extra = report.extra()  # without `warnings`, added below only when there are some
    mileage = extra.pop("mileage_km", None)
    if report.warnings:
        extra["warnings"] = list(report.warnings)
    ignition = report.ignition
    docs = []
    for index, p in enumerate(report.positions):
        key = report_key(report, received_at, p)
        key["index"] = index  # last: a key with a send time is {imei, report, sent_at, count, index}, as always
        doc = {
            "_id": key,
            "imei": report.imei, "report": report.type, "buffered": report.buffered, "count": report.count,
            "index": index, "fix_time": p.fix_time, "sent_at": report.sent_at, "received_at": received_at,
            "speed_kmh": p.speed_kmh, "azimuth": p.azimuth, "altitude_m": p.altitude_m,
            "gps_accuracy": p.gps_accuracy, "valid": p.valid, "ignition": ignition, "mileage_km": mileage,
            "cell": {"mcc": p.mcc, "mnc": p.mnc, "lac": p.lac, "cell_id": p.cell_id}, **extra,
        }
        if p.longitude is not None and p.latitude is not None:
            # absent, not null, without coordinates: a 2dsphere index rejects null geometry
            doc["location"] = {"type": "Point", "coordinates": [p.longitude, p.latitude]}
        docs.append(doc)
    return docs


def event_doc(report: Report, received_at: datetime) -> dict[str, Any] | None:
    event_type = report.event_type
    if event_type is None:
        return None
    fixed = next((p for p in report.positions if p.fix_time is not None), None)
    doc = {
        **report_key(report, received_at, fixed), "type": event_type,
        "occurred_at": report.sent_at or received_at, "received_at": received_at, "buffered": report.buffered,
        **report.extra(),
    }
    location = next((geo_point(p) for p in report.positions if p.has_coordinates), None)
    if location is not None:
        doc["location"] = location
    if report.warnings:
        doc["warnings"] = list(report.warnings)
    return doc


class _ObjectIds:
    """ObjectIds for archive entries, made as `ObjectId()` makes them (4 bytes of seconds, 5 random
    bytes per process, a 3-byte counter) but without its lock: under gevent's monkey patching
    `ObjectId()` takes a gevent lock and costs about 2.3 µs, and pymongo makes one for every
    document `insert_many` is given without an `_id`. Greenlets never run this in parallel."""

    def __init__(self) -> None:
        self._pack = struct.Struct(">I5s").pack
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a child must not repeat its parent's ids

    def _reset(self) -> None:
        self._random = os.urandom(5)
        self._counter = itertools.count(random.SystemRandom().randrange(1 << 24))
        self._when: datetime | None = None
        self._head = b""

    def at(self, when: datetime) -> ObjectId:
        """A new ObjectId whose time is `when` (the moment the document stands for)."""
        if when is not self._when:  # a turn's documents share one moment: its head is packed once
            self._when = when
            self._head = self._pack(int(when.timestamp()), self._random)
        return ObjectId(self._head + (next(self._counter) & 0xFFFFFF).to_bytes(3, "big"))


object_id = _ObjectIds().at


def archive_doc(*, imei: str | None, direction: Direction, raw: str, at: datetime, kind: ArchiveKind,
                status: ArchiveStatus, remote_addr: str | None, gateway_id: str,
                error: str | None = None) -> dict[str, Any]:
    # The `_id` is made here (see `_ObjectIds`), not by pymongo at the insert: the same ObjectId,
    # a tenth of the cost. Its time is the entry's own `at`.
    return {"_id": object_id(at), "imei": imei, "direction": direction, "raw": raw, "at": at, "kind": kind,
            "status": status, "error": error, "remote_addr": remote_addr, "gateway_id": gateway_id}
