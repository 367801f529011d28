"""Logging setup: text or one JSON object per line, and no secret in any line.

Every line goes through `redact`: the password of a MongoDB URI, and the device password, which
is the first field of every command we send (`AT+GTOUT=<password>,...`), become `***`.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import datetime, timezone

_URI_PASSWORD = re.compile(r"(mongodb(?:\+srv)?://[^:/@\s]+:)[^@\s]+@")
_COMMAND_PASSWORD = re.compile(r"(AT\+GT[A-Z]{3}=)[^,$\s]*", re.IGNORECASE)


def redact(text: str) -> str:
    return _COMMAND_PASSWORD.sub(r"\1***", _URI_PASSWORD.sub(r"\1***@", text))


class RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "at": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return redact(json.dumps(entry, default=str))


def setup_logging(level: str = "INFO", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("pymongo").setLevel(max(logging.WARNING, logging.getLevelName(level)))
