"""What several report families share: field types with the spec's ranges, and the report bases
(motion state, report ID / type). The families are in `reports.py` (position, 4.1),
`reports_info.py` (device information and query answers, 4.2-4.3) and `reports_events.py` (4.4).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BeforeValidator, Field

from .messages import MOTION_STATES, MotionCode, MotionReading, Report


def _hex_byte(value: Any) -> Any:
    """`II` / `OO` (spec 2.4): exactly two hex characters."""
    if isinstance(value, str):
        if len(value) != 2:
            raise ValueError(f"not a 2-character hex byte: {value!r}")
        return int(value, 16)
    return value


def _rssi(value: int) -> int:
    if not (0 <= value <= 31 or value == 99):
        raise ValueError(f"CSQ RSSI must be 0-31 or 99, got {value}")
    return value


def _ber(value: int) -> int:
    # V4.01 gives 0-7; 99 is the 3GPP 27.007 "+CSQ: not known" value the modem reports before it
    # has measured, and losing a whole GTFRI over it would be worse than accepting it.
    if not (0 <= value <= 7 or value == 99):
        raise ValueError(f"CSQ BER must be 0-7 or 99, got {value}")
    return value


def _known_motion(value: str) -> str:
    if value not in MOTION_STATES:
        raise ValueError(f"unknown motion state {value!r}")
    return value


HexByte = Annotated[int, BeforeValidator(_hex_byte), Field(ge=0, le=0xFF)]
Rssi = Annotated[int, AfterValidator(_rssi)]
Ber = Annotated[int, AfterValidator(_ber)]
MotionState = Annotated[MotionCode, AfterValidator(_known_motion)]
Mileage = Annotated[float, Field(ge=0, le=4294967.0)]
Millivolts = Annotated[int, Field(ge=0, le=99999)]
BatteryVolts = Annotated[float, Field(ge=0, le=4.5)]
Seconds6 = Annotated[int, Field(ge=0, le=999999)]  # durations capped at 999999 s
Satellites = Annotated[int, Field(ge=0, le=24)]
LedOn = Annotated[int, Field(ge=1, le=2)]
# ICCIDs are 19-20 digits, some operators pad with `F`.
Iccid = Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{18,22}$")]
UtcOffset = Annotated[str, Field(pattern=r"^[+-](0[0-9]|1[0-4])[0-5][0-9]$")]  # `±HHMM`


def utc_offset_minutes(offset: str | None) -> int | None:
    """`+0800` -> 480, `-0330` -> -210."""
    if offset is None:
        return None
    minutes = int(offset[1:3]) * 60 + int(offset[3:5])
    return -minutes if offset[0] == "-" else minutes


class MotionStateReport(MotionReading, Report):
    """A report whose `state` is a motion state (spec 2.5): GTINF, GTSTT, GTIDF, GTGSS."""

    motion_field: ClassVar[str] = "state"
    state: MotionState


class ReportIdType(Report):
    """Reports whose field 5 is `report ID / report type` (spec 2.6): last hex character is the
    type, what precedes it the ID (GEO fence IDs take up to two characters). Subclasses narrow the
    pattern to their table's format; the per-type meanings (2.6) are left to properties."""

    report_id_type: str | None = Field(default=None, pattern=r"^[0-4][0-5]$")  # X(0-4)X(0-5), 4.1.1

    @property
    def report_id(self) -> int | None:
        return int(self.report_id_type[:-1], 16) if self.report_id_type and len(self.report_id_type) > 1 else None

    @property
    def report_type(self) -> int | None:
        return int(self.report_id_type[-1], 16) if self.report_id_type else None


# GEO / GES: `XX(0-13)X(0-1)`, the fence ID in hex (0-13h, with or without a leading 0) then the type.
FENCE_ID_TYPE = r"^(0?[0-9A-Fa-f]|1[0-3])?[01]$"
