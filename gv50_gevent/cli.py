"""The operator's command line (`gv50ctl`, or `python -m gv50_gevent.cli`): queue and cancel
commands for trackers, and look at what the gateways wrote and are doing.

    gv50ctl [--uri URI] [--db NAME] [--env-file PATH] [--json] COMMAND ...

    send IMEI TYPE [--param k=v ...] [--params-json '{...}'] [--expires-in S] [--max-attempts N]
                   [--force] [--wait [--timeout S]]
    show COMMAND_ID
    commands IMEI [--limit N]
    cancel COMMAND_ID
    devices [--online] [--skip N] [--limit N]
    position IMEI
    messages IMEI [--since 1h] [--limit N]
    tail [IMEI ...]
    status
    device IMEI

Plain pymongo, no gevent. MongoDB comes from the gateway's own settings (MONGODB_URI, MONGODB_DB,
from the environment or `.env` in the current folder, or --env-file); with MONGODB_URI unset, the
embedded default on MONGOD_PORT. `--json` prints JSON (ISO 8601 times, ids as strings).

Exit codes: 0 done; 1 a negative answer (command not acknowledged, nothing to cancel, no
position yet, no gateway running); 2 bad usage, settings or parameters; 3 `--wait` timed out;
4 unknown IMEI or command; 5 MongoDB unreachable or failing.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any, NoReturn, get_args, get_origin

from bson import ObjectId
from bson.errors import InvalidId
from pymongo import DESCENDING, MongoClient, ReturnDocument
from pymongo.database import Database
from pymongo.errors import ConfigurationError, PyMongoError
from rich import box
from rich.console import Console
from rich.table import Table
from pymongo.write_concern import WriteConcern

from .config import Settings, SettingsError, load_settings, redact_uri
from .logs import redact
from .protocol.commands import COMMAND_TYPES, validate_command
from .protocol.command_params import FRI_NEEDS, SetReportInterval
from .protocol.commands import COMMANDS as COMMAND_SPECS
from .protocol.errors import CommandError
from .storage.database import COMMANDS, DEVICES, GATEWAY_STATE, MESSAGES, POSITIONS, VEHICLES
from .storage.diagnose import explain, replica_set_problem
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


def connect(args: argparse.Namespace) -> Database[dict[str, Any]]:
    settings = settings_of(args)
    embedded = not (args.uri or settings.MONGODB_URI)
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


def note(message: str) -> None:
    """A hint for the person at the terminal; stdout stays what a script reads."""
    print(message, file=sys.stderr, flush=True)


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
        fail(USAGE, f"invalid {args.type} command: {exc.field}: {exc.reason} (see: gv50ctl send --help)")
    db = connect(args)
    if not args.force and not known_imei(db, imei):
        fail(NOT_FOUND, f"unknown IMEI {imei}: no vehicles or devices document (use --force to queue it anyway)")
    now = datetime.now(timezone.utc)
    oid = ObjectId()
    doc: dict[str, Any] = {"_id": oid, "imei": imei, "type": args.type, "params": params, "status": "pending",
                           "created_at": now, "attempts": 0, "history": [{"status": "pending", "at": now}]}
    if args.expires_in is not None:
        doc["expires_at"] = now + timedelta(seconds=args.expires_in)
    if args.max_attempts is not None:
        doc["max_attempts"] = args.max_attempts
    if not args.wait:
        db.get_collection(COMMANDS, write_concern=MAJORITY).insert_one(doc)
        emit(args, command_view(doc), str(oid))
        if not args.json:
            note(f"queued {args.type} for {imei}; follow it with: gv50ctl show {oid} (or send with --wait)")
        return OK
    # Watch before inserting, so not one status change is missed.
    with db[COMMANDS].watch([{"$match": {"documentKey._id": oid}}], full_document="updateLookup",
                            max_await_time_ms=200) as stream:
        db.get_collection(COMMANDS, write_concern=MAJORITY).insert_one(doc)
        if not args.json:
            print(oid, flush=True)
            print(progress_line(doc), flush=True)
        final = follow(args, stream, doc, args.timeout)
    if final is None:
        current = db[COMMANDS].find_one({"_id": oid}) or doc
        if args.json:
            emit(args, command_view(current) | {"timed_out": True}, "")
        else:
            note(f"timed out after {args.timeout:g} s: command is {current.get('status')}. The gateway keeps "
                 f"trying until it is acknowledged, failed or expired; follow it with: gv50ctl show {oid}, "
                 f"or take it back with: gv50ctl cancel {oid}")
        return TIMEOUT
    emit(args, command_view(final), describe_final(final))
    return OK if final["status"] == "acknowledged" else NEGATIVE


def follow(args: argparse.Namespace, stream: Any, doc: dict[str, Any], timeout: float) -> dict[str, Any] | None:
    """Print each change of the command as it happens; the final document, or None at the timeout."""
    deadline = time.monotonic() + timeout
    seen = (doc.get("status"), doc.get("attempts"))
    while time.monotonic() < deadline:
        change = stream.try_next()
        current = (change or {}).get("fullDocument")
        if current is None:
            continue
        state = (current.get("status"), current.get("attempts"))
        if state != seen and current.get("status") not in FINAL_STATUSES and not args.json:
            print(progress_line(current), flush=True)
        seen = state
        if current.get("status") in FINAL_STATUSES:
            return current
    return None


def progress_line(doc: dict[str, Any]) -> str:
    at = datetime.now(timezone.utc).strftime("%H:%M:%S")
    status = doc.get("status")
    if status == "sent":
        return (f"{at}  sent to the tracker (attempt {doc.get('attempts')}, serial {doc.get('serial')}), "
                f"waiting for its ACK")
    if status == "pending":
        return f"{at}  pending: queued; a gateway sends it when the tracker is connected"
    return f"{at}  {status}"


def describe_final(doc: dict[str, Any]) -> str:
    status = doc.get("status")
    if status == "acknowledged":
        return f"acknowledged at {text(doc.get('acknowledged_at'))}: {text(doc.get('ack'))}"
    return f"{status}: {text(doc.get('error'))}"


# --- show / commands / cancel ---

SHOW_FIELDS = ("imei", "type", "params", "status", "serial", "attempts", "max_attempts", "created_at", "sent_at",
               "acknowledged_at", "finished_at", "expires_at", "gateway_id", "error", "ack", "late_ack")


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


# `null`: inserted by the operator and not yet taken up by a gateway.
CANCELLABLE = ("pending", "sent", None)


def cmd_cancel(args: argparse.Namespace) -> int:
    oid = command_id(args.command_id)
    db = connect(args)
    now = datetime.now(timezone.utc)
    before = db[COMMANDS].find_one({"_id": oid}, {"status": 1})
    # One compare-and-set on the status, like the gateway's own transitions: a gateway claiming the
    # command for a (re)send at the same moment filters on the status it saw, so after this write
    # its claim matches nothing and the command is never sent again.
    doc = db.get_collection(COMMANDS, write_concern=MAJORITY).find_one_and_update(
        {"_id": oid, "status": {"$in": list(CANCELLABLE)}},
        {"$set": {"status": "cancelled", "finished_at": now, "cancelled_at": now},
         "$push": {"history": {"status": "cancelled", "at": now}}},
        return_document=ReturnDocument.AFTER)
    if doc is None:
        current = db[COMMANDS].find_one({"_id": oid}, {"status": 1})
        if current is None:
            fail(NOT_FOUND, f"no command {oid}")
        fail(NEGATIVE, f"cannot cancel {oid}: it is {current.get('status')}, not pending or sent")
    was = (before or {}).get("status")
    emit(args, command_view(doc), f"cancelled {oid}")
    if was == "sent" and not args.json:
        note("it had been sent already: the tracker may have acted on it. It will not be sent again; "
             "if the tracker's ACK still arrives, it is recorded as late_ack (gv50ctl show).")
    return OK


# --- devices / position / messages ---

def cmd_devices(args: argparse.Namespace) -> int:
    db = connect(args)
    query = {"online": True} if args.online else {}
    total = db[DEVICES].count_documents(query)
    docs = list(db[DEVICES].find(query).sort("_id", 1).skip(args.skip).limit(args.limit))
    fields = ("online", "gateway_id", "last_seen_at", "ignition", "blocked")
    view = [{"imei": d["_id"], **{f: d.get(f) for f in fields}} for d in docs]
    rows = [(v["imei"], "online" if v["online"] else "offline", v["gateway_id"], v["last_seen_at"],
             None if v["ignition"] is None else ("on" if v["ignition"] else "off"), v["blocked"]) for v in view]
    what = "devices online" if args.online else "devices"
    if docs:
        plain = table(("IMEI", "STATUS", "GATEWAY", "LAST SEEN", "IGNITION", "BLOCKED"), rows)
    else:
        plain = f"no {what}" if total == 0 else f"no {what} after the first {total:,} (--skip {args.skip})"
    emit(args, {"devices": view, "total": total, "skip": args.skip, "limit": args.limit}, plain)
    if not args.json and total:
        first, last = args.skip + 1, args.skip + len(docs)
        more = f"; next page: --skip {last}" if last < total else ""
        note(f"{what} {first:,}-{last:,} of {total:,}{more}" if docs else f"{total:,} {what} in all")
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


_FRAME_TYPE = re.compile(r"^(?:\+(?:RESP|BUFF|ACK|SACK):)?(GT[A-Z]{3})|^AT\+(GT[A-Z]{3})=", re.IGNORECASE)
_HEX = re.compile(r"[0-9a-f]+")


def frame_type(raw: Any) -> str:
    """`GTFRI` from `+RESP:GTFRI,...`, `GTOUT` from `AT+GTOUT=...`, `SACK` for a bare +SACK."""
    if not isinstance(raw, str) or not raw:
        return "-"
    match = _FRAME_TYPE.match(raw)
    if match:
        return (match[1] or match[2]).upper()
    if raw.startswith("+SACK"):
        return "SACK"
    if _HEX.fullmatch(raw):
        return "HEX"
    return "?"


def frame_view(doc: dict[str, Any]) -> dict[str, Any]:
    return {"at": doc.get("at"), "imei": doc.get("imei"), "direction": doc.get("direction"),
            "type": frame_type(doc.get("raw")), "kind": doc.get("kind"), "status": doc.get("status"),
            "raw": redact(str(doc.get("raw") or "")), "error": doc.get("error"),
            "remote_addr": doc.get("remote_addr"), "gateway_id": doc.get("gateway_id")}


def frame_views(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """A frame, and the reply recorded on it (`reply`) as the `out` line it was before."""
    view = frame_view(doc)
    reply = doc.get("reply")
    if not isinstance(reply, str):
        return [view]
    return [view, {**view, "direction": "out", "type": frame_type(reply), "kind": "sack", "status": "ok",
                   "raw": reply, "error": None}]


def frame_line(view: dict[str, Any], raw: bool) -> str:
    at = view["at"].astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] \
        if isinstance(view["at"], datetime) else text(view["at"])
    arrow = {"in": "in ", "out": "out"}.get(view["direction"] or "", "?  ")
    line = (f"{at}  {text(view['imei']):<15}  {arrow}  {view['type']:<5}  {text(view['kind']):<9}  "
            f"{text(view['status'])}")
    if view.get("error"):
        line += f"  ({view['error']})"
    if raw:
        line += f"  {view['raw']}"
    return line


def duration(raw: str) -> timedelta:
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*", raw)
    if match is None:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a duration like 90s, 15m, 1h or 2d")
    return timedelta(seconds=float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]])


def cmd_messages(args: argparse.Namespace) -> int:
    imei = check_imei(args.imei)
    db = connect(args)
    since = datetime.now(timezone.utc) - args.since
    query = {"imei": imei, "at": {"$gte": since}}
    total = db[MESSAGES].count_documents(query)
    docs = list(db[MESSAGES].find(query).sort("at", DESCENDING).limit(args.limit))[::-1]  # the newest, in order
    if not docs and not known_imei(db, imei):
        fail(NOT_FOUND, f"unknown IMEI {imei}")
    views = [v for d in docs for v in frame_views(d)]
    plain = "\n".join(frame_line(v, not args.no_raw) for v in views) if views \
        else f"no messages from or to {imei} since {text(since)}"
    emit(args, {"imei": imei, "since": since, "total": total, "messages": views}, plain)
    if not args.json and total > len(docs):
        note(f"the last {len(docs):,} of {total:,} frames since {text(since)} (more: --limit)")
    return OK


def cmd_tail(args: argparse.Namespace) -> int:
    imeis = [check_imei(i) for i in args.imeis]
    db = connect(args)
    match: dict[str, Any] = {"operationType": "insert"}
    if imeis:
        match["fullDocument.imei"] = {"$in": imeis}
    deadline = time.monotonic() + args.duration if args.duration else None
    if not args.json:
        note(f"following {'the frames of ' + ', '.join(imeis) if imeis else 'every frame'} live "
             f"(Ctrl-C to stop)")
    try:
        with db[MESSAGES].watch([{"$match": match}], max_await_time_ms=500) as stream:
            while deadline is None or time.monotonic() < deadline:
                change = stream.try_next()
                if change is None:
                    continue
                for view in frame_views(change["fullDocument"]):
                    print(json.dumps(jsonable(view)) if args.json else frame_line(view, not args.no_raw), flush=True)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how a tail ends
    return OK


# --- status ---

def _ms(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{value:,.1f} ms"


def _ago(value: Any, now: datetime) -> str:
    if not isinstance(value, datetime):
        return "-"
    return f"{text(value)} ({max(0.0, (now - value).total_seconds()):.0f} s ago)"


def _breakdown(value: Any, total: bool = False) -> str:
    """`tcp 9500, udp 12`; with `total`, the sum first (only where the parts add up, e.g. frames)."""
    if not isinstance(value, dict):
        return text(value)
    if not value:
        return "0"
    parts = ", ".join(f"{k} {_count(v)}" for k, v in sorted(value.items()))
    if not total:
        return parts
    return f"{sum(v for v in value.values() if isinstance(v, (int, float))):,}: {parts}"


def _count(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else text(value)


STATUS_ROWS: tuple[tuple[str, str, Any], ...] = (
    ("connections", "trackers connected", _breakdown),
    ("last_minute", "frames in the last minute", lambda v: _breakdown(v, total=True)),
    ("stored", "stored", _count),
    ("duplicates", "duplicates", _count),
    ("invalid", "invalid frames", _count),
    ("warnings", "values with warnings", _count),
    ("write_queue", "write queue (documents)", _count),
    ("backpressure_s", "backpressure (s)", lambda v: f"{v:,.1f}" if isinstance(v, (int, float)) else text(v)),
    ("commands", "commands", _breakdown),
)


def status_rows(doc: dict[str, Any], now: datetime) -> list[tuple[str, str]]:
    found = doc.get("stats")
    stats: dict[str, Any] = found if isinstance(found, dict) else {}
    rows = [("alive", _ago(doc.get("alive_at"), now)), ("figures from", _ago(stats.get("at"), now))]
    for key, label, show in STATUS_ROWS:
        rows.append((label, show(stats[key]) if key in stats else "-"))
    for key, label in (("sack_latency_ms", "SACK latency"), ("mongo_write_ms", "MongoDB write time")):
        figure = stats.get(key)
        value: dict[str, Any] = figure if isinstance(figure, dict) else {}
        rows.append((label, f"p50 {_ms(value.get('p50'))}, p99 {_ms(value.get('p99'))}" if value else "-"))
    known = {"at", "sack_latency_ms", "mongo_write_ms"} | {key for key, _, _ in STATUS_ROWS}
    rows += [(key, text(stats[key])) for key in sorted(stats) if key not in known]
    return rows


def cmd_status(args: argparse.Namespace) -> int:
    db = connect(args)
    now = datetime.now(timezone.utc)
    dead_after = settings_of(args).GATEWAY_DEAD_AFTER_S
    query: dict[str, Any] = {"_id": {"$regex": "^gateway:"}}
    if not args.all:
        query["alive_at"] = {"$gte": now - timedelta(seconds=dead_after)}
    docs = list(db[GATEWAY_STATE].find(query).sort("_id", 1).limit(args.limit))
    views = [{"gateway_id": d.get("gateway_id") or str(d["_id"]).removeprefix("gateway:"),
              "alive_at": d.get("alive_at"), "stats": d.get("stats")} for d in docs]
    if not docs:
        emit(args, {"gateways": []}, f"no gateway is running: none has said it is alive in the last {dead_after:g} s "
                                     f"(GATEWAY_DEAD_AFTER_S); --all shows the stale ones")
        return NEGATIVE
    per_gateway = [status_rows(d, now) for d in docs]
    labels = [label for label, _ in per_gateway[0]]
    for rows in per_gateway[1:]:
        labels += [label for label, _ in rows if label not in labels]
    columns = [dict(rows) for rows in per_gateway]
    plain = table(("", *(str(v["gateway_id"]) for v in views)), [(label, *(c.get(label, "-") for c in columns))
                                                            for label in labels])
    emit(args, {"gateways": views}, plain)
    return OK


# --- help for `send`, from the command tables ---

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


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--uri", default=argparse.SUPPRESS,
                        help="MongoDB URI (default: MONGODB_URI, else the embedded MongoDB on MONGOD_PORT)")
    common.add_argument("--db", default=argparse.SUPPRESS, help="database name (default: MONGODB_DB, gv50)")
    common.add_argument("--env-file", default=argparse.SUPPRESS, metavar="PATH",
                        help="settings file (default: .env in the current folder, if there is one)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON instead of text (default: text)")
    parser = argparse.ArgumentParser(prog="gv50ctl", description=__doc__.split("\n\n")[0], parents=[common],
                                     formatter_class=HelpFormatter,
                                     epilog="Run `gv50ctl COMMAND --help` for the options of one command.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=help_, description=help_[:1].upper() + help_[1:] + ".",
                              formatter_class=HelpFormatter, **kw)

    p = add("send", "queue a command for a tracker", epilog=send_epilog())
    p.add_argument("imei", help="the tracker's IMEI (15 digits)")
    p.add_argument("type", choices=sorted(COMMAND_TYPES), metavar="TYPE",
                   help="command type: " + ", ".join(sorted(COMMAND_TYPES)) + " (listed below)")
    p.add_argument("--param", action="append", metavar="KEY=VALUE",
                   help="a parameter, repeat for more; numbers and true/false are read as such (default: none)")
    p.add_argument("--params-json", metavar="JSON", help="parameters as one JSON object (default: none)")
    p.add_argument("--expires-in", type=positive(float), metavar="S",
                   help="give up if not delivered within S seconds (default: COMMAND_TTL_S, one day)")
    p.add_argument("--max-attempts", type=positive(int), metavar="N",
                   help="sends before the command fails (default: COMMAND_MAX_ATTEMPTS, 3)")
    p.add_argument("--force", action="store_true", help="queue it even if the IMEI is unknown (default: off)")
    p.add_argument("--wait", action="store_true",
                   help="show each status change until the command is final; exit 0 only if acknowledged "
                        "(default: off, print the id and return)")
    p.add_argument("--timeout", type=positive(float), default=60.0, metavar="S",
                   help="with --wait: stop waiting after S seconds; the gateway keeps trying (default: %(default)g)")
    p.set_defaults(func=cmd_send)

    p = add("show", "one command, with its history")
    p.add_argument("command_id", help="the id that send printed (24 hex digits)")
    p.set_defaults(func=cmd_show)

    p = add("commands", "a tracker's commands, newest first")
    p.add_argument("imei", help="the tracker's IMEI (15 digits)")
    p.add_argument("--limit", type=positive(int), default=20, help="rows at most (default: %(default)s)")
    p.set_defaults(func=cmd_commands)

    p = add("cancel", "take back a command that is pending or already sent")
    p.add_argument("command_id", help="the id that send printed (24 hex digits)")
    p.set_defaults(func=cmd_cancel)

    p = add("devices", "trackers and their live state, a page at a time")
    p.add_argument("--online", action="store_true", help="only the connected ones (default: all)")
    p.add_argument("--skip", type=not_negative, default=0, help="rows to skip: the next page (default: %(default)s)")
    p.add_argument("--limit", type=positive(int), default=100, help="rows per page (default: %(default)s)")
    p.set_defaults(func=cmd_devices)

    p = add("position", "a tracker's last position")
    p.add_argument("imei", help="the tracker's IMEI (15 digits)")
    p.set_defaults(func=cmd_position)

    p = add("messages", "what a tracker sent and was sent (the raw archive), oldest first")
    p.add_argument("imei", help="the tracker's IMEI (15 digits)")
    p.add_argument("--since", type=duration, default=duration("1h"), metavar="AGE",
                   help="how far back: 90s, 15m, 1h, 2d (default: 1h)")
    p.add_argument("--limit", type=positive(int), default=200, help="the newest frames at most (default: %(default)s)")
    p.add_argument("--no-raw", action="store_true", help="leave out the frame's text (default: shown)")
    p.set_defaults(func=cmd_messages)

    p = add("tail", "follow the frames in and out live, one line each (Ctrl-C stops)")
    p.add_argument("imeis", nargs="*", metavar="IMEI", help="only these trackers (default: all)")
    p.add_argument("--duration", type=positive(float), metavar="S", default=None,
                   help="stop after S seconds (default: until Ctrl-C)")
    p.add_argument("--no-raw", action="store_true", help="leave out the frame's text (default: shown)")
    p.set_defaults(func=cmd_tail)

    p = add("status", "every running gateway's figures (written every 10 s)")
    p.add_argument("--all", action="store_true",
                   help="also gateways that stopped saying they are alive (default: running ones only)")
    p.add_argument("--limit", type=positive(int), default=50, help="gateways at most (default: %(default)s)")
    p.set_defaults(func=cmd_status)

    from .cli_device import register
    register(sub, common, sys.modules[__name__])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name, default in (("uri", None), ("db", None), ("json", False), ("env_file", None)):
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
