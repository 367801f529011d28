"""Verbs that queue, follow and take back commands: `send`, `show`, `commands`, `cancel`.

Every write goes through `commands.lifecycle`, the functions the gateway's own command room uses."""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from typing import Any

from bson import ObjectId
from pymongo import DESCENDING

from ..commands.lifecycle import FINAL_STATUSES, cancel_command, expires_in, insert_command, new_command
from ..protocol.commands import COMMAND_TYPES, validate_command
from ..protocol.errors import CommandError
from ..storage.database import COMMANDS
from .base import (IMEI_HELP, NEGATIVE, NOT_FOUND, OK, TIMEOUT, USAGE, AddVerb, check_imei, command_id,
                   command_view, connect, emit, fail, known_imei, note, positive, table, text)
from .send_help import send_epilog


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
    doc = new_command(imei, args.type, params, now, expires_at=expires_in(now, args.expires_in),
                      max_attempts=args.max_attempts)
    oid: ObjectId = doc["_id"]
    if not args.wait:
        insert_command(db[COMMANDS], doc)
        emit(args, command_view(doc), str(oid))
        if not args.json:
            note(f"queued {args.type} for {imei}; follow it with: gv50ctl show {oid} (or send with --wait)")
        return OK
    # Watch before inserting, so not one status change is missed.
    with db[COMMANDS].watch([{"$match": {"documentKey._id": oid}}], full_document="updateLookup",
                            max_await_time_ms=200) as stream:
        insert_command(db[COMMANDS], doc)
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


SHOW_FIELDS = ("imei", "type", "params", "status", "serial", "attempts", "max_attempts", "created_at", "sent_at",
               "acknowledged_at", "finished_at", "expires_at", "gateway_id", "error", "ack", "late_ack")


def cmd_show(args: argparse.Namespace) -> int:
    oid = command_id(args.command_id)
    doc = connect(args)[COMMANDS].find_one({"_id": oid})
    if doc is None:
        fail(NOT_FOUND, f"no command {oid}")
    view = command_view(doc)
    lines = [f"{'id':<16} {oid}"]
    lines += [f"{name:<16} {text(view.get(name))}" for name in SHOW_FIELDS]
    extra = sorted(set(doc) - set(SHOW_FIELDS) - {"_id", "history"})
    lines += [f"{name:<16} {text(view.get(name))}" for name in extra]
    lines.append("history")
    lines += [f"  {text(h.get('at'))}  {h.get('status')}" + (f"  {h['error']}" if h.get("error") else "")
              for h in doc.get("history") or []]
    emit(args, view, "\n".join(lines))
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
    before = db[COMMANDS].find_one({"_id": oid}, {"status": 1})
    doc = cancel_command(db[COMMANDS], oid, now)
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


def register(add: AddVerb) -> None:
    p = add("send", "queue a command for a tracker", epilog=send_epilog())
    p.add_argument("imei", help=IMEI_HELP)
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
    p.add_argument("imei", help=IMEI_HELP)
    p.add_argument("--limit", type=positive(int), default=20, help="rows at most (default: %(default)s)")
    p.set_defaults(func=cmd_commands)

    p = add("cancel", "take back a command that is pending or already sent")
    p.add_argument("command_id", help="the id that send printed (24 hex digits)")
    p.set_defaults(func=cmd_cancel)
