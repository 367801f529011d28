"""Logging setup: text or one JSON object per line, and no secret in any line.

Every line goes through `redact`: the password of a MongoDB URI, the device password, which is
the first field of every command we send (`AT+GTOUT=<password>,...`), and the APN password of an
`AT+GTBSI` line become `***`.

A line about a tracker, a connection or a command passes `extra=about(imei=..., remote_addr=...,
command_id=...)`; every line carries `gateway_id`. With LOG_FORMAT=json these are fields of their
own (a shipper filters on them), redacted like the message; the text format shows the message only,
which names them already.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone
from typing import Any

from .protocol.commands import COMMANDS, P

_URI_PASSWORD = re.compile(r"(mongodb(?:\+srv)?://[^:/@\s]+:)[^@\s]+@")
_COMMAND_PASSWORD = re.compile(r"(AT\+GT[A-Z]{3}=)[^,$\s]*", re.IGNORECASE)


def _slot_pattern(type_: str, name: str) -> re.Pattern[str]:
    """The slot of parameter `name` in the line of command `type_`, from the command table (the
    device password is field 0, so the slot is field index + 1). An empty slot stays empty: it
    clears the value on the device, and `***` would say there was one."""
    spec = COMMANDS[type_]
    before = spec.slots.index(P(name)) + 1
    return re.compile(rf"(AT\+{spec.at}=(?:[^,$\s]*,){{{before}}})[^,$\s]+", re.IGNORECASE)


# AT+GTBSI=<password>,<apn>,<user>,<APN password>,...: also in a `raw` command and the raw archive.
_APN_PASSWORD = _slot_pattern("set_apn", "password")


def redact(text: str) -> str:
    text = _URI_PASSWORD.sub(r"\1***@", text)
    text = _APN_PASSWORD.sub(r"\1***", text)
    return _COMMAND_PASSWORD.sub(r"\1***", text)


# The fields a line about a tracker, a connection or a command carries in JSON, in this order.
CONTEXT_FIELDS = ("gateway_id", "imei", "remote_addr", "command_id")


def about(imei: str | None = None, remote_addr: str | None = None, command_id: Any = None) -> dict[str, Any]:
    """The `extra` of a log line about a tracker, a connection or a command (`None`s left out)."""
    fields = {"imei": imei, "remote_addr": remote_addr, "command_id": None if command_id is None else str(command_id)}
    return {key: value for key, value in fields.items() if value is not None}


class GatewayId(logging.Filter):
    """Puts this gateway's id on every record (unless the line set its own)."""

    def __init__(self, gateway_id: str) -> None:
        super().__init__()
        self.gateway_id = gateway_id

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "gateway_id"):
            record.gateway_id = self.gateway_id
        return True


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "at": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                # Each value redacted on its own, before quoting: the JSON stays valid.
                entry[name] = redact(str(value))
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


def setup_logging(level: str = "INFO", fmt: str = "text", gateway_id: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if gateway_id is not None:
        handler.addFilter(GatewayId(gateway_id))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("pymongo").setLevel(max(logging.WARNING, logging.getLevelName(level)))
