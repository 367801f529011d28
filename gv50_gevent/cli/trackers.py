"""Verbs that look at trackers and their traffic: `devices`, `position`, `messages`, `tail`."""

from __future__ import annotations

import argparse
import json
import re
import signal
import time
from datetime import datetime, timezone
from typing import Any

from pymongo import DESCENDING

from ..logs import redact
from ..storage.database import DEVICES, MESSAGES, POSITIONS
from .base import (IMEI_HELP, NEGATIVE, NOT_FOUND, OK, AddVerb, check_imei, connect, duration, emit, fail,
                   jsonable, known_imei, not_negative, note, positive, table, text)


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
            "raw": redact(str(doc.get("raw") or "")),
            "error": redact(doc["error"]) if isinstance(doc.get("error"), str) else doc.get("error"),
            "remote_addr": doc.get("remote_addr"), "gateway_id": doc.get("gateway_id")}


def frame_views(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """A frame, and the reply recorded on it (`reply`, see docs/archive.md) as the `out` line it was
    before replies were recorded on their frames."""
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
    # Ctrl-C is how a tail ends. It is taken as a request, seen within half a second (the change
    # stream's wait), not as an exception thrown into the middle of a MongoDB call: a tail
    # interrupted inside one was seen to hang for more than 30 s while closing its cursor.
    stop: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: stop.append(signum))
    try:
        with db[MESSAGES].watch([{"$match": match}], max_await_time_ms=500) as stream:
            while not stop and (deadline is None or time.monotonic() < deadline):
                change = stream.try_next()
                if change is None:
                    continue
                for view in frame_views(change["fullDocument"]):
                    print(json.dumps(jsonable(view)) if args.json else frame_line(view, not args.no_raw), flush=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    return OK


def register(add: AddVerb) -> None:
    p = add("devices", "trackers and their live state, a page at a time")
    p.add_argument("--online", action="store_true", help="only the connected ones (default: all)")
    p.add_argument("--skip", type=not_negative, default=0, help="rows to skip: the next page (default: %(default)s)")
    p.add_argument("--limit", type=positive(int), default=100, help="rows per page (default: %(default)s)")
    p.set_defaults(func=cmd_devices)

    p = add("position", "a tracker's last position")
    p.add_argument("imei", help=IMEI_HELP)
    p.set_defaults(func=cmd_position)

    p = add("messages", "what a tracker sent and was sent (the raw archive), oldest first")
    p.add_argument("imei", help=IMEI_HELP)
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
