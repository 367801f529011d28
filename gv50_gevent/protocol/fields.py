"""Field types of the @Track ASCII protocol, as annotated pydantic types.

The parser hands raw strings (`None` for an empty field) to the models; the converters here turn
them into values. Timestamps go through `datetime.fromisoformat` (3.11 reads the basic
`YYYYMMDDTHHMMSS` form): about 0.25 µs, against 1.2 µs for integer slices and 10 µs for `strptime`.

Strict or kept (house habit 14). A value that makes the data wrong is refused: the IMEI, the
count, coordinates outside ±90/±180, a time that cannot exist, a field count that fits no layout,
a value that cannot be read as its type (letters in a number, a flag that is not 0 or 1, a
status that is not `SSIIOO`, a hex field that is not hex, a version that is not `MMmm`, an
integer too large for MongoDB). A value that only lies outside the range or the list of values
V4.01 documents for its field (report ID / type, motion state, accuracy, azimuth, speed,
battery, RSSI / BER, satellites, number of points, fence ID, LED, roaming state, ...) is kept:
the field says so with `Documented(...)` next to its type, and the message gets a warning such
as `"report_id_type 00 outside 1-5/0-6"` in `Message.warnings`. Real devices of the family send
such values (firmware newer or older than the document), and refusing the line would lose the
position.

How it stays cheap: a `Documented` field validates as a left-to-right union of the documented
check and the plain type, both inside pydantic-core; only a value outside the documented range
reaches the second choice, a Python function that appends the warning to the list the caller
passes as the validation `context` (`messages.validated`). Without that list (a model built
directly) the second choice refuses the value, so a warning is never dropped silently.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Final

from pydantic import BeforeValidator, Field, GetCoreSchemaHandler, StringConstraints
from pydantic_core import CoreSchema, core_schema



# Times read lately, by their text. A fleet's trackers keep GPS time, so the live reports of one
# moment carry the same few send and fix times: a lookup costs a tenth of reading one again.
# Datetimes are immutable, so sharing them is safe; the cache is emptied when full (a +BUFF
# replay brings old times that come once).
_TIMES: dict[str, datetime] = {}
_TIMES_SIZE = 4096


def _time(value: Any) -> Any:
    """`YYYYMMDDHHMMSS` -> aware UTC datetime. Send times are device local time; the GV50 default
    (AT+GTTMA +0:00) is UTC, and the gateway documents that it stores them as given."""
    if not isinstance(value, str):
        return value
    at = _TIMES.get(value)
    if at is not None:
        return at
    if len(value) != 14 or not value.isdigit() or not value.isascii():
        raise ValueError(f"not a YYYYMMDDHHMMSS time: {value!r}")
    at = datetime.fromisoformat(f"{value[:8]}T{value[8:]}+00:00")
    if len(_TIMES) >= _TIMES_SIZE:
        _TIMES.clear()
    _TIMES[value] = at
    return at


def _hour_meter(value: Any) -> Any:
    """`HHHHH:MM:SS` -> seconds."""
    if not isinstance(value, str):
        return value
    # Spelled out: a generator over the parts costs twice the whole conversion.
    parts = value.split(":")
    if len(parts) != 3 or not (parts[0].isdigit() and parts[1].isdigit() and parts[2].isdigit()):
        raise ValueError(f"not an HHHHH:MM:SS hour meter: {value!r}")
    return int(parts[0]) * 3600 + int(parts[1]) * 60 + int(parts[2])


# Loc labels of a Documented union's choices: `parser` reads the error of the last one.
DOCUMENTED: Final = "documented"
KEPT: Final = "kept"
# A kept integer must still fit MongoDB's int64, or the batch that carries it could not be written.
_INT64: Final = {"ge": -(2**63), "le": 2**63 - 1}


def _keep(says: str) -> Any:
    def keep(value: Any, info: core_schema.ValidationInfo) -> Any:
        warnings = info.context
        if warnings is None:
            raise ValueError(f"{value} outside {says}")
        warnings.append(f"{info.field_name or 'value'} {value} outside {says}")
        return value
    return keep


class Documented:
    """Metadata for `Annotated[int | float | str, Documented(...)]`: the values V4.01 documents for
    a field, as ranges (`Documented((0, 31), (99, 99))`) or as a pattern with the words a warning
    shows (`Documented(pattern=r"^[1-5][0-6]$", says="1-5/0-6")`). A value that fits the type
    before it but not these is kept with a warning (see the module docstring)."""

    __slots__ = ("pattern", "ranges", "says")

    def __init__(self, *ranges: tuple[float, float], pattern: str | None = None, says: str | None = None) -> None:
        if bool(ranges) == (pattern is not None):
            raise TypeError("Documented takes ranges or a pattern")
        if says is None:
            if pattern is not None:
                raise TypeError("a documented pattern needs `says`")
            says = " or ".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in ranges)
        self.ranges = ranges
        self.pattern = pattern
        self.says = says

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        kept: Any = handler(source)  # the type with everything annotated before this
        kind = kept.get("type")
        if self.pattern is not None:
            if kind != "str":
                raise TypeError(f"a documented pattern needs a str, not {kind}")
            checks = [{**kept, "pattern": self.pattern}]
        else:
            if kind not in ("int", "float"):
                raise TypeError(f"documented ranges need an int or a float, not {kind}")
            checks = [{**kept, "ge": lo, "le": hi} for lo, hi in self.ranges]
            if kind == "int":
                kept = {**_INT64, **kept}
        keep = core_schema.with_info_after_validator_function(_keep(self.says), kept)
        return core_schema.union_schema([*((c, DOCUMENTED) for c in checks), (keep, KEPT)], mode="left_to_right")


Time = Annotated[datetime, BeforeValidator(_time)]
# Upper-cased inside pydantic-core (the pattern is checked first, so it takes both cases): half
# the cost of a Python BeforeValidator.
Hex4 = Annotated[str, StringConstraints(to_upper=True, pattern=r"^[0-9A-Fa-f]{4}$")]
HexStr = Annotated[str, StringConstraints(to_upper=True, pattern=r"^[0-9A-Fa-f]+$")]
# The IMEI rule, for the whole product (frames, commands, the operator's CLI): 15 digits, or 14,
# because the HTTP GET examples of the protocol carry a 14-digit unique ID.
IMEI_PATTERN: Final = r"[0-9]{14,15}"
_IMEI = re.compile(IMEI_PATTERN)
Imei = Annotated[str, Field(pattern=f"^{IMEI_PATTERN}$")]


def is_imei(value: object) -> bool:
    return isinstance(value, str) and _IMEI.fullmatch(value) is not None

ProtocolVersion = Annotated[str, Field(pattern=r"^[0-9A-Za-z]{6,10}$")]
HourMeter = Annotated[int, BeforeValidator(_hour_meter)]


def split_raw(line: str) -> list[str]:
    """Split a frame (without `$`) on `,`, empty fields kept as `""`.

    The vendor's own examples carry stray spaces after commas (`+ACK:GTCMD, 090200,...`), so
    blanks around a field are dropped; only lines that have a space pay for it."""
    if " " in line:
        return [f.strip() for f in line.split(",")]
    return line.split(",")


