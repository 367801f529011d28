"""What several report families share: field types with the spec's ranges, and the report bases
(motion state, report ID / type). The families are in `reports.py` (position, 4.1),
`reports_info.py` (device information and query answers, 4.2-4.3) and `reports_events.py` (4.4).

Ranges and lists of values are `Documented` (kept with a warning when outside, see `fields.py`);
formats are strict: a hex byte that is not two hex characters, an ICCID that is not 18-22 hex
characters, a time zone that is not `±HHMM`, a report ID / type that is not hex.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import BeforeValidator, Field

from .fields import Documented
from .messages import MotionReading, MotionState, Report


def _hex_byte(value: Any) -> Any:
    """`II` / `OO` (spec 2.4): exactly two hex characters."""
    if isinstance(value, str):
        if len(value) != 2:
            raise ValueError(f"not a 2-character hex byte: {value!r}")
        return int(value, 16)
    return value


HexByte = Annotated[int, BeforeValidator(_hex_byte), Field(ge=0, le=0xFF)]
Rssi = Annotated[int, Documented((0, 31), (99, 99))]  # CSQ, 99 = not known
# V4.01 gives 0-7; 99 is the 3GPP 27.007 "+CSQ: not known" value the modem reports before it has
# measured, so it is documented too, not merely kept.
Ber = Annotated[int, Documented((0, 7), (99, 99))]
Mileage = Annotated[float, Documented((0, 4294967.0))]
Millivolts = Annotated[int, Documented((0, 99999))]
BatteryVolts = Annotated[float, Documented((0, 4.5))]
Seconds6 = Annotated[int, Documented((0, 999999))]  # durations capped at 999999 s
Satellites = Annotated[int, Documented((0, 24))]
LedOn = Annotated[int, Documented((1, 2))]
# ICCIDs are 19-20 digits, some operators pad with `F`.
Iccid = Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{18,22}$")]
# `±HHMM`: the form is strict (`utc_offset_minutes` reads it), the spec's range of hours is kept.
UtcOffset = Annotated[str, Field(pattern=r"^[+-][0-9]{4}$"), Documented(
    pattern=r"^[+-](0[0-9]|1[0-4])[0-5][0-9]$", says="-1459..+1459",
)]
# Report ID / type (spec 2.6): up to two hex characters of ID, then one of type. Each report narrows
# the documented values; the properties below read any hex.
ReportIdTypeHex = Annotated[str, Field(pattern=r"^[0-9A-Fa-f]{1,3}$")]


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

    report_id_type: Annotated[ReportIdTypeHex, Documented(pattern=r"^[0-4][0-5]$", says="0-4/0-5")] | None = None

    @property
    def report_id(self) -> int | None:
        return int(self.report_id_type[:-1], 16) if self.report_id_type and len(self.report_id_type) > 1 else None

    @property
    def report_type(self) -> int | None:
        return int(self.report_id_type[-1], 16) if self.report_id_type else None


# GEO / GES: `XX(0-13)X(0-1)`, the fence ID in hex (0-13h, with or without a leading 0) then the type.
FenceIdType = Annotated[ReportIdTypeHex, Documented(pattern=r"^(0?[0-9A-Fa-f]|1[0-3])?[01]$", says="0-13h/0-1")]
