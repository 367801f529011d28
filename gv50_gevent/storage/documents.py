"""Document models: what the gateway writes to `positions`, `events` and `messages` (CONTRACT.md),
and how a parsed message becomes them. Field names here are the contract; do not rename."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ..protocol import Message, Position, Report

Direction = Literal["in", "out"]
ArchiveKind = Literal["report", "ack", "heartbeat", "command", "sack", "other"]
ArchiveStatus = Literal["ok", "unknown_type", "invalid", "rejected"]


class Doc(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    def to_mongo(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=False)


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
    count: str
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

    def to_mongo(self) -> dict[str, Any]:
        doc = self.model_dump()
        if doc["location"] is None:
            del doc["location"]  # absent, not null: a 2dsphere index rejects null geometry
        return doc


class EventDoc(Doc):
    imei: str
    type: str
    report: str
    occurred_at: datetime
    received_at: datetime
    buffered: bool
    sent_at: datetime | None
    count: str
    location: GeoPoint | None = None

    def to_mongo(self) -> dict[str, Any]:
        doc = self.model_dump()
        if doc["location"] is None:
            del doc["location"]
        return doc


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


def geo_point(position: Position) -> GeoPoint | None:
    if position.longitude is None or position.latitude is None:
        return None
    return GeoPoint(coordinates=(position.longitude, position.latitude))


def report_ignition(report: Report) -> bool | None:
    return getattr(report, "ignition", None)


def position_docs(report: Report, received_at: datetime) -> list[dict[str, Any]]:
    """One document per position block: a GTFRI with N points gives N documents."""
    if not report.positions:
        return []
    extra = report.extra()
    ignition = report_ignition(report)
    mileage = extra.pop("mileage_km", None)
    docs = []
    for index, p in enumerate(report.positions):
        doc = PositionDoc(
            imei=report.imei, report=report.type, buffered=report.buffered, count=report.count, index=index,
            fix_time=p.fix_time, sent_at=report.sent_at, received_at=received_at, speed_kmh=p.speed_kmh,
            azimuth=p.azimuth, altitude_m=p.altitude_m, gps_accuracy=p.gps_accuracy, valid=p.valid,
            ignition=ignition, mileage_km=mileage,
            cell=Cell(mcc=p.mcc, mnc=p.mnc, lac=p.lac, cell_id=p.cell_id), location=geo_point(p), **extra,
        )
        docs.append(doc.to_mongo())
    return docs


def event_doc(report: Report, received_at: datetime) -> dict[str, Any] | None:
    event_type = report.event_type
    if event_type is None:
        return None
    location = next((geo_point(p) for p in report.positions if p.has_coordinates), None)
    return EventDoc(
        imei=report.imei, type=event_type, report=report.type, occurred_at=report.sent_at or received_at,
        received_at=received_at, buffered=report.buffered, sent_at=report.sent_at, count=report.count,
        location=location, **report.extra(),
    ).to_mongo()


def archive_doc(*, imei: str | None, direction: Direction, raw: str, at: datetime, kind: ArchiveKind,
                status: ArchiveStatus, remote_addr: str | None, gateway_id: str, error: str | None = None) -> dict[str, Any]:
    return MessageDoc(imei=imei, direction=direction, raw=raw, at=at, kind=kind, status=status, error=error,
                      remote_addr=remote_addr, gateway_id=gateway_id).to_mongo()


def archive_kind(message: Message) -> ArchiveKind:
    return message.kind
