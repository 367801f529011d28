"""How a HEX frame (spec 1.7, V4.01 chapter 4) is laid out: field names once, in wire order.

A HEX layout is a tuple of `Field`s after the frame's mask. A field with a `bit` is on the wire only
when that bit of the frame's mask is set (AT+GTHRM); a field without one is always there. Each
field has a `Codec`: a big-endian struct format and how its raw items become a value (and back),
or, for the few fields whose size depends on their own content (an LBC phone number, GIR cells,
satellite lists), a variable codec that reads from the buffer itself.

For each (layout, mask) the present fields are compiled once into a reader: consecutive fixed
fields are read by one `struct.Struct.unpack_from` into local names, and one generated function
builds the dict of values (a dict display with constant keys, as `layout.py` does for ASCII), or
whatever expression over them the caller asks for (`hex.py` asks for the dict its model
validates). No index arithmetic exists anywhere else. The writer walks the same fields, so the
encoder can never disagree with the decoder about where a field sits.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

_UTC: Final = UTC


# -- value converters used by the generated readers -------------------------------------------


def _time(year: int, month: int, day: int, hour: int, minute: int, second: int) -> datetime | None:
    """Year(2) month day hour minute second. An all-zero time is "no time" (None), as an empty
    ASCII field is."""
    if not (year or month or day or hour or minute or second):
        return None
    return datetime(year, month, day, hour, minute, second, tzinfo=_UTC)


def _bad_tenth(tenth: int) -> float:
    raise ValueError(f"fraction byte {tenth} is not one decimal digit")


# A device sends its IMEI in every frame: the 8 bytes -> 15 digits conversion is cached, bounded
# like the device-status cache (messages.py); when it is full it stops growing.
_IMEIS: dict[bytes, str] = {}
_IMEIS_SIZE: Final = 65536


def _imei(raw: bytes) -> str:
    """Seven bytes of two decimal digits, then the fifteenth digit alone (spec 1.7)."""
    imei = _IMEIS.get(raw)
    if imei is None:
        imei = "%02d%02d%02d%02d%02d%02d%02d%d" % tuple(raw)  # noqa: UP031 - C-speed formatting
        if len(imei) != 15:  # a byte above 99 (or a last one above 9) writes more digits
            raise ValueError("IMEI bytes are not decimal digit pairs")
        if len(_IMEIS) < _IMEIS_SIZE:
            _IMEIS[raw] = imei
    return imei


def _name(raw: bytes) -> str | None:
    """Eight ASCII bytes, zero-padded (AT+GTCFG device name, cut to 8)."""
    name = raw.rstrip(b"\0").decode("latin-1")
    if not name.isascii() or not name.isprintable():
        raise ValueError("device name is not printable ASCII")
    return name or None


def _bcd(raw: bytes) -> str | None:
    """Packed decimal digits, padded with `F` (ICCID): the digits as ASCII sends them."""
    digits = raw.hex().upper().rstrip("F")
    return digits or None


_ENV: Final[dict[str, Any]] = {
    "_time": _time, "_bad_tenth": _bad_tenth, "_imei": _imei, "_name": _name, "_bcd": _bcd, "_datetime": datetime,
    "_UTC": _UTC,
}


# -- codecs ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Codec:
    """A fixed-size field: `fmt` is its struct format (big-endian, no `>`), `read` an expression
    over its raw items `{0}`, `{1}`... and `write` turns a value back into those items."""

    fmt: str
    read: str
    write: Callable[[Any], tuple[Any, ...]]

    @property
    def size(self) -> int:
        return struct.calcsize(">" + self.fmt)


@dataclass(frozen=True, slots=True)
class VarCodec:
    """A field whose size it says itself: `read(buf, offset) -> (value, offset after)`."""

    read: Callable[[bytes, int], tuple[Any, int]]
    write: Callable[[Any], bytes]


def _one(value: Any) -> tuple[Any, ...]:
    return (int(value),)


def _hex4_items(value: Any) -> tuple[int]:
    return (int(value, 16),)


def _tenths_items(value: Any) -> tuple[int, int]:
    tenths = round(float(value) * 10)
    return (tenths // 10, tenths % 10)


def _time_items(value: datetime | None) -> tuple[int, ...]:
    if value is None:
        return (0, 0, 0, 0, 0, 0)
    return (value.year, value.month, value.day, value.hour, value.minute, value.second)


def _imei_items(value: str) -> tuple[bytes]:
    if len(value) != 15 or not value.isdigit():
        raise ValueError(f"not a 15-digit IMEI: {value!r}")
    return (bytes([*(int(value[i:i + 2]) for i in range(0, 14, 2)), int(value[14])]),)


def _name_items(value: str | None) -> tuple[bytes]:
    return ((value or "").encode("ascii")[:8],)


def _hms_items(seconds: Any) -> tuple[int, int, int]:
    h, rest = divmod(int(seconds), 3600)
    return (h, *divmod(rest, 60))


def _degrees_items(value: Any) -> tuple[int]:
    return (round(float(value) * 1_000_000),)


def _bcd_items(value: str | None) -> tuple[bytes]:
    digits = (value or "").upper()
    return (bytes.fromhex(digits.ljust(20, "F")),)


def _offset_items(value: str) -> tuple[int, int]:  # "HHMM"
    return (int(value[:2]), int(value[2:]))


U8: Final = Codec("B", "{0}", _one)
U16: Final = Codec("H", "{0}", _one)
U32: Final = Codec("I", "{0}", _one)
HEX2: Final = Codec("H", "'%04X' % {0}", _hex4_items)  # MCC 0460, LAC, count, serial, versions
# A year is never 0 in a real time: only then is the function called (all zero = None, else an error).
TIME: Final = Codec("H5B", "(_datetime({0}, {1}, {2}, {3}, {4}, {5}, tzinfo=_UTC) if {0} else "
                           "_time({0}, {1}, {2}, {3}, {4}, {5}))", _time_items)
IMEI: Final = Codec("8s", "_imei({0})", _imei_items)
NAME: Final = Codec("8s", "_name({0})", _name_items)
# Whole units and tenths. Dividing the count of tenths gives the same float as parsing "18.6";
# adding 0.6 to 18 may not.
_TENTHS: Final = "(({0} * 10 + {1}) / 10 if {1} < 10 else _bad_tenth({1}))"
SPEED: Final = Codec("HB", _TENTHS, _tenths_items)  # km/h
KM3: Final = Codec("HB", _TENTHS, _tenths_items)  # current mileage
KM5: Final = Codec("IB", _TENTHS, _tenths_items)  # total mileage
HMS3: Final = Codec("3B", "{0} * 3600 + {1} * 60 + {2}", _hms_items)  # current hour meter -> s
HMS6: Final = Codec("IBB", "{0} * 3600 + {1} * 60 + {2}", _hms_items)  # total hour meter -> s
DEGREES: Final = Codec("i", "{0} / 1000000", _degrees_items)
METRES: Final = Codec("h", "float({0})", _one)
ICCID: Final = Codec("10s", "_bcd({0})", _bcd_items)
HHMM: Final = Codec("BB", "'%02d%02d' % ({0}, {1})", _offset_items)


def pad(n: int) -> Codec:
    """Reserved bytes: skipped when read, zeros when written."""
    return Codec(f"{n}x", "None", lambda _: ())


# Variable codecs ------------------------------------------------------------------------------


def _read_phone(buf: bytes, o: int) -> tuple[str | None, int]:
    # LBC (p. 149): high nibble = bytes including this one, low nibble 1 = a `+` precedes.
    head = buf[o]
    size, plus = head >> 4, head & 0x0F
    if size < 1 or size > 11 or plus > 1 or o + size > len(buf):
        raise ValueError(f"bad phone number length/type byte {head:#04x}")
    digits = buf[o + 1:o + size].hex().upper()
    digits = digits.removesuffix("F")
    if digits and not digits.isdigit():
        raise ValueError(f"phone number is not packed decimal: {digits!r}")
    return ("+" + digits if plus else digits) or None, o + size


def _write_phone(value: str | None) -> bytes:
    number = value or ""
    plus = number.startswith("+")
    digits = number.lstrip("+")
    if len(digits) % 2:
        digits += "F"
    body = bytes.fromhex(digits)
    return bytes([(len(body) + 1) << 4 | plus]) + body


def _counted(width: int, names: tuple[str, ...], fmt: str, limit: int, hex4: frozenset[str] = frozenset()) -> VarCodec:
    """A count byte, then that many records of `fmt`; the `hex4` names read as 4 hex digits."""
    record = struct.Struct(">" + fmt)
    formats = tuple("%04X" if name in hex4 else None for name in names)

    def read(buf: bytes, o: int) -> tuple[list[dict[str, Any]], int]:
        n = buf[o]
        o += 1
        if n > limit or o + n * width > len(buf):
            raise ValueError(f"{n} records of {width} bytes do not fit")
        out = []
        for _ in range(n):
            items = record.unpack_from(buf, o)
            out.append({name: f % v if f else v for name, f, v in zip(names, formats, items)})
            o += width
        return out, o

    def write(records: list[dict[str, Any]] | None) -> bytes:
        records = records or []
        packed = (record.pack(*(int(r[k], 16) if f else int(r[k]) for k, f in zip(names, formats))) for r in records)
        return bytes([len(records)]) + b"".join(packed)

    return VarCodec(read, write)


PHONE: Final = VarCodec(_read_phone, _write_phone)
# GIR cells (p. 154): MCC, MNC, LAC, cell ID (as ASCII writes them: `0460`), TA, RX level.
CELLS: Final = _counted(10, ("mcc", "mnc", "lac", "cell_id", "ta", "rx_level"), "HHHHBB", 32,
                        frozenset({"mcc", "mnc", "lac", "cell_id"}))
SVS: Final = _counted(2, ("sv_id", "power"), "BB", 40)


# -- fields and layouts --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Field:
    """`name` None = reserved. `bit` None = always present. When `alt_bit` is set in the mask,
    the field is read as `alt` under `alt_name` instead (the device name in place of the IMEI)."""

    name: str | None
    codec: Codec | VarCodec
    bit: int | None = None
    alt_bit: int | None = None
    alt_name: str | None = None
    alt: Codec | None = None

    def resolve(self, mask: int) -> tuple[str | None, Codec | VarCodec] | None:
        """(name, codec) of this field under `mask`, or None when it is not on the wire."""
        if self.bit is not None and not mask >> self.bit & 1:
            return None
        if self.alt_bit is not None and mask >> self.alt_bit & 1:
            return self.alt_name, self.alt  # type: ignore[return-value]
        return self.name, self.codec


def uid(name_bit: int, bit: int | None = None) -> Field:
    """The unique ID: the IMEI, or the 8-byte device name when `name_bit` is set."""
    return Field("imei", IMEI, bit, alt_bit=name_bit, alt_name="device_name", alt=NAME)


def group(bit: int, *fields: Field) -> tuple[Field, ...]:
    """Fields present together under one mask bit (the +INF groups)."""
    return tuple(Field(f.name, f.codec, bit) for f in fields)


def F(name: str | None, codec: Codec | VarCodec, bit: int | None = None) -> Field:
    return Field(name, codec, bit)


Reader = Callable[[bytes, int], tuple[dict[str, Any], int]]


@dataclass(frozen=True, slots=True)
class Plan:
    """A layout compiled for one mask: `read(buf, offset) -> (values, offset after)`."""

    read: Reader
    fields: tuple[tuple[str | None, Codec | VarCodec], ...]
    fixed_size: int | None  # bytes, when no variable field is present


Output = Callable[[dict[str, str]], str]


def _wire_dict(exprs: dict[str, str]) -> str:
    return "{" + ", ".join(f"{name!r}: {expr}" for name, expr in exprs.items()) + "}"


def compile_plan(fields: tuple[Field, ...], mask: int, output: Output = _wire_dict, args: str = "",
                 env: dict[str, Any] | None = None) -> Plan:
    """Compile the fields present under `mask`. The reader returns `(output, offset after)`, where
    `output` is the source of an expression over the fields' values (by default the dict of them;
    `output` gets each present name's expression). `args` are extra parameters of the reader and
    `env` extra names its source may use."""
    present = [r for f in fields if (r := f.resolve(mask)) is not None]
    namespace: dict[str, Any] = {**_ENV, **(env or {})}
    lines: list[str] = []
    exprs: dict[str, str] = {}
    run: list[tuple[str | None, Codec]] = []
    size = 0
    variable = False
    structs = 0

    def flush() -> None:
        nonlocal size, structs
        if not run:
            return
        k = structs
        structs += 1
        s = struct.Struct(">" + "".join(c.fmt for _, c in run))
        namespace[f"S{k}"] = s
        size += s.size
        # Unpacked straight into local names: reading a local is cheaper than indexing a tuple.
        names: list[str] = []
        for name, codec in run:
            n = len(struct.unpack(">" + codec.fmt, bytes(codec.size)))
            refs = [f"x{k}_{len(names) + j}" for j in range(n)]
            names += refs
            if name is not None:
                exprs[name] = codec.read.format(*refs)
        target = ", ".join(names) + ("," if len(names) == 1 else "")
        lines.append(f"    {target} = S{k}.unpack_from(b, o)" if names else "    pass")
        lines.append(f"    o += {s.size}")
        run.clear()

    for k, (name, codec) in enumerate(present):
        if isinstance(codec, VarCodec):
            flush()
            variable = True
            namespace[f"V{k}"] = codec.read
            lines.append(f"    v{k}, o = V{k}(b, o)")
            if name is not None:
                exprs[name] = f"v{k}"
        else:
            run.append((name, codec))
    flush()
    body = "\n".join(lines) if lines else "    pass"
    source = f"def read(b, o{args}):\n{body}\n    return {output(exprs)}, o\n"
    exec(compile(source, "<hex layout reader>", "exec"), namespace)  # noqa: S102 - built from the tables only
    return Plan(namespace["read"], tuple(present), None if variable else size)


def write_fields(plan: Plan, values: dict[str, Any]) -> bytes:
    """The bytes of `values` under a compiled plan; a missing name raises KeyError."""
    out = bytearray()
    for name, codec in plan.fields:
        value = None if name is None else values[name]
        if isinstance(codec, VarCodec):
            out += codec.write(value)
        else:
            out += struct.pack(">" + codec.fmt, *codec.write(value))
    return bytes(out)


# -- CRC -----------------------------------------------------------------------------------------


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = (crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC_TABLE: Final = _crc_table()


def crc16_ccitt_false(data: bytes) -> int:
    """CRC-16/CCITT-FALSE: polynomial 0x1021, initial 0xFFFF, no reflection, no final XOR."""
    crc = 0xFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[(crc >> 8) ^ byte]
    return crc
