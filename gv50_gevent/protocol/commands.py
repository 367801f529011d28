"""Commands to the device: operator command types -> validated parameters -> `AT+GTxxx=...$` bytes.

One table, keyed by the operator-facing type names of the `commands` collection, says which AT
command each type becomes, its wire slots in order, the answer report it triggers and what the
device state becomes once the device acknowledges it. `decode_command` is the reverse, for the
device simulator. Shape (V4.01 3.2, p. 8-9): `AT+GTxxx=<password>,<slots...>,<serial>$`, every
slot sent even when empty.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from .command_params import (
    PASSWORD_RE, SERIAL_RE, GetConfig, NoParams, Params, SetApn, SetHexMasks, SetReportInterval, SetServer,
)
from .config_blocks import block_name, command_fields
from .errors import CommandError, ProtocolError

# Slot counts (password and serial included) of every V4.01 command, from the command tables.
SLOT_COUNTS: Final[dict[str, int]] = {
    "BSI": 9, "SRI": 16, "QSS": 18, "CFG": 22, "PIN": 9, "TMA": 11, "OWH": 19, "DOG": 13,
    "PDS": 10, "FRI": 19, "FFC": 21, "TOW": 21, "GEO": 16, "SPD": 22, "IDL": 17, "SSR": 10,
    "HBM": 25, "OUT": 15, "DIS": 22, "EPS": 15, "VVS": 7, "AVS": 7, "RTO": 8, "HMC": 12,
    "CMD": 9, "UDF": 14, "GAM": 12, "HRM": 13,
}
# RMD (33 + list entries) and WLT (9 + numbers) grow with the lists they carry: only a minimum.
MIN_SLOT_COUNTS: Final[dict[str, int]] = {"RMD": 33, "WLT": 9}

_HEAD_RE: Final = re.compile(r"AT\+GT([A-Z]{3})")


class CommandLine(BaseModel):
    """One `AT+GTxxx=...$` line as the device sees it. `fields` are the slots between the
    password and the serial, `None` where empty."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    raw: str
    type: str
    password: str
    fields: tuple[str | None, ...]
    serial: str

    @property
    def slot_count(self) -> int:
        return len(self.fields) + 2

    def render(self) -> str:
        slots = (self.password, *(f or "" for f in self.fields), self.serial)
        return f"AT+{self.type}={','.join(slots)}$"


def _split_slots(body: str, line: str) -> list[str]:
    # AT+GTCMD stores a whole AT command in one slot, with its own commas and `$` (V4.01 p. 63):
    # a slot that starts with `AT+` runs to the piece that ends with `$`.
    slots: list[str] = []
    pieces = iter(body.split(","))
    for piece in pieces:
        if piece.strip().startswith("AT+"):
            while not piece.endswith("$"):
                nxt = next(pieces, None)
                if nxt is None:
                    raise ProtocolError("embedded AT command has no '$'", line)
                piece = f"{piece},{nxt}"
            if piece.count("$") != 1:
                raise ProtocolError("embedded AT command has more than one '$'", line)
        elif "$" in piece:
            raise ProtocolError("'$' inside a slot", line)
        # The vendor's examples carry stray blanks around slots (`AT+GTCFG= gv50,...`).
        slots.append(piece.strip())
    return slots


def decode_command(line: bytes | str) -> CommandLine:
    """Parse one command line as a device would; raise ProtocolError if it is malformed."""
    if isinstance(line, bytes):
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            raise ProtocolError("command is not ASCII", line) from None
    else:
        text = line
    if any(not " " <= ch <= "~" for ch in text):
        raise ProtocolError("command has a non-printable or non-ASCII character", text)
    if not text.endswith("$"):
        raise ProtocolError("command does not end with '$'", text)
    head, sep, body = text[:-1].partition("=")
    match = _HEAD_RE.fullmatch(head)
    if not sep or match is None:
        raise ProtocolError("command does not start with AT+GTxxx=", text)
    slots = _split_slots(body, text)
    if len(slots) < 2:
        raise ProtocolError("command has no password and serial", text)
    password, *fields, serial = slots
    if not PASSWORD_RE.fullmatch(password):
        raise ProtocolError("password is not 4-6 characters 0-9a-zA-Z", text)
    if not SERIAL_RE.fullmatch(serial):
        raise ProtocolError("serial number is not 4 hex digits", text)
    return CommandLine(raw=text, type=f"GT{match[1]}", password=password,
                       fields=tuple(f or None for f in fields), serial=serial)


