"""`python -m gv50_gevent.cli device IMEI` as a subprocess against a real mongod: a tracker's telemetry and
configuration, written by the gateway's own storage code, read back in plain words."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from typing import Any

from pymongo import MongoClient

from gv50_gevent.protocol import parse
from gv50_gevent.protocol.commands import ack_effects
from gv50_gevent.storage.database import durable
from gv50_gevent.storage.devices import Devices
from tests.data import device_lines
from tests.support import REPO

IMEI = "865083030002554"


def run(mongo_uri: str, db_name: str, *args: str, code: int = 0) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONGODB_", "MONGOD_"))}
    env.update(MONGODB_URI=mongo_uri, MONGODB_DB=db_name)
    done = subprocess.run([sys.executable, "-m", "gv50_gevent.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == code, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_device_view_says_each_value_and_its_age(mongo: MongoClient, mongo_uri: str, db_name: str) -> None:
    db = mongo.get_database(db_name, write_concern=durable())
    devices = Devices(db, "gw-test")
    now = datetime.now(timezone.utc).replace(microsecond=0)
    stamp = (now - timedelta(minutes=5)).strftime("%Y%m%d%H%M%S")
    fix = (now - timedelta(minutes=5, seconds=2)).strftime("%Y%m%d%H%M%S")
    fri = parse(f"+RESP:GTFRI,090302,{IMEI},,13337,10,1,1,18.6,272,30.8,117.201342,31.855243,{fix},"
                f"0460,0001,5504,29CF,00,347.8,00021:54:10,,,77,220101,23,0,15,{stamp},1854")
    devices.note_report(fri, now)
    devices.flush()
    dump = [parse(line.rstrip("$")) for line in device_lines() if line.startswith("+RESP:GTALM")]
    devices.config.apply(IMEI, dump, now)  # sent in 2017: years old
    db.devices.update_one({"_id": IMEI}, {"$set": ack_effects(
        "set_report_interval", {"mode": 1, "send_interval_s": 60}, now - timedelta(seconds=30))})

    out = run(mongo_uri, db_name, "device", IMEI)
    lines = out.splitlines()
    assert lines[0] == f"Tracker {IMEI}"
    assert "  offline, disconnected -" in lines and any(line.startswith("  last heard ") for line in lines)

    def row(label: str) -> str:
        return next(line for line in lines if line.startswith(f"  {label}  "))

    assert "on" in row("ignition  ") and row("ignition  ").endswith("5 min ago")
    assert "ignition on moving" in row("motion state")
    assert "13.34 V" in row("external power") and "77 %" in row("backup battery  ")
    assert "23 of 31, excellent (about -67 dBm)" in row("mobile signal")
    assert "MCC 0460, MNC 0001, area 5504, cell 29CF" in row("mobile cell")
    assert "347.8 km" in row("mileage") and "21 h 54 min" in row("engine hours")
    assert "18.6 km/h" in row("speed")
    assert "active" in row("output 1")

    assert "Configuration" in lines
    fri_at = lines.index(next(line for line in lines if line.startswith("  FRI fixed reports:")))
    assert re.fullmatch(r"  FRI fixed reports: set by a command acknowledged (3\d|[4-9]\d) s ago; "
                        r"the tracker has not reported it since", lines[fri_at]), lines[fri_at]
    fri_text = lines[fri_at + 1] + lines[fri_at + 2]
    assert fri_text.startswith("    mode 1, ") and "send_interval_s 60" in fri_text
    assert "discard_no_fix yes" in fri_text  # from the dump, not changed by the command
    sri = lines.index(next(line for line in lines if line.startswith("  SRI server connection:")))
    assert lines[sri].endswith("days ago") and "as the tracker reported it" in lines[sri]
    assert "host 220.178.67.210, port 10041, " in lines[sri + 1]
    assert any(line.startswith("  GEO geofences:") for line in lines)
    assert "20 entries, 0 in use" in out

    view: dict[str, Any] = json.loads(run(mongo_uri, db_name, "device", IMEI, "--json"))
    assert view["telemetry"]["battery_percent"]["value"] == 77
    assert 295 <= view["telemetry"]["battery_percent"]["age_s"] <= 400
    assert view["config"]["fri"]["send_interval_s"] == 60 and view["config"]["fri"]["source"] == "command"

    run(mongo_uri, db_name, "device", "869999999999999", code=4)  # unknown IMEI
