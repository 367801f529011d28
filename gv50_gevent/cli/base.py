"""What every verb of `gv50ctl` shares: exit codes, errors, output (text tables or JSON), settings,
the MongoDB connection, and argument checks."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, NoReturn

from bson import ObjectId
from bson.errors import InvalidId
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import ConfigurationError, PyMongoError
from rich import box
from rich.console import Console
from rich.table import Table

from ..commands.lifecycle import is_imei
from ..config import Settings, SettingsError, load_settings, redact_uri
from ..fleet.profiles import shown
from ..logs import redact
from ..storage.database import DEVICES, VEHICLES
from ..storage.diagnose import explain, replica_set_problem
from ..storage.mongod import REPLICA_SET

OK, NEGATIVE, USAGE, TIMEOUT, NOT_FOUND, MONGO = 0, 1, 2, 3, 4, 5
CONNECT_TIMEOUT_MS = 5000
IMEI_HELP = "the tracker's IMEI (14 or 15 digits)"
# `add(name, help, **kw)`: a new verb's parser, with the shared options (--uri, --db, --json, ...).
AddVerb = Callable[..., argparse.ArgumentParser]


class CliError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def fail(code: int, message: str) -> NoReturn:
    raise CliError(code, message)


# --- output ---

def jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).isoformat()
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


def text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    if isinstance(value, (dict, list)):
        return json.dumps(jsonable(value), separators=(",", ":"))
    return str(value)


def console(file: Any = None) -> Console:
    out = file or sys.stdout
    # Piped or captured: never wrap or cut a row to a guessed width; a script reads whole rows.
    return Console(file=out, width=None if out.isatty() else 10_000, highlight=False, soft_wrap=False)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    """Rows as aligned columns (rich), returned as text: plain when piped, bold headers on a terminal."""
    grid = Table(*headers, box=box.SIMPLE_HEAD if sys.stdout.isatty() else None, pad_edge=False,
                 show_edge=False, header_style="bold", title=title, title_justify="left")
    for row in rows:
        grid.add_row(*(text(v) for v in row))
    out = console()
    with out.capture() as captured:
        out.print(grid)
    return "\n".join(line.rstrip() for line in captured.get().rstrip("\n").splitlines())


def emit(args: argparse.Namespace, document: Any, plain: str) -> None:
    print(json.dumps(jsonable(document)) if args.json else plain, flush=True)


# --- MongoDB ---

def settings_of(args: argparse.Namespace) -> Settings:
    cached = getattr(args, "settings", None)
    if cached is None:
        try:
            cached = args.settings = load_settings(args.env_file)
        except SettingsError as exc:
            fail(USAGE, str(exc))
    return cached


def connect(args: argparse.Namespace, timeout_ms: int = CONNECT_TIMEOUT_MS,
            socket_timeout_ms: int = 30_000) -> Database[dict[str, Any]]:
    settings = settings_of(args)
    embedded = not (args.uri or settings.MONGODB_URI)
    uri = args.uri or settings.MONGODB_URI or (
        f"mongodb://127.0.0.1:{settings.MONGOD_PORT}/?replicaSet={REPLICA_SET}&directConnection=true")
    db_name = args.db or settings.MONGODB_DB
    args.effective_uri = uri
    shown = redact_uri(uri)
    try:
        client: MongoClient[dict[str, Any]] = MongoClient(
            uri, tz_aware=True, appname="gv50-cli", serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms, socketTimeoutMS=socket_timeout_ms)
    except (ConfigurationError, ValueError) as exc:
        fail(USAGE, f"invalid MongoDB URI {shown}: {scrub(str(exc), uri)}")
    try:
        hello = client.admin.command("hello")
    except PyMongoError as exc:
        fail(MONGO, explain(uri, exc, embedded=embedded))
    problem = replica_set_problem(hello, shown or uri, ":".join(map(str, client.address or ("HOST", 27017))))
    if problem is not None:
        fail(MONGO, problem)
    return client[db_name]


def scrub(message: str, uri: str) -> str:
    """Drop the password from a driver message, in case it quotes the URI."""
    match = re.match(r"^[a-z+]+://[^:/@]*:([^@]*)@", uri)
    return message.replace(match[1], "***") if match and match[1] else message


def command_id(raw: str) -> ObjectId:
    try:
        return ObjectId(raw)
    except (InvalidId, TypeError):
        fail(USAGE, f"{raw!r} is not a command id (24 hex digits)")


def check_imei(imei: str) -> str:
    if not is_imei(imei):
        fail(USAGE, f"{imei!r} is not an IMEI (14 or 15 digits)")
    return imei


def known_imei(db: Database[dict[str, Any]], imei: str) -> bool:
    return (db[DEVICES].find_one({"_id": imei}, {"_id": 1}) is not None
            or db[VEHICLES].find_one({"_id": imei}, {"_id": 1}) is not None)


def command_view(doc: dict[str, Any]) -> dict[str, Any]:
    view = {"id": doc["_id"]}
    view.update((k, v) for k, v in doc.items() if k != "_id")
    if isinstance(doc.get("params"), dict) and doc["params"].get("password"):
        # set_apn's APN password (a profile's too): shown as *** and a fingerprint, never in full.
        view["params"] = {**doc["params"], "password": shown("bsi", "password", doc["params"]["password"])}
    params = doc.get("params")
    if doc.get("type") == "raw" and isinstance(params, dict) and isinstance(params.get("command"), str):
        # A raw line carries the device password (and an AT+GTBSI line the APN password): masked as in the log.
        view["params"] = {**params, "command": redact(params["command"])}
    return view


def note(message: str) -> None:
    """A hint for the person at the terminal; stdout stays what a script reads."""
    print(message, file=sys.stderr, flush=True)


# --- arguments ---

def positive(kind: type) -> Any:
    def convert(raw: str) -> Any:
        try:
            value = kind(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not a number") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be greater than 0, not {raw}")
        return value
    return convert


def not_negative(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {raw}")
    return value


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the layout of descriptions and epilogs (the command type list)."""


def duration(raw: str) -> timedelta:
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*", raw)
    if match is None:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a duration like 90s, 15m, 1h or 2d")
    return timedelta(seconds=float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]])