def _raw_line(value: Any) -> Any:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {type(value).__name__}")
    if any(not " " <= ch <= "~" for ch in value):
        bad = next(ch for ch in value if not " " <= ch <= "~")
        raise ValueError(f"contains {bad!r}: only printable ASCII is allowed")
    if len(value) > 1024:
        raise ValueError("is longer than 1024 characters")
    try:
        line = decode_command(value)
    except ProtocolError as exc:
        raise ValueError(f"is not an AT+GTxxx=<password>,...,<serial>$ line: {exc.reason}") from None
    name = line.type[2:]
    if name not in SLOT_COUNTS and name not in MIN_SLOT_COUNTS:
        raise ValueError(f"AT+{line.type} is not a V4.01 command")
    if name in SLOT_COUNTS and line.slot_count != SLOT_COUNTS[name]:
        raise ValueError(f"AT+{line.type} has {line.slot_count} fields, V4.01 defines {SLOT_COUNTS[name]}")
    if line.slot_count < MIN_SLOT_COUNTS.get(name, 0):
        raise ValueError(f"AT+{line.type} has {line.slot_count} fields, V4.01 needs at least {MIN_SLOT_COUNTS[name]}")
    if value.count("$") != 1:
        # Only AT+GTCMD could carry a second `$`; the contract refuses `$` inside any value.
        raise ValueError("contains a '$' before the end of the line")
    return value


class Raw(Params):
    """`command`: a whole `AT+GTxxx=...$` line; the gateway's serial replaces its last field."""

    command: Annotated[str, BeforeValidator(_raw_line)]


@dataclass(frozen=True, slots=True)
class P:
    """A slot filled from the parameter of this name."""

    name: str


Slot = str | P
Effects = Callable[[Any], dict[str, Any]]
Answer = str | Callable[[Any], str] | None


@dataclass(frozen=True, slots=True)
class Spec:
    at: str                      # the `GTxxx` of the command and of its +ACK
    model: type[Params]
    slots: tuple[Slot, ...]      # between password and serial, in wire order
    answer: Answer = None        # the +RESP report the command asks for (or a function of the params)
    effects: Effects | None = None  # device state besides the configuration shadow (`blocked`, ...)


def _rto(sub: str, answer: str | None = None) -> Spec:
    # V4.01 3.2.7.1 (p. 56-60): sub-command, command/mask, output direction, 3 reserved. The vendor
    # examples leave output direction empty (it is ignored for 3 REBOOT and 4 RESET).
    return Spec("GTRTO", NoParams, (sub, "", "", "", "", ""), answer)


def _out(active: bool) -> Spec:
    # V4.01 3.2.5.1 (p. 47-50), GV50P only. Wave shape 1 (duration 0, toggles 0) holds output 1 at
    # the given level, and the level survives a power reset. DOS report bit 0 makes the device send
    # +RESP:GTDOS when the output changes.
    status = "1" if active else "0"
    slots: tuple[Slot, ...] = (status, "0", "0", "", "", "", "1", "", "", "", "", "", "")
    return Spec("GTOUT", NoParams, slots, effects=lambda _: {"blocked": active})


def _config_answer(p: GetConfig) -> str:
    return "GTALM" if p.command is None else "GTALS"


def _server_effects(p: SetServer) -> dict[str, Any]:
    server = p.model_dump(exclude_none=True, exclude={"sack_enable"})
    effects: dict[str, Any] = {"config.server": server}
    if p.sack_enable is not None:
        effects["sack_enable"] = p.sack_enable
    return effects


