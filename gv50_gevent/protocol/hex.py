"""HEX frames (spec 1.7, V4.01 chapter 4): one whole framed HEX frame -> the same typed message as
its ASCII twin, and the encoder the simulator and the tests build frames with.

`parse_hex(data)` reads the frame's own mask, decodes the fields its layout declares for that mask
(`hex_layout.py`) and validates them with the model of the ASCII twin from `REPORTS`: a HEX GTFRI
is a `FixedReport` with header `+RESP` (`+BUFF` for `+BSP`/`+BVT`/`+BNF`), a `+HBD` is a `Heartbeat`
and a `+ACK` an `Ack`, exactly as if the ASCII line had come. `raw` is the frame in upper-case hex.

Where the two forms differ, the message has exactly the fields of the ASCII twin, so that storage
builds the same documents:
* A HEX field the twin has no field for is not in the message (`raw` keeps it): the firmware
  version (except GTVER), the battery level, external power, input/output, motion and satellite
  bytes wherever ASCII does not carry them, the current (trip) mileage and hour meter, the GIR
  cells' TA, and in +INF the power-saving/OWH, FRI-discard and IGN/IGF interval bytes and every
  group GTINF has no field for (VER, GIR, GSV/RSV/BSV).
* `mileage_km` is the total mileage and `hour_meter_s` the total hour meter, as in ASCII.
* HEX altitude is whole metres. PNA/PFA/PDP carry a position in HEX and none in ASCII: dropped.
* GTUPD (+EVT 15) has no ASCII form: it becomes `FirmwareUpdate`, type `GTUPD`, outside `REPORTS`.
* +INF type 10 (GIR) is the ASCII GTGSM, the fix type from the trigger byte, the last cell the
  serving cell (as in ASCII); types 2-22 are the GTGPS ... GTBSV answers.
* A message type V4.01 does not define becomes `Unknown` with type `HEX<family><code>`.

A frame decodes whatever its masks say: a field they leave out is None in the message (the
protocol version, firmware, send time, count, anything else). The layout of a V4.01 frame does
not depend on the protocol version, so a frame without one is decoded; `protocol_version=` (what
the connection or the device record knows) fills it in when given. Only the IMEI is needed: a
frame whose masks leave it out (device name instead, or a heartbeat without UID) takes `imei=`,
and is refused as InvalidMessage without it. A +RSP whose Number is above 1 (V4.01 says 0-1) is
decoded when its size agrees with its layout, and kept with a warning. A CRC mismatch never stops
decoding (V4.01's own examples do not all match): check it with `hex_crc_ok`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from string import Template
from typing import Any, Final, NamedTuple

from pydantic import ValidationError

from .errors import InvalidMessage
from .hex_layout import Codec, Field, Plan, VarCodec, compile_plan, crc16_ccitt_false, write_fields
from .hex_types import (
    ACK_LAYOUT, ACK_TYPES, BUILD_ENV, COMMON_BUILDS, EVT_TYPES, HBD_LAYOUT, INF_LAYOUT, INF_TYPES, RSP_TYPES, RTO_NAMES,
    Build, HexType, ack_builds, report_fields,
)
from .messages import Ack, Heartbeat, Message, Unknown, reason, validated

# -- frame kinds ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Kind:
    """A HEX header: how its type and mask are read, and the header of its ASCII twin."""

    family: str  # RSP, EVT, INF, ACK, HBD
    ascii_header: str
    types: Mapping[int, HexType] | None
    head: struct.Struct  # type + mask(s) after the 4-byte header
    plans: dict[tuple[int, int], Plan] = field(default_factory=dict, compare=False, repr=False)
    wire_plans: dict[tuple[int, int], Plan] = field(default_factory=dict, compare=False, repr=False)


def _kind(family: str, ascii_header: str, types: Mapping[int, HexType] | None, head: str) -> Kind:
    return Kind(family, ascii_header, types, struct.Struct(head))


KINDS: Final[dict[bytes, Kind]] = {
    b"+RSP": _kind("RSP", "+RESP", RSP_TYPES, ">BI"), b"+BSP": _kind("RSP", "+BUFF", RSP_TYPES, ">BI"),
    b"+EVT": _kind("EVT", "+RESP", EVT_TYPES, ">BI"), b"+BVT": _kind("EVT", "+BUFF", EVT_TYPES, ">BI"),
    b"+INF": _kind("INF", "+RESP", INF_TYPES, ">BHH"), b"+BNF": _kind("INF", "+BUFF", INF_TYPES, ">BHH"),
    b"+ACK": _kind("ACK", "+ACK", None, ">BB"), b"+HBD": _kind("HBD", "+ACK", None, ">B"),
}
_MAX_PLANS: Final = 256  # compiled plans per kind: masks are per device setting, few in practice


def _fields(kind: Kind, hex_type: HexType | None) -> tuple[Field, ...]:
    if kind.family == "ACK":
        return ACK_LAYOUT
    if kind.family == "HBD":
        return HBD_LAYOUT
    if kind.family == "INF":
        return INF_LAYOUT
    assert hex_type is not None
    return report_fields(hex_type.extra, kind.family == "RSP")


def _effective_mask(kind: Kind, hex_type: HexType | None, masks: tuple[int, ...]) -> int:
    if kind.family != "INF":
        return masks[0]
    mask, expansion = masks
    if hex_type is None or hex_type.inf_group is None:
        # GTINF: groups by bits 8-15, expansion groups only when bit 7 says the expansion is valid.
        return mask | (expansion << 16 if mask & 0x80 else 0)
    # "Only +RESP:GTINF includes all the items; the others only include information related to
    # themselves" (p. 152), and bits 8-15 choose the groups of GTINF: the other types carry their
    # own group, whatever bits 8-31 say.
    return (mask & 0xFF) | 1 << hex_type.inf_group


class _Values(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return "None"


def _model_output(builds: tuple[Build, ...]) -> Callable[[dict[str, str]], str]:
    def output(exprs: dict[str, str]) -> str:
        values = _Values(exprs)
        items = []
        for build in builds:
            if all(n in exprs for n in build.needs):
                expr = Template(build.template).substitute(values)
            else:
                expr = build.default
            items.append(f"{build.key!r}: {expr}")
        return "({" + ", ".join(items) + "}, " + exprs.get("length", "None") + ")"
    return output


def _builds(kind: Kind, code: int | None, hex_type: HexType | None) -> tuple[Build, ...]:
    if kind.family == "HBD":
        own: tuple[Build, ...] = (Build("type", "'GTHBD'"),)
    elif kind.family == "ACK":
        command = ACK_TYPES[code]  # type: ignore[index]
        own = (Build("type", repr(command)), *ack_builds(command))
    else:
        assert hex_type is not None
        own = (Build("type", repr(hex_type.ascii)), *hex_type.builds)
    return (Build("header", repr(kind.ascii_header)), *COMMON_BUILDS, *own)


def _plan(kind: Kind, code: int | None, hex_type: HexType | None, mask: int) -> Plan:
    """The compiled reader of (type, mask) that returns `(model values, Length field), offset`."""
    key = (-1 if code is None else code, mask)
    plan = kind.plans.get(key)
    if plan is None:
        env = {**BUILD_ENV, "_RTO": RTO_NAMES}
        plan = compile_plan(_fields(kind, hex_type), mask, _model_output(_builds(kind, code, hex_type)),
                            ", imei_arg, version_arg", env)
        if len(kind.plans) < _MAX_PLANS:
            kind.plans[key] = plan
    return plan


def _wire_plan(kind: Kind, code: int | None, hex_type: HexType | None, mask: int) -> Plan:
    key = (-1 if code is None else code, mask)
    plan = kind.wire_plans.get(key)
    if plan is None:
        plan = compile_plan(_fields(kind, hex_type), mask)
        if len(kind.wire_plans) < _MAX_PLANS:
            kind.wire_plans[key] = plan
    return plan


class HexFrame(NamedTuple):
    """A HEX frame read field by field: what `encode_hex` writes."""

    header: str  # "+RSP", "+BSP", ...
    code: int | None  # the message type byte (None for +HBD)
    masks: tuple[int, ...]  # as sent: (mask,) or, for +INF, (report mask, expansion mask)
    values: dict[str, Any]  # by the layout's names
    crc: int


class _Head(NamedTuple):
    kind: Kind
    code: int | None
    masks: tuple[int, ...]
    hex_type: HexType | None
    known: bool
    start: int


def _head(data: bytes) -> _Head:
    kind = KINDS.get(data[:4])
    if kind is None or data[4:5] == b":":
        raise InvalidMessage("not a HEX frame header", data)
    start = 4 + kind.head.size
    if len(data) < start + 4:
        raise InvalidMessage(f"HEX frame of {len(data)} bytes is too short", data)
    if data[-2:] != b"\r\n":
        raise InvalidMessage("HEX frame does not end with CR LF", data)
    parts = kind.head.unpack_from(data, 4)
    if kind.family == "HBD":
        return _Head(kind, None, parts, None, True, start)
    code, masks = parts[0], parts[1:]
    if kind.types is None:
        return _Head(kind, code, masks, None, code in ACK_TYPES, start)
    hex_type = kind.types.get(code)
    return _Head(kind, code, masks, hex_type, hex_type is not None, start)


def _run(plan: Plan, data: bytes, start: int, *args: Any) -> Any:
    end = len(data) - 4
    if plan.fixed_size is not None and plan.fixed_size != end - start:
        raise InvalidMessage(f"{end + 4} bytes where the masks give {plan.fixed_size + start + 4}", data)
    try:
        values, at = plan.read(data, start, *args)
    except (ValueError, IndexError, TypeError, OverflowError, struct.error) as exc:
        raise InvalidMessage(f"{data[:4].decode()}: {exc}", data) from None
    if at != end:
        raise InvalidMessage(f"{end + 4} bytes where the fields take {at + 4}", data)
    return values


def read_hex(data: bytes) -> HexFrame:
    """Every field of one whole HEX frame of a known type, by its layout and its own mask (the
    encoder's inverse); InvalidMessage if the bytes do not fit."""
    data = bytes(data)
    h = _head(data)
    if not h.known:
        raise InvalidMessage(f"unknown {data[:4].decode()} message type {h.code}", data)
    plan = _wire_plan(h.kind, h.code, h.hex_type, _effective_mask(h.kind, h.hex_type, h.masks))
    values = _run(plan, data, h.start)
    length = values.get("length")
    if length is not None and length != len(data):
        raise InvalidMessage(f"Length field says {length} bytes, the frame has {len(data)}", data)
    return HexFrame(data[:4].decode(), h.code, h.masks, values, int.from_bytes(data[-4:-2], "big"))


def hex_crc_ok(data: bytes) -> bool:
    """CRC-16/CCITT-FALSE over the message type through the count (spec 1.7) equals the frame's.
    Two of V4.01's examples match; never reject a frame on it (spec 6.2 #7)."""
    if len(data) < 9:
        return False
    return crc16_ccitt_false(data[4:-4]) == int.from_bytes(data[-4:-2], "big")


def _unknown(h: _Head, data: bytes) -> Unknown:
    """A type V4.01 does not define. Its own fields are unknown, but the unique ID sits before them
    (after the length and versions the mask chooses), so the IMEI is read when it is there."""
    kind, mask = h.kind, h.masks[0]
    family = kind.family
    prefix = ACK_LAYOUT[:5] if family == "ACK" else INF_LAYOUT[:2] if family == "INF" else report_fields((), False)[:5]
    key = (-2, mask)
    plan = kind.wire_plans.get(key)
    if plan is None:
        plan = compile_plan(prefix, mask)
        if len(kind.wire_plans) < _MAX_PLANS:
            kind.wire_plans[key] = plan
    try:
        imei = plan.read(data, h.start)[0].get("imei")
    except (ValueError, IndexError, struct.error):
        imei = None
    return Unknown(raw=data.hex().upper(), header=kind.ascii_header, type=f"HEX{kind.family}{h.code}", imei=imei,
                   count=tail_count(data))


class _Route(NamedTuple):
    """Where a frame with these first bytes goes: its compiled reader, where its fields start, the
    model of its ASCII twin, and whether it has a `number` to check."""

    plan: Plan
    start: int
    model: Any
    number: bool


# Keyed by a frame's first 9 bytes: header, type and mask(s) of +RSP/+EVT/+INF (for +ACK and
# +HBD a few more bytes that do not change the route). Bounded: it stops growing when full.
_ROUTES: dict[bytes, _Route] = {}
_MAX_ROUTES: Final = 4096


def _route(data: bytes) -> _Route | Unknown:
    h = _head(data)
    if not h.known:
        return _unknown(h, data)
    kind, hex_type = h.kind, h.hex_type
    plan = _plan(kind, h.code, hex_type, _effective_mask(kind, hex_type, h.masks))
    if hex_type is not None:
        model = hex_type.model_class()
    else:
        model = Heartbeat if kind.family == "HBD" else Ack
    route = _Route(plan, h.start, model, "number" in model.model_fields)
    if len(_ROUTES) < _MAX_ROUTES:
        _ROUTES[data[:9]] = route
    return route


def parse_hex(data: bytes, *, imei: str | None = None, protocol_version: str | None = None) -> Message:
    """One whole HEX frame (CRC and CR LF included) -> Report / Heartbeat / Ack, or Unknown for a
    message type V4.01 does not define.

    `imei` and `protocol_version` are used only when the frame's masks leave them out. Raises
    InvalidMessage (carrying the frame) when the frame does not fit its layout or its values do
    not fit the model; nothing else escapes. The CRC is not checked here (`hex_crc_ok`)."""
    if type(data) is not bytes:
        data = bytes(data)
    route = _ROUTES.get(data[:9])
    if route is None:
        found = _route(data)
        if isinstance(found, Unknown):
            return found
        route = found
    elif data[-2:] != b"\r\n":
        raise InvalidMessage("HEX frame does not end with CR LF", data)
    m, length = _run(route.plan, data, route.start, imei, protocol_version)
    if length is not None and length != len(data):
        raise InvalidMessage(f"Length field says {length} bytes, the frame has {len(data)}", data)
    if m["imei"] is None:
        raise InvalidMessage("the frame carries no IMEI (device name or no UID in its mask) and none was given", data)
    m["raw"] = data.hex().upper()
    try:
        # As the ASCII parser does: a value only outside its documented range is kept, with a warning.
        message = validated(route.model, m)
    except ValidationError as exc:
        raise InvalidMessage(f"{m['type']}: {reason(exc)}", data) from None
    if route.number and m["number"] > 1 and not any(w.startswith("number ") for w in message.warnings):
        # The frame carries one position whatever it says, and its size agreed with its layout above
        # (a model that documents 0-1 has already said so).
        message = message.model_copy(update={"warnings": (*message.warnings, f"number {m['number']} outside 0-1")})
    return message  # type: ignore[no-any-return]


def hex_frame_size(head: bytes) -> int | None:
    """The whole size of a HEX frame whose mask leaves out its Length field, from its first bytes
    (header, type and masks): what the layout of that type and mask fixes, or None when it does not
    (a field whose size it says itself, or a type V4.01 does not define)."""
    kind = KINDS.get(head[:4])
    if kind is None or len(head) < 4 + kind.head.size:
        return None
    parts = kind.head.unpack_from(head, 4)
    if kind.family == "HBD":
        code, masks, hex_type = None, parts, None
    else:
        code, masks = parts[0], parts[1:]
        if kind.types is None:
            if code not in ACK_TYPES:
                return None
            hex_type = None
        else:
            hex_type = kind.types.get(code)
            if hex_type is None:
                return None
    plan = _wire_plan(kind, code, hex_type, _effective_mask(kind, hex_type, masks))
    return None if plan.fixed_size is None else 4 + kind.head.size + plan.fixed_size + 4


# The mask bit of the count, by family (RSP/EVT bit 5; INF, ACK and HBD bit 6).
_COUNT_BIT: Final = {"RSP": 5, "EVT": 5, "INF": 6, "ACK": 6, "HBD": 6}


def tail_count(data: bytes) -> str | None:
    """The count of a HEX frame read from its tail, when its mask says it carries one: the count is
    the last field, before the CRC and CR LF, whatever the type and the other bits. For a frame that
    does not decode (or of a type V4.01 does not define), so that it can still be SACKed."""
    kind = KINDS.get(bytes(data[:4]))
    if kind is None or data[4:5] == b":" or len(data) < 4 + kind.head.size + 6 or data[-2:] != b"\r\n":
        return None
    mask = kind.head.unpack_from(data, 4)[0 if kind.family == "HBD" else 1]
    if not mask >> _COUNT_BIT[kind.family] & 1:
        return None
    return "%04X" % int.from_bytes(data[-6:-4], "big")  # noqa: UP031 - as HEX2 reads it


# +RSP/+EVT: what comes before the unique ID is the same for every type (`extra` comes after it).
_REPORT_HEAD: Final = report_fields((), False)


def head_imei(data: bytes) -> str | None:
    """The IMEI of a HEX frame read from its head, where its mask puts the unique ID: only the
    fields before it (Length, device type, versions) are counted, whatever the type. For a frame
    that does not decode. None when it cannot be read: no unique ID or a device name in its place
    (the masks say), a frame too short, or bytes that are no IMEI."""
    kind = KINDS.get(bytes(data[:4]))
    if kind is None or data[4:5] == b":" or len(data) < 4 + kind.head.size:
        return None
    parts = kind.head.unpack_from(data, 4)
    mask = parts[0] if kind.family == "HBD" else parts[1]
    at = 4 + kind.head.size
    for f in _REPORT_HEAD if kind.family in ("RSP", "EVT") else _fields(kind, None):
        resolved = f.resolve(mask)
        if f.name == "imei":
            if resolved is None or resolved[0] != "imei" or len(data) < at + 8:
                return None
            digits = "%02d%02d%02d%02d%02d%02d%02d%d" % tuple(data[at:at + 8])  # noqa: UP031 - as IMEI reads it
            return digits if len(digits) == 15 else None
        if resolved is not None:
            codec = resolved[1]
            if not isinstance(codec, Codec):
                return None
            at += codec.size
    return None



# -- encoding ----------------------------------------------------------------------------------------


def _code(kind: Kind, type_: str | int | None) -> tuple[int | None, HexType | None]:
    if kind.family == "HBD":
        return None, None
    if kind.family == "ACK":
        if isinstance(type_, int):
            return type_, None
        return next(code for code, name in ACK_TYPES.items() if name == type_), None
    assert kind.types is not None
    if isinstance(type_, int):
        return type_, kind.types[type_]
    code = next(code for code, t in kind.types.items() if t.ascii == type_)
    return code, kind.types[code]


def encode_hex(header: str, type_: str | int | None, values: Mapping[str, Any], mask: int,
               expansion_mask: int = 0) -> bytes:
    """One HEX frame with a correct Length field (when the mask has it) and CRC.

    `header` is `+RSP`, `+BSP`, `+EVT`, `+BVT`, `+INF`, `+BNF`, `+ACK` or `+HBD`; `type_` the ASCII
    twin's type (`GTFRI`; for `+ACK` the command, `GTSRI`) or the HEX type code; `values` the wire
    values by the layout's names (see `fields_for`); `mask` (and for +INF `expansion_mask`) are
    written as given and choose the fields. Raises KeyError for a missing value, ValueError or
    struct.error for one that does not fit. Meant for the simulator and the tests."""
    raw_header = header.encode("ascii")
    kind = KINDS[raw_header]
    code, hex_type = _code(kind, type_)
    masks = (mask, expansion_mask) if kind.family == "INF" else (mask,)
    plan = _wire_plan(kind, code, hex_type, _effective_mask(kind, hex_type, masks))
    head_parts = masks if code is None else (code, *masks)
    head = raw_header + kind.head.pack(*head_parts)
    values = {"length": 0, **values}
    body = write_fields(plan, values)
    size = len(head) + len(body) + 4
    if "length" in (name for name, _ in plan.fields):
        values["length"] = size
        body = write_fields(plan, values)
    frame = head + body
    return frame + crc16_ccitt_false(frame[4:]).to_bytes(2, "big") + b"\r\n"


def fields_for(header: str, type_: str | int | None, mask: int,
               expansion_mask: int = 0) -> tuple[tuple[str, Codec | VarCodec], ...]:
    """(name, codec) of the wire values a frame of this header, type and masks carries, in wire
    order: what `encode_hex` needs in `values` (`length` is filled in by it)."""
    kind = KINDS[header.encode("ascii")]
    code, hex_type = _code(kind, type_)
    masks = (mask, expansion_mask) if kind.family == "INF" else (mask,)
    plan = _wire_plan(kind, code, hex_type, _effective_mask(kind, hex_type, masks))
    return tuple((name, codec) for name, codec in plan.fields if name is not None)


# The AT+GTHRM defaults (spec 3.30).
DEFAULT_MASKS: Final = {"ACK": 0x6F, "RSP": 0xFE17BF, "EVT": 0xFE17BF, "INF": 0xF77D, "HBD": 0xEF}

__all__ = [
    "ACK_TYPES", "DEFAULT_MASKS", "EVT_TYPES", "INF_TYPES", "RSP_TYPES", "HexFrame", "encode_hex", "fields_for",
    "hex_crc_ok", "hex_frame_size", "parse_hex", "read_hex", "tail_count",
]
