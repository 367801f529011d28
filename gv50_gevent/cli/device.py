"""`device IMEI`: one tracker's connection, telemetry and configuration, in plain words, with the
age of every value.

The age is counted from the time the tracker measured or sent the value (its own clock, which is
UTC by default); a value from a command is as old as the tracker's acknowledgement.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from ..storage.database import DEVICES
from .base import IMEI_HELP, NEGATIVE, NOT_FOUND, OK, AddVerb, check_imei, connect, emit, fail, known_imei
from .fleet import wanted_lines

Format = Callable[[Any], str]


def age(at: Any, now: datetime) -> str:
    """`12 s ago`, `5 min ago`, `3 h 10 min ago`, `2 days ago`; `-` when unknown."""
    if not isinstance(at, datetime):
        return "-"
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    seconds = int((now - at).total_seconds())
    if seconds < -5:
        return f"in {_span(-seconds)} (the tracker's clock is ahead)"
    return f"{_span(max(seconds, 0))} ago"


def _span(seconds: int) -> str:
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        hours, minutes = divmod(seconds // 60, 60)
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days = seconds // 86400
    return f"{days} day{'s' if days != 1 else ''}"


def _on(v: Any) -> str:
    return "on" if v else "off"


def _yes(v: Any) -> str:
    return "yes" if v else "no"


def _rssi(v: Any) -> str:
    # CSQ (3GPP 27.007): 0 is -113 dBm or less, 31 is -51 dBm or more, 2 dBm a step; 99 unknown.
    if not isinstance(v, int) or v == 99:
        return "unknown"
    quality = "poor" if v < 10 else "fair" if v < 15 else "good" if v < 20 else "excellent"
    return f"{v} of 31, {quality} (about {-113 + 2 * v} dBm)"


def _hours(v: Any) -> str:
    return f"{v // 3600} h {v % 3600 // 60:02d} min" if isinstance(v, int) else str(v)


def _cell(v: Any) -> str:
    if not isinstance(v, dict):
        return str(v)
    text = f"MCC {v.get('mcc')}, MNC {v.get('mnc')}, area {v.get('lac')}, cell {v.get('cell_id')}"
    return text + (f", receive level {v['rx_level']} of 63" if v.get("rx_level") is not None else "")


def _volts(v: Any) -> str:
    return f"{v / 1000:.2f} V" if isinstance(v, (int, float)) else str(v)


def _time(v: Any) -> str:
    return v.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ") if isinstance(v, datetime) else str(v)


# (parameter, label, how to say its value), in the order an operator reads them.
TELEMETRY: list[tuple[str, str, Format]] = [
    ("ignition", "ignition", _on),
    ("motion", "motion state", lambda v: str(v).replace("_", " ")),
    ("moving", "moving", _yes),
    ("idling", "idling", _yes),
    ("speed_kmh", "speed", lambda v: f"{v} km/h"),
    ("main_power", "main power", lambda v: "connected" if v else "disconnected"),
    ("external_power_mv", "external power", _volts),
    ("battery_percent", "backup battery", lambda v: f"{v} %"),
    ("battery_v", "backup battery voltage", lambda v: f"{v:.2f} V" if isinstance(v, float) else str(v)),
    ("powered", "tracker power", _on),
    ("gsm_rssi", "mobile signal", _rssi),
    ("gsm_ber", "signal bit errors", lambda v: "unknown" if v == 99 else f"{v} of 7"),
    ("roaming", "roaming", lambda v: str(v).replace("_", " ")),
    ("cell", "mobile cell", _cell),
    ("satellites", "satellites in use", str),
    ("gps_accuracy", "GPS accuracy (HDOP)", lambda v: "no fix" if v == 0 else str(v)),
    ("gps_signal", "GPS signal", lambda v: "fix" if v else "lost"),
    ("last_fix_at", "last GPS fix", _time),
    ("mileage_km", "mileage", lambda v: f"{v} km"),
    ("hour_meter_s", "engine hours", _hours),
    ("inputs", "inputs", lambda v: f"{v:02X} (hex)" if isinstance(v, int) else str(v)),
    ("outputs", "outputs", lambda v: f"{v:02X} (hex)" if isinstance(v, int) else str(v)),
    ("output1", "output 1", lambda v: "active" if v else "inactive"),
    ("output2", "output 2", lambda v: "active" if v else "inactive"),
    ("time_zone", "time zone", str),
    ("iccid", "SIM card (ICCID)", str),
]

BLOCKS: dict[str, str] = {
    "bsi": "mobile data (APN)", "sri": "server connection", "cfg": "general settings", "fri": "fixed reports",
    "out": "digital output", "hrm": "HEX report contents", "tma": "time zone", "tow": "tow alarm",
    "eps": "external power alarm", "dis": "ignition detection", "geo": "geofences", "spd": "speed alarm",
    "pin": "SIM PIN", "owh": "working hours", "dog": "watchdog reboot", "idl": "idling", "hmc": "hour meter",
    "hbm": "harsh behaviour", "wlt": "phone white list", "pds": "keep states across reboot",
    "ssr": "start/stop reports", "rmd": "roaming", "ffc": "report rate on events", "cmd": "stored commands",
    "udf": "user functions", "gam": "GPS-assisted motion", "vvs": "voltage ignition", "avs": "motion ignition",
}
ORIGIN = ("source", "at", "received_at", "commanded", "length")


def _value(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


def _fields(block: dict[str, Any]) -> str:
    if "entries" in block:
        used = [e for e in block["entries"] if e.get("mode")]
        text = f"{len(block['entries'])} entries, {len(used)} in use"
        return text + "".join("\n      " + ", ".join(f"{k} {_value(v)}" for k, v in e.items() if v is not None)
                              for e in used)
    if "values" in block:
        return f"{sum(1 for v in block['values'] if v)} values set"
    return ", ".join(f"{k} {_value(v)}" for k, v in block.items() if k not in ORIGIN and v is not None) or "nothing set"


def _pack(items: list[str], width: int) -> list[str]:
    """`name value` items joined by commas, a new line only between items."""
    lines: list[str] = []
    line = "    "
    for item in items:
        if line.strip() and len(line) + len(item) + 2 > width:
            lines.append(line + ",")
            line = "      "
        line += (", " if line.strip() else "") + item
    return lines + [line]


def _origin(block: dict[str, Any], now: datetime) -> str:
    source, at = block.get("source"), block.get("at")
    if source == "report":
        said = f"as the tracker reported it {age(at, now)}"
    elif source == "command":
        said = f"set by a command acknowledged {age(at, now)}"
        if block.get("commanded"):
            said += "; the tracker has not reported it since"
    else:
        said = "from acknowledged commands"
    return said


def render(doc: dict[str, Any], now: datetime) -> str:
    imei = doc["_id"]
    ident = ", ".join(x for x in (doc.get("model"), doc.get("firmware") and f"firmware {doc['firmware']}",
                                  doc.get("device_name") and f"named {doc['device_name']}") if x)
    lines = [f"Tracker {imei}" + (f" ({ident})" if ident else "")]
    if doc.get("online"):
        lines.append(f"  online via {doc.get('gateway_id') or '-'} from {doc.get('remote_addr') or '-'}, "
                     f"connected {age(doc.get('connected_at'), now)}")
    else:
        lines.append(f"  offline, disconnected {age(doc.get('disconnected_at'), now)}")
    lines.append(f"  last heard {age(doc.get('last_seen_at'), now)}")
    if doc.get("blocked") is not None:
        lines.append(f"  blocked (output 1 by command): {_yes(doc['blocked'])}")

    telemetry = doc.get("telemetry") or {}
    lines += ["", "Telemetry (value, then when the tracker measured it)"]
    if not telemetry:
        lines.append("  nothing reported yet")
    known = {p for p, _, _ in TELEMETRY}
    rows = [(label, fmt, telemetry[p]) for p, label, fmt in TELEMETRY if p in telemetry]
    rows += [(p, _value, telemetry[p]) for p in sorted(telemetry) if p not in known]
    width = max((len(label) for label, _, _ in rows), default=0)
    said_rows = []
    for label, fmt, entry in rows:
        entry = entry if isinstance(entry, dict) else {"value": entry}
        value = entry.get("value")
        said = fmt(value) if value is not None else "-"
        since = entry.get("since")
        if isinstance(since, datetime) and since != entry.get("at"):
            said += f" (for {_span(max(0, int((now - since).total_seconds())))})"
        said_rows.append((label, said, age(entry.get("at"), now)))
    said_width = min(44, max((len(said) for _, said, _ in said_rows), default=0))
    lines += [f"  {label:<{width}}  {said:<{said_width}}  {when}" for label, said, when in said_rows]

    config = doc.get("config") or {}
    lines += ["", "Configuration"]
    if not config:
        lines.append("  nothing known yet (send a get_config command to read it from the tracker)")
    order = {name: k for k, name in enumerate(BLOCKS)}
    for name in sorted(config, key=lambda n: (n in ("server", "apn", "protocol_format"), order.get(n, 99), n)):
        block = config[name]
        if name in ("server", "apn"):
            shown = _fields(block) if isinstance(block, dict) else block
            lines.append(f"  {name} (last acknowledged set_{name}): {shown}")
            continue
        if not isinstance(block, dict):
            lines.append(f"  {name}: {_value(block)}")
            continue
        lines.append(f"  {name.upper()} {BLOCKS.get(name, '')}: {_origin(block, now)}")
        for part in _fields(block).split("\n"):
            lines += _pack(part.strip().split(", "), 100)
    lines += wanted_lines(doc)
    return "\n".join(lines)


def json_view(doc: dict[str, Any], now: datetime) -> dict[str, Any]:
    def aged(entry: Any) -> Any:
        if isinstance(entry, dict) and isinstance(entry.get("at"), datetime):
            return {**entry, "age_s": round((now - entry["at"]).total_seconds(), 1)}
        return entry
    return {"imei": doc["_id"], **{k: v for k, v in doc.items() if k not in ("_id", "telemetry", "config")},
            "telemetry": {k: aged(v) for k, v in (doc.get("telemetry") or {}).items()},
            "config": {k: aged(v) for k, v in (doc.get("config") or {}).items()}}


def cmd_device(args: argparse.Namespace) -> int:
    imei = check_imei(args.imei)
    db = connect(args)
    doc = db[DEVICES].find_one({"_id": imei})
    if doc is None:
        if not known_imei(db, imei):
            fail(NOT_FOUND, f"unknown IMEI {imei}")
        emit(args, {"imei": imei, "device": None}, f"{imei} is registered but has never connected")
        return NEGATIVE
    now = datetime.now(timezone.utc)
    emit(args, json_view(doc, now), render(doc, now))
    return OK


def register(add: AddVerb) -> None:
    p = add("device", "a tracker's telemetry and configuration, with ages")
    p.add_argument("imei", help=IMEI_HELP)
    p.set_defaults(func=cmd_device)