def _apn_effects(p: SetApn) -> dict[str, Any]:
    # Never the APN password. An empty user name clears it on the device, so None is the truth.
    return {"config.apn": {"apn": p.apn, "user": p.user or None}}


COMMANDS: Final[dict[str, Spec]] = {
    "block": _out(True),
    "unblock": _out(False),
    "set_server": Spec("GTSRI", SetServer, (
        P("report_mode"), "", P("buffer_mode"), P("host"), P("port"), P("backup_host"),
        P("backup_port"), P("sms_gateway"), P("heartbeat_min"), P("sack_enable"),
        P("protocol_format"),  # 0 ASCII, 1 HEX; empty unless asked, as in the vendor examples
        "",  # SMS ACK enable
        "",  # reserved
        "",  # special SACK enable
    ), effects=_server_effects),
    # V4.01 3.30: reserved, reserved, the five masks, four reserved. The vendor's own example has
    # one reserved slot before the masks and one more mask after them (12 fields); the table and
    # the configuration dump have 13, which is what is sent.
    "set_hex_masks": Spec("GTHRM", SetHexMasks, (
        "", "", P("ack_mask"), P("rsp_mask"), P("evt_mask"), P("inf_mask"), P("hbd_mask"), "", "", "", "",
    ), effects=lambda p: {"config.hex_masks": p.model_dump(exclude_none=True)}),
    "set_apn": Spec("GTBSI", SetApn, (P("apn"), P("user"), P("password"), "", "", "", ""),
                    effects=_apn_effects),
    "set_report_interval": Spec("GTFRI", SetReportInterval, (
        P("mode"), P("discard_no_fix"), "", P("period_enable"), P("start_time"), P("end_time"), "",
        P("send_interval_s"), P("distance_m"), P("mileage_m"), "", P("corner_deg"),
        P("igf_interval_s"), "", "", "", "",
    )),
    "locate": _rto("1", "GTRTL"),      # RTL: fresh fix, then +RESP:GTRTL
    "reboot": _rto("3"),               # REBOOT
    # V4.01 has no RTO sub-command answering +RESP:GTINF (GTINF is only periodic, CFG slot 13).
    # A (IOS) answers +RESP:GTIOS: the input (ignition, main power) and output status.
    "get_info": _rto("A", "GTIOS"),
    "get_version": _rto("8", "GTVER"),  # VER
    # READ: every setting (+RESP:GTALM, four packets) or one command's (+RESP:GTALS).
    "get_config": Spec("GTRTO", GetConfig, ("2", P("command"), "", "", "", ""), _config_answer),
    "raw": Spec("", Raw, ()),
}
COMMAND_TYPES: Final[frozenset[str]] = frozenset(COMMANDS)


def _spec(type_: str) -> Spec:
    spec = COMMANDS.get(type_) if isinstance(type_, str) else None
    if spec is None:
        raise CommandError("type", f"unknown command type {type_!r}; expected one of {', '.join(sorted(COMMANDS))}")
    return spec


def _reason(err: Any, type_: str) -> str:
    if err["type"] == "value_error":
        return str(err["ctx"]["error"])
    if err["type"] == "missing":
        return "is required"
    if err["type"] == "extra_forbidden":
        return f"is not a parameter of {type_}"
    return str(err["msg"])


def validate_command(type_: str, params: Mapping[str, Any] | Params | None) -> Params:
    """The typed parameters of a command; CommandError(field, reason) if anything is wrong."""
    spec = _spec(type_)
    if params is None:
        params = {}
    if isinstance(params, spec.model):
        return params
    if not isinstance(params, Mapping):
        raise CommandError("params", f"must be an object, not {type(params).__name__}")
    try:
        return spec.model.model_validate(dict(params))
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in err["loc"]) or "params"
        raise CommandError(field, _reason(err, type_)) from None


