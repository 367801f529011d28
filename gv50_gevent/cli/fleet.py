"""`gv50ctl profile ...` and `gv50ctl rollout NAME`: the fleet's wanted settings, and how far the
trackers are from them. Also the "wanted against actual" part of `gv50ctl device IMEI`.

    profile set NAME (--file profile.json | BLOCK.FIELD=VALUE ...)
    profile show NAME
    profile assign NAME (--imei IMEI ... | --group NAME ... | --all) [--remove]
    rollout NAME [--watch] [--interval S] [--limit N] [--retry-failed]

Secrets (the APN password) are printed as `***` and a short fingerprint, never in full.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..fleet.profiles import SETTABLE, STATES, ProfileError, check_profile, same, shown, typed_field
from ..storage.database import DEVICES, PROFILES, durable
from . import base
from .base import AddVerb

# The gateways' change streams see only majority-committed writes.
MAJORITY = durable("majority")
ASSIGN_TRIES = 5  # another `profile set/assign` at the same moment: read again and retry this often
STATE_WORDS: dict[str | None, str] = {
    "in_sync": "in sync", "applying": "applying", "waiting_offline": "waiting for offline trackers",
    "drifted": "drifted", "failed": "failed"}


def _value(block: str, field: str, raw: str) -> Any:
    """A value read in the type of its field (`bsi.password=1234` stays text, `fri.send_interval_s=30`
    is a number); a field the gateway does not know: numbers and true/false as JSON, else text
    (check_profile then says what is wrong with it)."""
    try:
        value = typed_field(block, field, raw)
    except (KeyError, ValidationError):
        pass
    else:
        return raw if isinstance(value, str) else value
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        return raw
    return raw if isinstance(value, (dict, list)) else value


def read_settings(args: argparse.Namespace) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    if args.file:
        try:
            loaded = json.loads(Path(args.file).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            base.fail(base.USAGE, f"cannot read {args.file}: {exc}")
        if not isinstance(loaded, dict):
            base.fail(base.USAGE, f"{args.file}: expected a JSON object")
        # Either the whole profile ({settings, applies_to}) or just its settings.
        if "settings" in loaded:
            return dict(loaded)
        settings = loaded
    for item in args.values or ():
        key, sep, raw = item.partition("=")
        block, dot, field = key.partition(".")
        if not sep or not dot or not block or not field:
            base.fail(base.USAGE, f"{item!r}: expected block.field=value, such as fri.send_interval_s=30")
        settings.setdefault(block, {})[field] = _value(block, field, raw)
    if not settings:
        base.fail(base.USAGE, "give --file profile.json or block.field=value pairs")
    return {"settings": settings}


def public(doc: dict[str, Any]) -> dict[str, Any]:
    """A profile as it may be printed: secrets hidden."""
    settings = {block: {name: shown(block, name, value) for name, value in fields.items()}
                if isinstance(fields, dict) else fields for block, fields in (doc.get("settings") or {}).items()}
    return {**doc, "settings": settings}


def cmd_profile_set(args: argparse.Namespace) -> int:
    given = read_settings(args)
    db = base.connect(args)
    coll = db.get_collection(PROFILES, write_concern=MAJORITY)
    old = coll.find_one({"_id": args.name}) or {}
    doc = {"_id": args.name, "settings": given["settings"],
           "applies_to": given.get("applies_to", old.get("applies_to") or {"imeis": [], "groups": [], "all": False})}
    refuse_invalid(doc, f"profile {args.name!r} not saved")
    now = datetime.now(timezone.utc)
    coll.update_one({"_id": args.name}, {"$set": {"settings": doc["settings"], "applies_to": doc["applies_to"],
                                                  "updated_at": now}, "$setOnInsert": {"created_at": now}},
                    upsert=True)
    saved = coll.find_one({"_id": args.name}) or doc
    base.emit(args, public(saved), f"profile {args.name} saved\n{render_profile(public(saved))}")
    return int(base.OK)


def render_profile(doc: dict[str, Any]) -> str:
    lines = [f"Profile {doc['_id']}"]
    for block, fields in (doc.get("settings") or {}).items():
        lines.append(f"  {block}: " + ", ".join(f"{k}={v}" for k, v in fields.items()))
    applies = doc.get("applies_to") or {}
    who = []
    if applies.get("all"):
        who.append("every tracker")
    if applies.get("groups"):
        who.append("groups " + ", ".join(applies["groups"]))
    if applies.get("imeis"):
        who.append(f"{len(applies['imeis'])} trackers by IMEI")
    lines.append("  applies to: " + ("; ".join(who) if who else "nobody yet (use `gv50ctl profile assign`)"))
    return "\n".join(lines)


def cmd_profile_show(args: argparse.Namespace) -> int:
    db = base.connect(args)
    doc = db[PROFILES].find_one({"_id": args.name})
    if doc is None:
        base.fail(base.NOT_FOUND, f"no profile named {args.name!r}")
    text = render_profile(public(doc))
    try:
        check_profile(doc)
    except ProfileError as exc:
        text += "\n  NOT IN USE, until corrected:\n" + "\n".join(f"    {line}" for line in exc.problems)
    base.emit(args, public(doc), text)
    return int(base.OK)


def refuse_invalid(doc: dict[str, Any], what: str) -> None:
    """One `error:` line per problem and exit 2, if the profile would not be valid."""
    try:
        check_profile(doc)
    except ProfileError as exc:
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        base.fail(base.USAGE, f"{what} ({len(exc.problems)} problems above)")


def assigned(applies: Any, imeis: list[str], groups: list[str], every: bool, remove: bool) -> dict[str, Any]:
    """`applies_to` after `profile assign` (the order kept, no duplicates)."""
    old = applies if isinstance(applies, dict) else {}
    result = dict(old)
    for key, given in (("imeis", imeis), ("groups", groups)):
        have = list(old.get(key) or []) if isinstance(old.get(key), list) else old.get(key)
        if not given:
            if have is not None:
                result[key] = have
            continue
        have = have if isinstance(have, list) else []
        result[key] = [v for v in have if v not in given] if remove else have + [v for v in given if v not in have]
    if every:
        result["all"] = not remove
    return result


def cmd_profile_assign(args: argparse.Namespace) -> int:
    if not (args.imei or args.group or args.all):
        base.fail(base.USAGE, "give --imei, --group or --all")
    imeis = [base.check_imei(i) for i in args.imei or ()]
    db = base.connect(args)
    coll = db.get_collection(PROFILES, write_concern=MAJORITY)
    for _ in range(ASSIGN_TRIES):
        old = coll.find_one({"_id": args.name})
        if old is None:
            base.fail(base.NOT_FOUND, f"no profile named {args.name!r} (create it with `gv50ctl profile set`)")
        applies = assigned(old.get("applies_to"), imeis, args.group or [], args.all, args.remove)
        # The result is checked before it is written: a gateway would not use an invalid profile.
        refuse_invalid({**old, "applies_to": applies}, f"profile {args.name!r} not changed")
        # Written only if nobody changed it since it was read (a compare-and-set on the whole of it).
        done = coll.update_one({"_id": args.name, "applies_to": old.get("applies_to"),
                                "updated_at": old.get("updated_at")},
                               {"$set": {"applies_to": applies, "updated_at": datetime.now(timezone.utc)}})
        if done.matched_count:
            break
    else:
        base.fail(base.NEGATIVE, f"profile {args.name!r} kept changing while it was assigned: try again")
    doc = coll.find_one({"_id": args.name}) or {}
    base.emit(args, public(doc), render_profile(public(doc)))
    return int(base.OK)


# --- rollout ---

def rollout_view(db: Any, name: str, limit: int) -> dict[str, Any]:
    """Counts by state of the trackers with a value from this profile, the slowest still on their
    way and the failed ones with their reasons."""
    fields = _fields_of(db, name)
    holder: dict[str, Any] = {"$or": [{f"config_target.{b}.{f}.profile": name} for b, f in fields]} \
        if fields else {"_id": None}
    counts = dict.fromkeys(STATES, 0)
    for row in db[DEVICES].aggregate([{"$match": holder},
                                      {"$group": {"_id": "$config_state.state", "n": {"$sum": 1}}}]):
        counts[row["_id"] or "applying"] = counts.get(row["_id"] or "applying", 0) + row["n"]
    projection = {"config_state": 1, "online": 1}
    slowest = list(db[DEVICES].find({**holder, "config_state.state": {"$in": ["applying", "drifted"]}}, projection,
                                    sort=[("config_state.since", 1)], limit=limit))
    failed = list(db[DEVICES].find({**holder, "config_state.state": "failed"}, projection,
                                   sort=[("config_state.since", 1)], limit=limit))
    return {"profile": name, "total": sum(counts.values()), "counts": counts,
            "slowest": [_row(d) for d in slowest], "failed": [_row(d) for d in failed]}


def _fields_of(db: Any, name: str) -> list[tuple[str, str]]:
    doc = db[PROFILES].find_one({"_id": name}, {"settings": 1}) or {}
    return [(b, f) for b, fields in (doc.get("settings") or {}).items() if isinstance(fields, dict) for f in fields]


def _row(doc: dict[str, Any]) -> dict[str, Any]:
    state = doc.get("config_state") or {}
    return {"imei": doc["_id"], "state": state.get("state"), "since": state.get("since"),
            "reason": state.get("reason") or "", "online": bool(doc.get("online"))}


def progress_line(view: dict[str, Any]) -> str:
    total = view["total"] or 1
    done = view["counts"]["in_sync"]
    parts = ", ".join(f"{n} {STATE_WORDS[s]}" for s, n in view["counts"].items() if n)
    return f"{view['profile']}: {done}/{view['total']} in sync ({100 * done / total:.1f} %) - {parts or 'no trackers'}"


def render_rollout(view: dict[str, Any], now: datetime) -> str:
    lines = [progress_line(view), ""]
    lines += [f"  {STATE_WORDS[s]:<30} {view['counts'][s]:>7}" for s in STATES]
    for title, rows in (("Slowest still on their way", view["slowest"]), ("Failed", view["failed"])):
        if rows:
            lines += ["", base.table(["imei", "state", "for", "online", "reason"],
                                    [(r["imei"], r["state"], _for(r["since"], now), "yes" if r["online"] else "no",
                                      r["reason"]) for r in rows], title=title)]
    return "\n".join(lines)


def _for(since: Any, now: datetime) -> str:
    if not isinstance(since, datetime):
        return "-"
    seconds = int((now - since).total_seconds())
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m" if seconds < 7200 else f"{seconds // 3600}h"


def cmd_rollout(args: argparse.Namespace) -> int:
    db = base.connect(args)
    if db[PROFILES].find_one({"_id": args.name}, {"_id": 1}) is None:
        base.fail(base.NOT_FOUND, f"no profile named {args.name!r}")
    if args.retry_failed:
        # Without its config_state a tracker starts over: the gateway holding it sees the change.
        fields = _fields_of(db, args.name)
        holder = {"$or": [{f"config_target.{b}.{f}.profile": args.name} for b, f in fields]} if fields else None
        if holder is not None:
            done = db.get_collection(DEVICES, write_concern=MAJORITY).update_many(
                {**holder, "config_state.state": "failed"}, {"$unset": {"config_state": ""}})
            base.note(f"{done.modified_count} failed trackers will be tried again")
    view = rollout_view(db, args.name, args.limit)
    if args.watch and not args.json:
        # One progress line, rewritten in place, until nothing is on its way any more.
        tty = sys.stdout.isatty()
        while view["counts"]["applying"] + view["counts"]["drifted"] > 0:
            line = progress_line(view)
            print(f"\r{line}\033[K" if tty else line, end="" if tty else "\n", flush=True)
            time.sleep(args.interval)
            view = rollout_view(db, args.name, args.limit)
        if tty:
            print()
    base.emit(args, view, render_rollout(view, datetime.now(timezone.utc)))
    converged = view["counts"]["in_sync"] == view["total"]
    return int(base.OK if converged else base.NEGATIVE)


# --- `device IMEI`: wanted against actual ---

def wanted_lines(doc: dict[str, Any]) -> list[str]:
    target = doc.get("config_target") or {}
    if not target:
        return []
    state = doc.get("config_state") or {}
    since = state.get("since")
    head = f"Wanted settings (profiles): {STATE_WORDS.get(state.get('state'), state.get('state') or 'not checked')}"
    if isinstance(since, datetime):
        head += f" since {since:%Y-%m-%d %H:%M:%S} UTC"
    lines = ["", head]
    if state.get("reason"):
        lines.append(f"  {state['reason']}")
    config = doc.get("config") or {}
    secrets = doc.get("config_secrets") or {}
    for block in SETTABLE:
        for name, wanted in (target.get(block) or {}).items():
            value = wanted.get("value")
            held: dict[str, Any] = config[block] if isinstance(config.get(block), dict) else {}
            if str(value).startswith("***"):
                stamp = (secrets.get(block) or {}).get(name)
                ok = bool(stamp) and str(value).endswith(f"({stamp})")
                actual = "acknowledged" if ok else "not yet set"
            else:
                actual = held.get(name, "(unknown)")
                ok = name in held and same(block, name, value, held.get(name))
            mark = "ok" if ok else "DIFFERS"
            lines.append(f"  {block}.{name:<18} wanted {value!s:<20} is {actual!s:<20} {mark:<8} "
                         f"(profile {wanted.get('profile')}, by {wanted.get('via')})")
    return lines


def cmd_profile(args: argparse.Namespace) -> int:
    """One verb, `profile ACTION NAME ...`: one parser, so it takes the shared options anywhere."""
    if args.action != "set" and args.values:
        base.fail(base.USAGE, f"profile {args.action} takes no BLOCK.FIELD=VALUE pairs (only profile set does)")
    if args.action != "assign" and (args.imei or args.group or args.all or args.remove):
        base.fail(base.USAGE, "--imei, --group, --all and --remove go with profile assign")
    if args.action != "set" and args.file:
        base.fail(base.USAGE, "--file goes with profile set")
    run = {"set": cmd_profile_set, "show": cmd_profile_show, "assign": cmd_profile_assign}[args.action]
    return run(args)


def register(add: AddVerb) -> None:
    """Add `profile` and `rollout`. `add(name, help)` gives a verb's parser with the shared options."""
    p = add("profile", "write, show or assign a profile: the settings the gateways keep trackers at")
    p.epilog = ("Examples: gv50ctl profile set city fri.mode=1 fri.send_interval_s=30 sri.host=gw.example.com "
                "sri.port=5004; gv50ctl profile assign city --group buses; gv50ctl profile show city. Blocks a "
                "profile can set: " + ", ".join(SETTABLE) + ".")
    p.add_argument("action", choices=("set", "show", "assign"), help="set: create or replace its settings; "
                   "show: print it (secrets hidden); assign: say which trackers it applies to")
    p.add_argument("name", help="the profile's name")
    p.add_argument("values", nargs="*", metavar="BLOCK.FIELD=VALUE", help="with set: the settings (or --file)")
    p.add_argument("--file", metavar="PATH",
                   help="with set: a JSON file, {\"fri\": {...}} or a whole profile (default: the pairs given)")
    p.add_argument("--imei", action="append", metavar="IMEI",
                   help="with assign: one tracker, repeat for more (default: none)")
    p.add_argument("--group", action="append", metavar="GROUP",
                   help="with assign: trackers whose devices.group is this, repeat for more (default: none)")
    p.add_argument("--all", action="store_true", help="with assign: every tracker (default: off)")
    p.add_argument("--remove", action="store_true",
                   help="with assign: take these out of the profile instead (default: add them)")
    p.set_defaults(func=cmd_profile)

    p = add("rollout", "how far the trackers of a profile are from it (exit 0 when all are in sync)")
    p.add_argument("name", help="the profile's name")
    p.add_argument("--watch", action="store_true",
                   help="refresh a progress line until nothing is applying (default: off, print once)")
    p.add_argument("--retry-failed", action="store_true",
                   help="try the failed trackers again, from their first try (default: off)")
    p.add_argument("--interval", type=float, default=2.0, metavar="S", help="with --watch (default: %(default)s)")
    p.add_argument("--limit", type=int, default=10, help="slowest and failed trackers shown (default: %(default)s)")
    p.set_defaults(func=cmd_rollout)
