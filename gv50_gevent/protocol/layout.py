"""How a report is laid out on the wire: field names once, in wire order.

A layout is a tuple of slots after the header field: a field name, `None` for a reserved slot,
`POSITION` for one 12-field position block, `POSITIONS` for `number` blocks (multi-point GTFRI,
spec 4.1.2: 18 + 12·N fields), a `Group` of named fields (once, a fixed number of times, or as
many times as an earlier count field says: GTGSV is 7 + 2·N), or a `Rest` that takes whatever the
slots after it leave (the settings of GTALM/GTALC/GTALS). No index arithmetic exists anywhere else.

Each layout is compiled once into a plan: every field outside the one part that varies in length
has a fixed index (from the front, or from the back after the variable part), so all of them are
read by one generated function that returns a dict display.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Final, Union

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
HEAD: Final[tuple[str | None, ...]] = ("protocol_version", "imei", "device_name")
TAIL: Final[tuple[str | None, ...]] = ("sent_at", "count")

Reader = Callable[[list[Any]], dict[str, Any]]
BlockReader = Callable[[list[Any], int], dict[str, Any]]


def _dict_source(names: tuple[str | None, ...], index: Callable[[int], str]) -> str:
    """Source of a dict display `{"name": f[<index(k)>] or None, ...}`: an empty field reads as None.
    Reserved (`None`) names are skipped."""
    items = (f"{name!r}: f[{index(k)}] or None" for k, name in enumerate(names) if name is not None)
    return "{" + ", ".join(items) + "}"


def _function(args: str, expression: str) -> Any:
    # Generated like `collections.namedtuple` and `dataclasses` do: a dict display with constant
    # keys costs half of `dict(zip(names, values))`, and reading a report is mostly building dicts.
    namespace: dict[str, Any] = {}
    code = compile(f"def read({args}):\n    return {expression}\n", "<layout reader>", "exec")
    exec(code, namespace)  # noqa: S102 - the source is built from the layout tables only
    return namespace["read"]


def _block_reader(names: tuple[str | None, ...]) -> BlockReader:
    """Reads one block of `names` starting at index `i`."""
    return _function("f, i", _dict_source(names, lambda k: f"i + {k}" if k else "i"))  # type: ignore[no-any-return]


_read_position: Final[BlockReader] = _block_reader(POSITION_FIELDS)


@dataclass(frozen=True, slots=True)
class _Plan:
    """A layout compiled for reading. At most one part varies in length (`POSITIONS`, a `Group`
    counted by a field, or a `Rest`), so every other field sits at a fixed index: counted from the
    front before the variable part and from the back after it. `read` reads all of those at once;
    only the variable part is read in a loop, starting at `start`."""

    size: int | None  # exact field count including the header, or None when it varies
    read: Reader
    variable: Slot | None  # POSITIONS, a counted Group, a Rest, or None
    start: int  # index where the variable part begins
    after: int  # fields after the variable part
    count_index: int  # index of the field that counts the variable part (-1: none, a Rest)
    count_name: str
    width: int  # fields per repetition of the variable part
    read_block: BlockReader | None  # reads one repetition of the variable part


def _plain(slot: Slot) -> bool:
    return slot is None or isinstance(slot, str) and slot not in (POSITION, POSITIONS)


def _width(slot: Slot) -> int:
    if slot == POSITION:
        return 12
    if isinstance(slot, Group):
        return len(slot.fields) * (1 if slot.count is None else slot.count)  # type: ignore[operator,return-value]
    if slot is None or isinstance(slot, str):
        return 1
    raise TypeError(f"not a slot: {slot!r}")


def _varies(slot: Slot) -> bool:
    return slot == POSITIONS or isinstance(slot, Rest) or isinstance(slot, Group) and isinstance(slot.count, str)


def _compile(slots: tuple[Slot, ...]) -> _Plan:
    varying = [k for k, slot in enumerate(slots) if _varies(slot)]
    if len(varying) > 1:
        raise TypeError("only one slot may vary in length")
    k = varying[0] if varying else len(slots)
    variable = slots[k] if varying else None
    front, back = slots[:k], slots[k + 1:]
    if isinstance(variable, Rest) and not all(_plain(slot) for slot in back):
        raise TypeError("only plain slots may follow a Rest")
    if variable == POSITIONS and POSITION in slots:
        raise TypeError("a layout has either POSITION blocks or one POSITIONS")
    # Fixed indices: from the front up to the variable part, from the back after it.
    placed: list[tuple[Slot, int]] = []
    i = 1
    for slot in front:
        placed.append((slot, i))
        i += _width(slot)
    start = i
    after = sum(_width(slot) for slot in back)
    j = -after
    for slot in back:
        placed.append((slot, j))
        j += _width(slot)

    items: list[str] = []
    positions: list[str] = []
    indices: dict[str, int] = {}
    for slot, at in placed:
        if slot == POSITION:
            positions.append(_dict_source(POSITION_FIELDS, lambda k, at=at: str(at + k)))  # type: ignore[misc]
        elif isinstance(slot, Group):
            w = len(slot.fields)
            groups = [_dict_source(slot.fields, lambda k, at=at + r * w: str(at + k))  # type: ignore[misc]
                      for r in range(1 if slot.count is None else slot.count)]  # type: ignore[arg-type]
            items.append(f"{slot.name!r}: " + (groups[0] if slot.count is None else f"[{', '.join(groups)}]"))
        elif slot is not None:
            assert isinstance(slot, str)
            items.append(f"{slot!r}: f[{at}] or None")
            indices[slot] = at
    if positions:
        items.append(f"'positions': [{', '.join(positions)}]")

    count_index, count_name, width, read_block = -1, "", 0, None
    if variable == POSITIONS or isinstance(variable, Group):
        count_name = variable.count if isinstance(variable, Group) else "number"  # type: ignore[assignment]
        if count_name not in indices or indices[count_name] < 0:
            raise TypeError(f"{count_name!r} must come before the slot it counts")
        count_index = indices[count_name]
        block = variable.fields if isinstance(variable, Group) else POSITION_FIELDS
        width = len(block)
        read_block = _read_position if variable == POSITIONS else _block_reader(block)
    return _Plan(
        size=start + after if variable is None else None, read=_function("f", "{" + ", ".join(items) + "}"),
        variable=variable, start=start, after=after, count_index=count_index, count_name=count_name,
        width=width, read_block=read_block,
    )


@dataclass(frozen=True, slots=True)
class Layout:
    model: type[Report]
    slots: tuple[Slot, ...]
    plan: _Plan = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "plan", _compile(self.slots))

    @property
    def size(self) -> int | None:
        """The exact field count including the header, or None when it varies."""
        return self.plan.size


def _count(number: Any, name: str, line: str) -> int:
    if not (isinstance(number, str) and number.isdigit() and len(number) <= 3):
        raise InvalidMessage(f"bad {name} {number!r}", line)
    return int(number)


def read_layout(layout: Layout, fields: list[str], line: str) -> dict[str, Any]:
    """Map `fields` (the frame split on `,`; index 0 is the header) onto the layout's names, an
    empty field as None; check the count exactly."""
    plan = layout.plan
    n = len(fields)
    variable = plan.variable
    # The reason strings are built only on failure: an f-string per message costs as much as
    # reading a whole position block.
    if variable is None:
        if n != plan.size:
            raise InvalidMessage(f"{n} fields where the layout has {plan.size}", line)
        return plan.read(fields)
    i = plan.start
    read_block = plan.read_block
    if read_block is None:  # a Rest
        end = n - plan.after
        if end < i:
            raise InvalidMessage("too few fields", line)
        values = plan.read(fields)
        values[variable.name] = tuple([f or None for f in fields[i:end]])  # type: ignore[union-attr]
        return values
    index = plan.count_index
    count = _count((fields[index] or None) if index < n else None, plan.count_name, line)
    width = plan.width
    if i + width * count > n:
        if variable == POSITIONS:
            raise InvalidMessage(f"{count} position blocks do not fit", line)
        raise InvalidMessage(f"{count} groups of {width} fields do not fit", line)
    if n != i + width * count + plan.after:
        raise InvalidMessage(f"{n} fields where the layout has {i + width * count + plan.after}", line)
    values = plan.read(fields)
    blocks = []
    for _ in range(count):
        blocks.append(read_block(fields, i))
        i += width
    if variable == POSITIONS:
        if blocks:
            values["positions"] = blocks
    else:
        values[variable.name] = blocks  # type: ignore[union-attr]
    return values