def command_problems(type_: str, params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every problem of a command's parameters as (field, reason), not only the first (a profile
    lists them all at once)."""
    spec = _spec(type_)
    try:
        spec.model.model_validate(dict(params))
    except ValidationError as exc:
        return [(".".join(str(part) for part in err["loc"]) or "params", _reason(err, type_))
                for err in exc.errors(include_url=False)]
    return []


def _wire(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def encode_command(type_: str, params: Mapping[str, Any] | None, *, password: str, serial: str) -> bytes:
    """The ASCII line to send, ending in `$`. `serial` is the gateway's 4-hex command serial."""
    model = validate_command(type_, params)
    if not isinstance(password, str) or not PASSWORD_RE.fullmatch(password):
        raise CommandError("device_password", "must be 4-6 characters 0-9a-zA-Z")
    if not isinstance(serial, str) or not SERIAL_RE.fullmatch(serial):
        raise CommandError("serial", "must be 4 hex digits")
    serial = serial.upper()
    if isinstance(model, Raw):
        line = decode_command(model.command)
        return line.model_copy(update={"serial": serial}).render().encode("ascii")
    spec = COMMANDS[type_]
    fields = tuple(_wire(getattr(model, s.name)) if isinstance(s, P) else s for s in spec.slots)
    return f"AT+{spec.at}={','.join((password, *fields, serial))}$".encode("ascii")


def ack_type(type_: str, params: Mapping[str, Any] | Params | None) -> str:
    """The `GTxxx` that the device's +ACK for this command carries."""
    model = validate_command(type_, params)
    if isinstance(model, Raw):
        return decode_command(model.command).type
    return COMMANDS[type_].at


def answer_type(type_: str, params: Mapping[str, Any] | Params | None = None) -> str | None:
    """The +RESP report the command asks for, if any (locate -> GTRTL)."""
    answer = _spec(type_).answer
    if callable(answer):
        return answer(validate_command(type_, params))
    return answer


def _wire_slots(spec: Spec, model: Params) -> tuple[str, ...]:
    return tuple(_wire(getattr(model, s.name)) if isinstance(s, P) else s for s in spec.slots)


def config_changes(type_: str, params: Mapping[str, Any] | Params | None) -> tuple[str, dict[str, Any]] | None:
    """The configuration block a command writes and the fields it sets, by the names of
    `config_blocks` (`("fri", {"mode": 1, "send_interval_s": 30})`), or None if it sets none.
    Read back from the very slots that are sent, so the shadow holds what the tracker was told."""
    spec = _spec(type_)
    model = validate_command(type_, params)
    if isinstance(model, Raw):
        line = decode_command(model.command)
        tag, slots = line.type[2:], tuple(line.fields)
    else:
        tag, slots = spec.at[2:], _wire_slots(spec, model)
    fields = command_fields(tag, slots)
    if tag == "TMA" and {"sign", "hour_offset", "minute_offset"} <= fields.keys():
        # The tracker reports its zone as one `±HHMM` value: keep it in that form.
        sign, hours, minutes = fields.pop("sign"), fields.pop("hour_offset"), fields.pop("minute_offset")
        if isinstance(hours, int) and isinstance(minutes, int):
            fields["time_zone"] = f"{sign}{hours:02d}{minutes:02d}"
    if tag == "BSI" and len(slots) > 1 and not slots[1]:
        fields["user"] = None  # an empty APN user name clears it on the device (V4.01 3.2.1.1)
    return (block_name(tag), fields) if fields else None


def ack_effects(type_: str, params: Mapping[str, Any] | Params | None, at: Any = None) -> dict[str, Any]:
    """What the device state (`devices` fields, dotted) becomes once the device acknowledges:
    the command's own effects, and the configuration shadow `config.<block>` (the fields it set,
    `source: "command"`, `at` when given, and `commanded`: what commands set since the tracker
    last reported the block, which its next report is checked against)."""
    spec = _spec(type_)
    model = validate_command(type_, params)
    effects = spec.effects(model) if spec.effects is not None else {}
    changes = config_changes(type_, model)
    if changes is not None:
        block, fields = changes
        for name, value in fields.items():
            effects[f"config.{block}.{name}"] = value
            effects[f"config.{block}.commanded.{name}"] = value
        effects[f"config.{block}.source"] = "command"
        if at is not None:
            effects[f"config.{block}.at"] = at
    return effects
