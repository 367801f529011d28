"""One entry point: `parse(line)` turns one ASCII frame (without `$`) into a typed message.

A type we do not know becomes `Unknown`. A line that does not fit its type's layout raises
`InvalidMessage`, which carries the line. Nothing else escapes. A value only outside its
documented range does not raise: it is kept and listed in the message's `warnings` (see
`fields.py` for which fields are strict and which are kept). An ASCII line always has a
protocol version and a count (a HEX frame's masks may leave them out, not a line's); an empty
send time is kept with a warning: it is no error, but the stored keys then rest on other times.
"""

from __future__ import annotations

from pydantic import ValidationError

from .errors import InvalidMessage
from .fields import split_raw
from .layout import read_layout
from .messages import Ack, DeviceMessage, Heartbeat, Message, Unknown, reason, validated
from .reports import REPORTS

_ACK_SLOTS = ("protocol_version", "imei", "device_name")
_HEARTBEAT_SLOTS = (*_ACK_SLOTS, "sent_at", "count")
_REPORT_HEADERS = ("+RESP", "+BUFF")
_HEX_DIGITS = frozenset("0123456789ABCDEFabcdef")
NO_SEND_TIME = "sent_at empty: no send time"


def trailing_count(field: str | None) -> str | None:
    """`field` upper-cased when it looks like a count (4 hex digits): the last field of a line
    that did not parse, or of one whose type we do not know."""
    return field.upper() if field and len(field) == 4 and all(c in _HEX_DIGITS for c in field) else None


def _checked(message: DeviceMessage, type_: str, line: str) -> DeviceMessage:
    if message.protocol_version is None:
        raise InvalidMessage(f"{type_}: protocol_version: empty", line)
    if message.count is None:
        raise InvalidMessage(f"{type_}: count: empty", line)
    if message.sent_at is None:
        return message.model_copy(update={"warnings": (*message.warnings, NO_SEND_TIME)})
    return message


def _ack(header: str, type_: str, fields: list[str | None], line: str) -> Message:
    # A7 has 7 fields, A8 (GEO, RTO) inserts one before the serial: read the serial as the third
    # field from the end and everything before it by name.
    if type_ == "GTHBD":
        if len(fields) != 6:
            raise InvalidMessage(f"heartbeat has {len(fields)} fields, expected 6", line)
        values = dict(zip(_HEARTBEAT_SLOTS, fields[1:]))
        values.update(raw=line, header=header, type=type_)
        return _checked(validated(Heartbeat, values), type_, line)
    if len(fields) not in (7, 8):
        raise InvalidMessage(f"+ACK has {len(fields)} fields, expected 7 or 8", line)
    values = dict(zip(_ACK_SLOTS, fields[1:4]))
    if len(fields) == 8:
        values["sub"] = fields[4]
    values.update(serial=fields[-3], sent_at=fields[-2], count=fields[-1], raw=line, header=header, type=type_)
    return _checked(validated(Ack, values), type_, line)


def _unknown(header: str, type_: str, fields: list[str | None], line: str) -> Unknown:
    imei = fields[2] if len(fields) > 2 and fields[2] and fields[2].isdigit() and len(fields[2]) in (14, 15) else None
    # Its count, when the last field looks like one: every device message ends with it, and a
    # message of a type we do not know is SACKed like any other (spec 1.5: every message).
    count = trailing_count(fields[-1]) if len(fields) > 3 else None
    return Unknown(raw=line, header=header, type=type_, imei=imei, count=count, fields=tuple(fields[1:]))


def parse(line: str) -> Message:
    """Parse one ASCII frame; `line` is the text without the trailing `$`."""
    header, colon, type_ = line.partition(",")[0].partition(":")
    if not colon or not header.startswith("+") or not type_:
        raise InvalidMessage("no '+HEADER:TYPE,' at the start", line)
    # Reports read their fields straight from the split line (the layout turns empty fields into
    # None as it reads them); everything else gets the None list first.
    raw = split_raw(line)
    try:
        if header in _REPORT_HEADERS:
            layout = REPORTS.get(type_)
            if layout is None:
                return _unknown(header, type_, [f or None for f in raw], line)
            values = read_layout(layout, raw, line)
            values.update(raw=line, header=header, type=type_)
            return _checked(validated(layout.model, values), type_, line)
        if header == "+ACK":
            return _ack(header, type_, [f or None for f in raw], line)
    except ValidationError as exc:
        raise InvalidMessage(f"{type_}: {reason(exc)}", line) from None
    except (ValueError, TypeError) as exc:
        raise InvalidMessage(f"{type_}: {exc}", line) from None
    return _unknown(header, type_, [f or None for f in raw], line)
