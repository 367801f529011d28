"""Verbs about the gateways themselves: `status` (their figures) and `health` (one gateway, for
probes: supervisord, systemd, HAProxy's external-check, a container orchestrator)."""

from __future__ import annotations

import argparse
import socket
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from pymongo.errors import PyMongoError
from pymongo.write_concern import WriteConcern

from ..storage.database import GATEWAY_STATE
from .base import MONGO, NEGATIVE, OK, USAGE, AddVerb, CliError, connect, emit, fail, positive, settings_of, table, text


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
    ("frames_total", "since start: frames", lambda v: _breakdown(v, total=True)),
    ("stored_in", "since start: stored", lambda v: _breakdown(v, total=True)),
    ("backpressure_total_s", "since start: backpressure (s)",
     lambda v: f"{v:,.1f}" if isinstance(v, (int, float)) else text(v)),
    ("command_transitions_total", "since start: command status changes", _breakdown),
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


def register(add: AddVerb) -> None:
    p = add("status", "every running gateway's figures (written every 10 s)")
    p.add_argument("--all", action="store_true",
                   help="also gateways that stopped saying they are alive (default: running ones only)")
    p.add_argument("--limit", type=positive(int), default=50, help="gateways at most (default: %(default)s)")
    p.set_defaults(func=cmd_status)

    p = add("health", "exit 0 only when one gateway is alive, MongoDB confirms writes and the port takes "
                      "connections; else print which failed")
    p.add_argument("--gateway-id", metavar="ID", help="the gateway to check (default: GATEWAY_ID of the settings)")
    p.add_argument("--max-age", type=positive(float), default=30.0, metavar="S",
                   help="its gateway_state must be younger than S seconds; it is written every "
                        "GATEWAY_ALIVE_INTERVAL_S (default: %(default)g)")
    p.add_argument("--listener", metavar="HOST:PORT",
                   help="where to try a connection (default: GATEWAY_HOST:GATEWAY_PORT; 0.0.0.0 as 127.0.0.1)")
    p.add_argument("--timeout", type=positive(float), default=5.0, metavar="S",
                   help="each check gives up after S seconds (default: %(default)g)")
    p.set_defaults(func=cmd_health)


# gateway_state document the health check writes, one per gateway checked (the same one each
# time); removed again when that gateway has no record, so probes with a wrong id leave nothing.
HEALTH_ID = "health:"


def cmd_health(args: argparse.Namespace) -> int:
    """Three checks in order; the first that fails is the one line printed (exit 1, or 5 for MongoDB)."""
    settings = settings_of(args)
    gateway_id = args.gateway_id or settings.GATEWAY_ID
    timeout_ms = int(args.timeout * 1000)
    try:
        db = connect(args, timeout_ms, timeout_ms)
    except CliError as exc:
        fail(exc.code, "MongoDB is not reachable: " + " ".join(str(exc).split()))
    now = datetime.now(timezone.utc)
    try:
        state = db[GATEWAY_STATE].find_one({"_id": f"gateway:{gateway_id}"}, {"alive_at": 1})
        started = time.monotonic()
        # The gateway's own write concern for a SACK: majority and journal, bounded by wtimeout.
        confirmed = WriteConcern(w="majority", j=True, wtimeout=timeout_ms)
        db.get_collection(GATEWAY_STATE, write_concern=confirmed).update_one(
            {"_id": HEALTH_ID + gateway_id}, {"$set": {"checked_at": now}}, upsert=True)
        write_ms = (time.monotonic() - started) * 1000
    except PyMongoError as exc:
        fail(MONGO, "MongoDB did not confirm a write: " + " ".join(str(exc).split(" (configured timeouts")[0].split()))
    alive_at = (state or {}).get("alive_at")
    if not isinstance(alive_at, datetime):
        try:
            db[GATEWAY_STATE].delete_one({"_id": HEALTH_ID + gateway_id})
        except PyMongoError:
            pass  # MongoDB just confirmed a write; a leftover document is harmless
        fail(NEGATIVE, f"gateway {gateway_id} is not running: it has no gateway_state (is the id right? "
                       f"gv50ctl status --all lists them)")
    age = (now - alive_at).total_seconds()
    if age > args.max_age:
        fail(NEGATIVE, f"gateway {gateway_id} is stale: it last said it was alive {age:.0f} s ago "
                       f"(--max-age {args.max_age:g})")
    host, port = listener_of(args.listener, settings.GATEWAY_HOST, settings.GATEWAY_PORT)
    try:
        socket.create_connection((host, port), timeout=args.timeout).close()
    except OSError as exc:
        fail(NEGATIVE, f"gateway {gateway_id} does not take connections on {host}:{port}: "
                       f"{exc.strerror or type(exc).__name__}")
    emit(args, {"healthy": True, "gateway_id": gateway_id, "age_s": round(age, 1), "write_ms": round(write_ms, 1),
                "listener": f"{host}:{port}"},
         f"healthy: gateway {gateway_id} alive {age:.0f} s ago, MongoDB confirmed a majority write in "
         f"{write_ms:.0f} ms, {host}:{port} takes connections")
    return OK


def listener_of(given: str | None, host: str, port: int) -> tuple[str, int]:
    if given:
        host, sep, raw = given.rpartition(":")
        if not sep or not raw.isdigit():
            fail(USAGE, f"--listener {given!r}: expected HOST:PORT")
        port = int(raw)
    return ("127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host), port
