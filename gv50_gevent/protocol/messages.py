"""The typed messages a GV50 sends: frozen pydantic models that check their own fields.

Every message keeps its raw line. Empty fields are None, times are aware UTC datetimes. The
per-report models live in `reports.py`; this module holds what every message shares.

`warnings` lists the values kept although outside their documented range (`fields.Documented`);
`validated()` is how a decoder builds a message so that they are collected.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    BaseModel, ConfigDict, Field, StringConstraints, ValidationError, ValidatorFunctionWrapHandler, WrapValidator,
)

from .fields import DOCUMENTED, KEPT, Documented, Hex4, HexStr, Imei, ProtocolVersion, Time

MessageKind = Literal["report", "ack", "heartbeat", "other"]


class Model(BaseModel):
    # No NaN or infinity in any float: "nan" and "inf" are valid Python floats but no device sends them.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class Position(Model):
    """The 12-field position block P(k) (spec 2.3)."""

    gps_accuracy: Annotated[int, Documented((0, 50))] | None = None
    speed_kmh: Annotated[float, Documented((0, 999.9))] | None = None
    azimuth: Annotated[int, Documented((0, 360))] | None = None
    altitude_m: float | None = None
    longitude: float | None = Field(default=None, ge=-180, le=180)
    latitude: float | None = Field(default=None, ge=-90, le=90)
    fix_time: Time | None = None
    mcc: str | None = None
    mnc: str | None = None
    lac: HexStr | None = None
    cell_id: HexStr | None = None

    @property
    def valid(self) -> bool:
        """Accuracy 0 means the fix failed and the block repeats the last known position."""
        return bool(self.gps_accuracy)

    @property
    def has_coordinates(self) -> bool:
        return self.longitude is not None and self.latitude is not None


# Motion state codes (spec 2.5): first digit 1 = ignition off, 2 = on, 4 = no ignition signal.
MOTION_STATES: dict[str, str] = {
    "16": "tow",
    "1A": "fake_tow",
    "11": "ignition_off_rest",
    "12": "ignition_off_moving",
    "21": "ignition_on_rest",
    "22": "ignition_on_moving",
    "41": "sensor_rest",
    "42": "sensor_moving",
}


MotionCode = Annotated[str, StringConstraints(to_upper=True, pattern=r"^[0-9A-Fa-f]{2}$")]
# Two hex characters, documented when in the table; the pattern checks before upper-casing, so
# `1a` is `1A`. A code outside the table is kept with a warning (see `fields.py`).
MotionState = Annotated[MotionCode, Documented(
    pattern="^(?i:" + "|".join(MOTION_STATES) + ")$", says="/".join(MOTION_STATES),
)]


_IGNITION = {"1": False, "2": True}
_MOVING = {"1": False, "2": True, "6": True, "A": True}


def ignition_from_motion(code: str | None) -> bool | None:
    if not code:
        return None
    return _IGNITION.get(code[0])


def moving_from_motion(code: str | None) -> bool | None:
    if code is None:
        return None
    return _MOVING.get(code[-1])


class MotionReading:
    """What a motion-state code (spec 2.5) says, for any model that carries one in the field
    named by `motion_field`."""

    motion_field: ClassVar[str]

    @property
    def motion(self) -> str | None:
        return MOTION_STATES.get(getattr(self, self.motion_field))

    @property
    def ignition(self) -> bool | None:
        """From the first digit; None for `4x` (no ignition signal)."""
        return ignition_from_motion(getattr(self, self.motion_field))

    @property
    def moving(self) -> bool | None:
        return moving_from_motion(getattr(self, self.motion_field))


class DeviceStatus(MotionReading, Model):
    """`SSIIOO` (spec 2.4): motion state, input status, output status."""

    motion_field: ClassVar[str] = "motion_state"
    motion_state: MotionState
    inputs: int = Field(ge=0, le=0xFF)
    outputs: int = Field(ge=0, le=0xFF)

    @classmethod
    def from_wire(cls, value: Any) -> Any:
        if isinstance(value, str):
            if len(value) != 6:
                raise ValueError(f"device status must be 6 hex characters, got {value!r}")
            return {"motion_state": value[0:2], "inputs": int(value[2:4], 16), "outputs": int(value[4:6], 16)}
        return value


    @property
    def ignition_input(self) -> bool:
        return bool(self.inputs & 0x01)

    @property
    def main_power(self) -> bool:
        """Input bit 7 = main power connected (since V4.00)."""
        return bool(self.inputs & 0x80)

    @property
    def output1(self) -> bool:
        return bool(self.outputs & 0x01)


# A device's status takes few values (it changes with ignition, motion and the I/O lines), while
# validating one costs ~1 µs, a tenth of a whole GTFRI. Validated statuses are frozen, so one
# instance per wire value is shared; the cache is bounded and stops growing when full. A status
# whose motion state is outside the table is never cached: validated each time, it adds its
# warning each time (a cache hit validates nothing).
_STATUS_CACHE: dict[str, DeviceStatus] = {}
_STATUS_CACHE_SIZE = 1024


def _status(value: Any, handler: ValidatorFunctionWrapHandler) -> DeviceStatus:
    if not isinstance(value, str):
        return handler(value)  # type: ignore[no-any-return]
    status = _STATUS_CACHE.get(value)
    if status is None:
        status = handler(DeviceStatus.from_wire(value))
        if len(_STATUS_CACHE) < _STATUS_CACHE_SIZE and status.motion_state in MOTION_STATES:
            _STATUS_CACHE[value] = status
    return status


Status = Annotated[DeviceStatus, WrapValidator(_status)]


class Message(Model):
    """Anything a device sends. `header` is `+RESP`, `+BUFF` or `+ACK`; `type` is e.g. `GTFRI`."""

    kind: ClassVar[MessageKind] = "other"
    raw: str
    header: str
    type: str
    # Every concrete message narrows these; declaring them here lets callers read them without
    # getattr(): a missing attribute on a pydantic model costs microseconds per miss.
    imei: str | None = None
    protocol_version: str | None = None
    sent_at: Time | None = None
    count: str | None = None
    # Values kept although outside their documented range, e.g. "report_id_type 00 outside 1-5/0-6".
    warnings: tuple[str, ...] = ()


class Unknown(Message):
    """A well-framed line of a type we do not know. Stored, never raised."""

    fields: tuple[str | None, ...] = ()


class DeviceMessage(Message):
    """What every device line carries around its own fields: who sent it, when, and its count.

    The IMEI is always known (a HEX frame without one takes the connection's). The protocol
    version and the count are None only in a HEX frame whose masks leave them out (AT+GTHRM): the
    ASCII parser requires both."""

    protocol_version: ProtocolVersion | None = None
    imei: Imei
    device_name: str | None = None
    sent_at: Time | None = None
    count: Hex4 | None = None


class Heartbeat(DeviceMessage):
    """`+ACK:GTHBD` (spec 1.4). It answers nothing and carries no serial."""

    kind: ClassVar[MessageKind] = "heartbeat"


class Ack(DeviceMessage):
    """`+ACK:GTxxx`, a command acknowledgement (spec 3.0, A7/A8). `sub` is the GEO ID or RTO
    sub-command that A8 inserts before the serial."""

    kind: ClassVar[MessageKind] = "ack"
    sub: str | None = None
    serial: Hex4

    @property
    def command(self) -> str:
        return self.type


class Report(DeviceMessage):
    """`+RESP:` / `+BUFF:` report. Subclasses in `reports.py` add their own fields."""

    kind: ClassVar[MessageKind] = "report"
    event: ClassVar[str | None] = None
    positions: tuple[Position, ...] = ()

    @property
    def buffered(self) -> bool:
        return self.header == "+BUFF"

    # Vehicle state a report may carry; the report types that carry it override these.
    @property
    def ignition(self) -> bool | None:
        return None

    @property
    def output1(self) -> bool | None:
        return None

    @property
    def firmware(self) -> str | None:
        return None

    @property
    def event_type(self) -> str | None:
        """The snake_case `events.type` of this report, or None when it is not an event."""
        return self.event

    def extra(self) -> dict[str, Any]:
        """The report's own fields, for storage: everything but the shared header and trailer, as
        `model_dump(exclude=..., exclude_none=True)` gives them. Read straight from the validated
        values when they are plain (a GTFRI's are, and its device status): model_dump costs about
        2.2 µs a report, this a third of it."""
        kind: type = self.__class__
        names = _EXTRA_NAMES.get(kind)
        if names is None:
            names = _EXTRA_NAMES[kind] = tuple(n for n in self.__class__.model_fields if n not in _SHARED_FIELDS)
        values = self.__dict__
        extra: dict[str, Any] = {}
        for name in names:
            value = values[name]
            if value is None:
                continue
            if value.__class__ in _PLAIN:
                extra[name] = value
            elif _plain_model(value.__class__):
                extra[name] = dict(value.__dict__)  # e.g. a DeviceStatus: required plain values only
            else:
                return self.model_dump(exclude=_SHARED_FIELDS, exclude_none=True)
        return extra


_PLAIN = frozenset({str, int, float, bool, datetime})
_EXTRA_NAMES: dict[type, tuple[str, ...]] = {}  # per report class: its fields that `extra()` stores
_PLAIN_MODELS: dict[type, bool] = {}


def _plain_model(kind: type) -> bool:
    """A model whose fields are all required and of a plain type: its values dump as they are."""
    plain = _PLAIN_MODELS.get(kind)
    if plain is None:
        plain = _PLAIN_MODELS[kind] = isinstance(kind, type) and issubclass(kind, BaseModel) and all(
            f.is_required() and f.annotation in _PLAIN for f in kind.model_fields.values())
    return plain

_SHARED_FIELDS = {
    "raw", "header", "type", "protocol_version", "imei", "device_name", "sent_at", "count", "positions", "warnings",
}

M = TypeVar("M", bound=Message)


def validated(model: type[M], values: dict[str, Any]) -> M:
    """`model` validated from `values`, with the values kept outside their documented range listed
    in `warnings`. Every decoder builds its messages through here (ASCII today, HEX alike)."""
    warnings: list[str] = []
    # The model's validator on the dict: calling the class with **values costs ~1 µs more per
    # report, and `model_validate` is a Python wrapper around this same call (~0.4 µs).
    message: M = model.__pydantic_validator__.validate_python(values, context=warnings)
    if warnings:
        # Rare: a copy (no second validation) is cheaper than a model validator on every message.
        message = message.model_copy(update={"warnings": tuple(warnings)})
    return message


def reason(exc: ValidationError) -> str:
    """The first field a message failed on, and why, for `InvalidMessage`."""
    errors = exc.errors()
    err = errors[0]
    loc = err["loc"]
    if loc[-1:] == (DOCUMENTED,):
        # A `Documented` field failed every choice: the last one, the plain type, says why (the
        # value cannot be read as its type, or there was no list to keep a warning in).
        loc = loc[:-1]
        err = next((e for e in errors if e["loc"] == (*loc, KEPT)), err)
    where = ".".join(str(p) for p in loc) or "message"
    return f"{where}: {err['msg']}"


__all__ = [
    "Ack", "DeviceStatus", "Heartbeat", "Message", "MessageKind", "Model", "Position", "Report",
    "Status", "Unknown", "ignition_from_motion", "moving_from_motion", "reason", "validated",
]
