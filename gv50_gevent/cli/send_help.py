"""The help of `gv50ctl send`, made from the command tables: each type, its parameters with their
limits, and a working example."""

from __future__ import annotations

import inspect
import re
from typing import Annotated, Any, get_args, get_origin

from ..protocol.command_params import FRI_NEEDS, SetReportInterval
from ..protocol.commands import COMMANDS as COMMAND_SPECS


TYPE_SUMMARY = {
    "block": "switch output 1 on (immobiliser)",
    "unblock": "switch output 1 off",
    "set_server": "set the server the tracker reports to",
    "set_apn": "set the mobile data APN",
    "set_report_interval": "set how often the tracker reports (fixed reports)",
    "locate": "ask for a fresh position (answer: +RESP:GTRTL)",
    "reboot": "restart the tracker",
    "get_info": "ask for the input and output status (answer: +RESP:GTIOS)",
    "get_version": "ask for the firmware version (answer: +RESP:GTVER)",
    "raw": "send a whole AT+GT...$ line; the gateway puts its own serial in the last field",
}
# One working example per type that takes parameters; a test validates each of them.
EXAMPLE_PARAMS: dict[str, dict[str, Any]] = {
    "set_server": {"host": "gps.example.com", "port": 5004},
    "set_apn": {"apn": "internet"},
    "set_report_interval": {"mode": 1, "send_interval_s": 60},
    "raw": {"command": "AT+GTRTO=gv50,8,,,,,,0001$"},
}
EXAMPLE_IMEI = "865083030000001"


def example_command(type_: str) -> str:
    params = EXAMPLE_PARAMS.get(type_, {})
    shown = " ".join(f"--param {k}={v}" if not re.search(r"[\s$'\"]", str(v)) else f"--param '{k}={v}'"
                     for k, v in params.items())
    return f"gv50ctl send {EXAMPLE_IMEI} {type_}" + (f" {shown}" if shown else "")


def _constraint(check: Any) -> str | None:
    """Words for one validator of command_params (its factory's arguments, read from the closure)."""
    func = getattr(check, "func", check)
    factory = getattr(func, "__qualname__", "").split(".")[0].lstrip("_")
    try:
        free = inspect.getclosurevars(func).nonlocals
    except TypeError:
        free = {}
    if factory == "between":
        return f"{free['low']}..{free['high']}"
    if factory == "one_of":
        return "one of " + ", ".join(map(str, free["allowed"]))
    if factory == "length":
        low, high = free["low"], free["high"]
        return f"up to {high} characters" if low == 0 else f"{low}-{high} characters"
    if factory == "pattern":
        return str(free["what"])
    if factory == "zero_or_at_least":
        return f"0 (off) or at least {free['low']}"
    if factory == "ipv4":
        return "an IPv4 address"
    if factory == "text":
        return "text"
    if factory == "integer":
        return "integer"
    if factory == "flag":
        return "true or false"
    if factory == "raw_line":
        return "a whole AT+GTxxx=...$ line"
    return None


def _annotation_words(annotation: Any) -> list[str]:
    words: list[str] = []
    if get_origin(annotation) is Annotated:
        inner, *metadata = get_args(annotation)
        words += _annotation_words(inner)
        words += [w for w in map(_constraint, metadata) if w]
    else:
        for arg in get_args(annotation):
            if arg is not type(None):
                words += _annotation_words(arg)
    return words


def param_help(type_: str) -> list[str]:
    model = COMMAND_SPECS[type_].model
    lines = []
    for name, field in model.model_fields.items():
        words = _annotation_words(field.annotation) + [w for w in map(_constraint, field.metadata) if w]
        if field.is_required():
            need = "required"
        elif field.default is None:
            need = "optional"
        else:
            need = f"default {field.default}"
        modes = [str(mode) for mode, needs in FRI_NEEDS.items() if name in needs] \
            if model is SetReportInterval else []
        if modes:
            need += f" (required in mode {', '.join(modes)})"
        unique = list(dict.fromkeys(words))
        lines.append(f"      {name:<16} {need}; {', '.join(unique) or 'any'}")
    return lines or ["      (no parameters)"]


def send_epilog() -> str:
    lines = ["command types, their parameters (--param NAME=VALUE) and an example:", ""]
    for type_ in sorted(COMMAND_SPECS):
        spec = COMMAND_SPECS[type_]
        at = f" [AT+{spec.at}]" if spec.at else ""
        lines.append(f"  {type_}{at}: {TYPE_SUMMARY.get(type_, '')}")
        lines += param_help(type_)
        lines.append(f"      example: {example_command(type_)}")
        lines.append("")
    lines.append("A value may not contain ',', '$' or a line break; every value is checked before anything is sent.")
    return "\n".join(lines)

