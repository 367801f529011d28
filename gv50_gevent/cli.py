"""The operator's command line: queue commands for trackers and look at what the gateway wrote.

    python -m gv50_gevent.cli [--uri URI] [--db NAME] [--json] COMMAND ...

    send IMEI TYPE [--param k=v ...] [--params-json '{...}'] [--expires-in S] [--max-attempts N]
                   [--force] [--wait [--timeout S]]
    show COMMAND_ID
    commands IMEI [--limit N]
    cancel COMMAND_ID
    devices [--online] [--limit N]
    position IMEI
    device IMEI

Plain pymongo, no gevent. MongoDB comes from the gateway's own settings (MONGODB_URI, MONGODB_DB,
from the environment or `.env`); with MONGODB_URI unset, the embedded default on MONGOD_PORT.
`--json` prints one JSON document (ISO 8601 times, ids as strings).

Exit codes: 0 done; 1 a negative answer (command not acknowledged, nothing to cancel, no
position yet); 2 bad usage or invalid parameters; 3 `--wait` timed out; 4 unknown IMEI or
command; 5 MongoDB unreachable or failing.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Any, NoReturn

from bson import ObjectId
from bson.errors import InvalidId
from pydantic import ValidationError
from pymongo import DESCENDING, MongoClient, ReturnDocument
from pymongo.database import Database
from pymongo.errors import ConfigurationError, PyMongoError
from pymongo.write_concern import WriteConcern

from .config import Settings, redact_uri
from .protocol.commands import COMMAND_TYPES, validate_command
from .protocol.errors import CommandError
from .storage.database import COMMANDS, DEVICES, POSITIONS, VEHICLES
from .storage.mongod import REPLICA_SET

OK, NEGATIVE, USAGE, TIMEOUT, NOT_FOUND, MONGO = 0, 1, 2, 3, 4, 5
FINAL_STATUSES = ("acknowledged", "failed", "expired", "cancelled")
CONNECT_TIMEOUT_MS = 5000
IMEI_RE = re.compile(r"[0-9]{15}")
# Change streams see only majority-committed writes, and a w:1 insert also waits for the journal.
MAJORITY = WriteConcern(w="majority")


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


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(headers)] + [[text(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def emit(args: argparse.Namespace, document: Any, plain: str) -> None:
    print(json.dumps(jsonable(document)) if args.json else plain, flush=True)


# --- MongoDB ---

def connect(args: argparse.Namespace) -> Database[dict[str, Any]]:
    try:
        settings = Settings()
    except ValidationError as exc:
        fail(USAGE, f"invalid settings (environment or .env): {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}")
    uri = args.uri or settings.MONGODB_URI or (
        f"mongodb://127.0.0.1:{settings.MONGOD_PORT}/?replicaSet={REPLICA_SET}&directConnection=true")
    db_name = args.db or settings.MONGODB_DB
    args.effective_uri = uri
    shown = redact_uri(uri)
    try:
        client: MongoClient[dict[str, Any]] = MongoClient(
            uri, tz_aware=True, appname="gv50-cli", serverSelectionTimeoutMS=CONNECT_TIMEOUT_MS,
            connectTimeoutMS=CONNECT_TIMEOUT_MS, socketTimeoutMS=30_000)
    except (ConfigurationError, ValueError) as exc:
        fail(USAGE, f"invalid MongoDB URI {shown}: {scrub(str(exc), uri)}")
    try:
        client.admin.command("ping")
    except PyMongoError as exc:
        reason = re.split(r" \(configured timeouts|, Timeout: ", scrub(str(exc), uri))[0]
        fail(MONGO, f"cannot reach MongoDB at {shown} within {CONNECT_TIMEOUT_MS // 1000} s: {reason[:300]}")
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
    if not IMEI_RE.fullmatch(imei):
        fail(USAGE, f"{imei!r} is not an IMEI (15 digits)")
    return imei


def known_imei(db: Database[dict[str, Any]], imei: str) -> bool:
    return (db[DEVICES].find_one({"_id": imei}, {"_id": 1}) is not None
            or db[VEHICLES].find_one({"_id": imei}, {"_id": 1}) is not None)


def command_view(doc: dict[str, Any]) -> dict[str, Any]:
    view = {"id": doc["_id"]}
    view.update((k, v) for k, v in doc.items() if k != "_id")
    return view


# --- send ---

def parse_params(args: argparse.Namespace) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if args.params_json:
        try:
            loaded = json.loads(args.params_json)
        except json.JSONDecodeError as exc:
            fail(USAGE, f"--params-json is not JSON: {exc}")
        if not isinstance(loaded, dict):
            fail(USAGE, "--params-json must be a JSON object")
        params.update(loaded)
    for item in args.param or ():
        key, sep, raw = item.partition("=")
        if not sep or not key:
            fail(USAGE, f"--param {item!r}: expected key=value")
        # Numbers and true/false/null as JSON; anything else (e.g. "0123", host names) as text.
        try:
            value = json.loads(raw)
            if isinstance(value, (dict, list)):
                value = raw
        except json.JSONDecodeError:
            value = raw
        params[key] = value
    return params


def cmd_send(args: argparse.Namespace) -> int:
    imei = check_imei(args.imei)
    params = parse_params(args)
    try:
        validate_command(args.type, params)
    except CommandError as exc:
        fail(USAGE, f"invalid {args.type} command: {exc.field}: {exc.reason}")
    db = connect(args)
    if not args.force and not known_imei(db, imei):
        fail(NOT_FOUND, f"unknown IMEI {imei}: no vehicles or devices document (use --force to queue it anyway)")
    now = datetime.now(timezone.utc)
    doc: dict[str, Any] = {"imei": imei, "type": args.type, "params": params, "status": "pending",
                           "created_at": now, "attempts": 0, "history": [{"status": "pending", "at": now}]}
    if args.expires_in is not None:
        doc["expires_at"] = now + timedelta(seconds=args.expires_in)
    if args.max_attempts is not None:
        doc["max_attempts"] = args.max_attempts
    inserted = db.get_collection(COMMANDS, write_concern=MAJORITY).insert_one(doc).inserted_id
    if not args.wait:
        emit(args, command_view(doc), str(inserted))
        return OK
    if not args.json:
        print(inserted, flush=True)
    final = wait_final(db, inserted, args.timeout)
    if final is None:
        current = db[COMMANDS].find_one({"_id": inserted}) or doc
        if args.json:
            emit(args, command_view(current) | {"timed_out": True}, "")
        else:
            print(f"timed out after {args.timeout:g} s: command is {current.get('status')}", file=sys.stderr)
        return TIMEOUT
    emit(args, command_view(final), describe_final(final))
    return OK if final["status"] == "acknowledged" else NEGATIVE


def wait_final(db: Database[dict[str, Any]], oid: ObjectId, timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while True:
        doc = db[COMMANDS].find_one({"_id": oid})
        if doc is not None and doc.get("status") in FINAL_STATUSES:
            return doc
        if time.monotonic() >= deadline:
            return None
        time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


def describe_final(doc: dict[str, Any]) -> str:
    status = doc.get("status")
    if status == "acknowledged":
        return f"acknowledged at {text(doc.get('acknowledged_at'))}: {text(doc.get('ack'))}"
    return f"{status}: {text(doc.get('error'))}"


# --- show / commands / cancel ---

SHOW_FIELDS = ("imei", "type", "params", "status", "serial", "attempts", "max_attempts", "created_at", "sent_at",
               "acknowledged_at", "finished_at", "expires_at", "gateway_id", "error", "ack")


def cmd_show(args: argparse.Namespace) -> int:
    oid = command_id(args.command_id)
    doc = connect(args)[COMMANDS].find_one({"_id": oid})
    if doc is None:
        fail(NOT_FOUND, f"no command {oid}")
    lines = [f"{'id':<16} {oid}"]
    lines += [f"{name:<16} {text(doc.get(name))}" for name in SHOW_FIELDS]
    extra = sorted(set(doc) - set(SHOW_FIELDS) - {"_id", "history"})
    lines += [f"{name:<16} {text(doc.get(name))}" for name in extra]
    lines.append("history")
    lines += [f"  {text(h.get('at'))}  {h.get('status')}" + (f"  {h['error']}" if h.get("error") else "")
              for h in doc.get("history") or []]
    emit(args, command_view(doc), "\n".join(lines))
    return OK


def cmd_commands(args: argparse.Namespace) -> int:
    imei = check_imei(args.imei)
    db = connect(args)
    docs = list(db[COMMANDS].find({"imei": imei}).sort([("created_at", DESCENDING), ("_id", DESCENDING)])
                .limit(args.limit))
    if not docs and not known_imei(db, imei):
        fail(NOT_FOUND, f"unknown IMEI {imei}")
    rows = [(d["_id"], d.get("type"), d.get("status"), d.get("created_at"), d.get("attempts"), d.get("serial"),
             d.get("error")) for d in docs]
    plain = table(("ID", "TYPE", "STATUS", "CREATED", "ATTEMPTS", "SERIAL", "ERROR"), rows) if docs \
        else f"no commands for {imei}"
    emit(args, {"imei": imei, "commands": [command_view(d) for d in docs]}, plain)
    return OK


def cmd_cancel(args: argparse.Namespace) -> int:
    oid = command_id(args.command_id)
    db = connect(args)
    now = datetime.now(timezone.utc)
    doc = db.get_collection(COMMANDS, write_concern=MAJORITY).find_one_and_update(
        {"_id": oid, "status": "pending"},
        {"$set": {"status": "cancelled", "finished_at": now}, "$push": {"history": {"status": "cancelled", "at": now}}},
        return_document=ReturnDocument.AFTER)
    if doc is None:
        current = db[COMMANDS].find_one({"_id": oid}, {"status": 1})
        if current is None:
            fail(NOT_FOUND, f"no command {oid}")
        fail(NEGATIVE, f"cannot cancel {oid}: it is {current.get('status')}, not pending")
    emit(args, command_view(doc), f"cancelled {oid}")
    return OK


# --- devices / position ---

def cmd_devices(args: argparse.Namespace) -> int:
    db = connect(args)
    query = {"online": True} if args.online else {}
    docs = list(db[DEVICES].find(query).sort("_id", 1).limit(args.limit))
    fields = ("online", "gateway_id", "last_seen_at", "ignition", "blocked")
    view = [{"imei": d["_id"], **{f: d.get(f) for f in fields}} for d in docs]
    rows = [(v["imei"], "online" if v["online"] else "offline", v["gateway_id"], v["last_seen_at"],
             None if v["ignition"] is None else ("on" if v["ignition"] else "off"), v["blocked"]) for v in view]
    plain = table(("IMEI", "STATUS", "GATEWAY", "LAST SEEN", "IGNITION", "BLOCKED"), rows) if docs \
        else ("no devices online" if args.online else "no devices")
    emit(args, {"devices": view}, plain)
    return OK


def cmd_position(args: argparse.Namespace) -> int:
    imei = check_imei(args.imei)
    db = connect(args)
    device = db[DEVICES].find_one({"_id": imei}, {"last_position": 1})
    position = (device or {}).get("last_position")
    if position is None:
        position = db[POSITIONS].find_one({"imei": imei, "fix_time": {"$ne": None}}, sort=[("fix_time", DESCENDING)])
    if position is None:
        if device is None and not known_imei(db, imei):
            fail(NOT_FOUND, f"unknown IMEI {imei}")
        emit(args, {"imei": imei, "position": None}, f"no position recorded yet for {imei}")
        return NEGATIVE
    lon, lat = ((position.get("location") or {}).get("coordinates") or [None, None])[:2]
    view = {"time": position.get("fix_time"), "lat": lat, "lon": lon, "speed_kmh": position.get("speed_kmh"),
            "valid": position.get("valid"), "azimuth": position.get("azimuth"),
            "altitude_m": position.get("altitude_m"), "gps_accuracy": position.get("gps_accuracy"),
            "report": position.get("report"), "received_at": position.get("received_at")}
    plain = "\n".join([f"{'imei':<12} {imei}"] + [f"{k:<12} {text(v)}" for k, v in view.items()])
    emit(args, {"imei": imei, "position": view}, plain)
    return OK


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


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--uri", default=argparse.SUPPRESS, help="MongoDB URI (default: MONGODB_URI or the embedded default)")
    common.add_argument("--db", default=argparse.SUPPRESS, help="database name (default: MONGODB_DB)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print one JSON document")
    parser = argparse.ArgumentParser(prog="python -m gv50_gevent.cli", description=__doc__.split("\n\n")[0],
                                     parents=[common])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("send", parents=[common], help="queue a command for a tracker")
    p.add_argument("imei")
    p.add_argument("type", choices=sorted(COMMAND_TYPES), metavar="TYPE", help=", ".join(sorted(COMMAND_TYPES)))
    p.add_argument("--param", action="append", metavar="KEY=VALUE", help="a parameter (repeatable)")
    p.add_argument("--params-json", metavar="JSON", help="parameters as a JSON object")
    p.add_argument("--expires-in", type=positive(float), metavar="S", help="expire if not delivered within S seconds")
    p.add_argument("--max-attempts", type=positive(int), metavar="N", help="sends before the command fails")
    p.add_argument("--force", action="store_true", help="queue it even if the IMEI is unknown")
    p.add_argument("--wait", action="store_true", help="wait until the command is final; exit 0 only if acknowledged")
    p.add_argument("--timeout", type=positive(float), default=60.0, metavar="S", help="for --wait (default 60)")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("show", parents=[common], help="one command, with its history")
    p.add_argument("command_id")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("commands", parents=[common], help="a tracker's commands, newest first")
    p.add_argument("imei")
    p.add_argument("--limit", type=positive(int), default=20)
    p.set_defaults(func=cmd_commands)

    p = sub.add_parser("cancel", parents=[common], help="cancel a command that is still pending")
    p.add_argument("command_id")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("devices", parents=[common], help="trackers and their live state")
    p.add_argument("--online", action="store_true", help="only the connected ones")
    p.add_argument("--limit", type=positive(int), default=1000)
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("position", parents=[common], help="a tracker's last position")
    p.add_argument("imei")
    p.set_defaults(func=cmd_position)
    from .cli_device import register
    register(sub, common, sys.modules[__name__])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name, default in (("uri", None), ("db", None), ("json", False)):
        if not hasattr(args, name):
            setattr(args, name, default)
    try:
        return int(args.func(args))
    except CliError as exc:
        if args.json:
            print(json.dumps({"error": str(exc), "exit_code": exc.code}), flush=True)
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except PyMongoError as exc:
        print(f"error: MongoDB failed: {scrub(str(exc), getattr(args, 'effective_uri', ''))[:300]}", file=sys.stderr)
        return MONGO
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
