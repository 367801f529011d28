"""How a report is laid out on the wire: field names once, in wire order.

A layout is a tuple of slots after the header field: a field name, `None` for a reserved slot,
`POSITION` for one 12-field position block, `POSITIONS` for `number` blocks (multi-point GTFRI,
spec 4.1.2: 18 + 12·N fields), a `Group` of named fields (once, a fixed number of times, or as
many times as an earlier count field says: GTGSV is 7 + 2·N), or a `Rest` that takes whatever the
slots after it leave (the settings of GTALM/GTALC/GTALS). No index arithmetic exists anywhere else.

Each layout is compiled once into a plan of steps; runs of plain names are read with one slice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Union

from .errors import InvalidMessage
from .messages import Report

POSITION: Final = "<position>"
POSITIONS: Final = "<positions>"


@dataclass(frozen=True, slots=True)
class Group:
    """Named fields read as a nested dict under `name`. `count=None` reads them once (one dict);
    an int or the name of an earlier field (a decimal count) reads a list of that many dicts."""

    name: str
    fields: tuple[str | None, ...]
    count: int | str | None = None


@dataclass(frozen=True, slots=True)
class Rest:
    """Every field the slots after it leave over, as a tuple under `name`. Only plain slots may follow."""

    name: str


Slot = Union[str, None, Group, Rest]

# P(k), spec 2.3; the twelfth field is reserved (`00`).
POSITION_FIELDS: Final[tuple[str | None, ...]] = (
    "gps_accuracy", "speed_kmh", "azimuth", "altitude_m", "longitude", "latitude", "fix_time",
    "mcc", "mnc", "lac", "cell_id", None,
)
_POSITION_NAMES: Final = POSITION_FIELDS[:11]
HEAD: Final[tuple[str | None, ...]] = ("protocol_version", "imei", "device_name")
TAIL: Final[tuple[str | None, ...]] = ("sent_at", "count")

# Plan step kinds.
_NAMES, _POSITION, _POSITIONS, _GROUP, _REST = range(5)


def _compile(slots: tuple[Slot, ...]) -> tuple[tuple[tuple[int, Any], ...], int | None]:
    """Slots -> (steps, exact field count including the header, or None when it varies)."""
    steps: list[tuple[int, Any]] = []
    run: list[str | None] = []
    size: int | None = 1
    for k, slot in enumerate(slots):
        if slot is None or isinstance(slot, str) and slot not in (POSITION, POSITIONS):
            run.append(slot)
            if size is not None:
                size += 1
            continue
        if run:
            steps.append((_NAMES, tuple(run)))
            run = []
        if slot == POSITION:
            steps.append((_POSITION, None))
            if size is not None:
                size += 12
        elif slot == POSITIONS:
            steps.append((_POSITIONS, None))
            size = None
        elif isinstance(slot, Group):
            steps.append((_GROUP, slot))
            if isinstance(slot.count, str):
                size = None
            elif size is not None:
                size += len(slot.fields) * (1 if slot.count is None else slot.count)
        elif isinstance(slot, Rest):
            after = slots[k + 1:]
            if not all(s is None or isinstance(s, str) and s not in (POSITION, POSITIONS) for s in after):
                raise TypeError("only plain slots may follow a Rest")
            steps.append((_REST, (slot.name, len(after))))
            size = None
        else:
            raise TypeError(f"not a slot: {slot!r}")
    if run:
        steps.append((_NAMES, tuple(run)))
    return tuple(steps), size


@dataclass(frozen=True, slots=True)
class Layout:
    model: type[Report]
    slots: tuple[Slot, ...]
    steps: tuple[tuple[int, Any], ...] = field(init=False, repr=False, compare=False)
    size: int | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        steps, size = _compile(self.slots)
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "size", size)


def _count(values: dict[str, Any], name: str, line: str) -> int:
    number = values.get(name)
    if not (isinstance(number, str) and number.isdigit() and len(number) <= 3):
        raise InvalidMessage(f"bad {name} {number!r}", line)
    return int(number)


def read_layout(layout: Layout, fields: list[str | None], line: str) -> dict[str, Any]:
    """Map `fields` (index 0 is the header) onto the layout's names; check the count exactly."""
    n = len(fields)
    size = layout.size
    # The reason strings are built only on failure: an f-string per message costs as much as a
    # whole step of the plan.
    if size is not None and n != size:
        raise InvalidMessage(f"{n} fields where the layout has {size}", line)
    values: dict[str, Any] = {}
    positions: list[dict[str, Any]] = []
    i = 1
    for kind, arg in layout.steps:
        if kind == _NAMES:
            j = i + len(arg)
            values.update(zip(arg, fields[i:j]))
            i = j
        elif kind == _POSITION:
            positions.append(dict(zip(_POSITION_NAMES, fields[i:i + 11])))
            i += 12
        elif kind == _POSITIONS:
            count = _count(values, "number", line)
            if i + 12 * count > n:
                raise InvalidMessage(f"{count} position blocks do not fit", line)
            for _ in range(count):
                positions.append(dict(zip(_POSITION_NAMES, fields[i:i + 11])))
                i += 12
        elif kind == _GROUP:
            width = len(arg.fields)
            if arg.count is None:
                values[arg.name] = {k: v for k, v in zip(arg.fields, fields[i:i + width]) if k is not None}
                i += width
                continue
            count = arg.count if isinstance(arg.count, int) else _count(values, arg.count, line)
            if i + width * count > n:
                raise InvalidMessage(f"{count} groups of {width} fields do not fit", line)
            groups = []
            for _ in range(count):
                groups.append({k: v for k, v in zip(arg.fields, fields[i:i + width]) if k is not None})
                i += width
            values[arg.name] = groups
        else:  # _REST
            name, after = arg
            end = n - after
            if end < i:
                raise InvalidMessage("too few fields", line)
            values[name] = tuple(fields[i:end])
            i = end
    if i != n:
        raise InvalidMessage(f"{n} fields where the layout has {i}", line)
    values.pop(None, None)  # type: ignore[call-overload]
    if positions:
        values["positions"] = positions
    return values
