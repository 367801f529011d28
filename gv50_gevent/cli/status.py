"""Verbs about the gateways themselves: `status`."""

from __future__ import annotations

import argparse
from datetime import datetime, timedelta, timezone
from typing import Any

from ..storage.database import GATEWAY_STATE
from .base import NEGATIVE, OK, AddVerb, connect, emit, positive, settings_of, table, text


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
    ("frames_total", "frames since start", lambda v: _breakdown(v, total=True)),
    ("stored_in", "stored since start", lambda v: _breakdown(v, total=True)),
    ("backpressure_total_s", "backpressure since start (s)",
     lambda v: f"{v:,.1f}" if isinstance(v, (int, float)) else text(v)),
    ("command_transitions_total", "command status changes since start", _breakdown),
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
