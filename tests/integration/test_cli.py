"""The operator CLI as a subprocess against a real mongod and a real gateway: what it prints, what
it writes to `commands`, and its exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from bson import ObjectId

from tests.support import REPO, free_port, wait_for

FRI = ("+RESP:GTFRI,090302,{imei},,13337,10,1,1,18.6,272,30.8,117.201342,31.855243,20170712074622,"
       "0460,0001,5504,29CF,00,347.8,00021:54:10,,,,220101,23,0,15,20170712154623,{count}")
ONLINE, OFFLINE, PARKED = "863000000000001", "863000000000002", "863000000000003"  # PARKED never connects
UNKNOWN = "869999999999999"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


class Cli:
    def __init__(self, gw: Any) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("MONGODB_", "MONGOD_"))}
        self.env.update(MONGODB_URI=gw.settings["MONGODB_URI"], MONGODB_DB=gw.settings["MONGODB_DB"])

    def cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "gv50_gevent.cli", *args]

    def __call__(self, *args: str, code: int = 0, timeout: float = 60) -> str:
        done = subprocess.run(self.cmd(*args), cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == code, f"exit {done.returncode}, wanted {code}\n{done.stdout}\n{done.stderr}"
        return done.stdout if code == 0 else done.stdout + done.stderr

    def json(self, *args: str, code: int = 0) -> Any:
        done = subprocess.run(self.cmd(*args, "--json"), cwd=REPO, env=self.env, capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == code, f"exit {done.returncode}, wanted {code}\n{done.stdout}\n{done.stderr}"
        return json.loads(done.stdout)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(self.cmd(*args), cwd=REPO, env=self.env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)


@pytest.fixture
def gw(start_gateway) -> Any:
    return start_gateway(SACK_MODE="all")


@pytest.fixture
def cli(gw: Any) -> Cli:
    gw.db.vehicles.insert_one({"_id": PARKED, "enabled": True, "plate": "B-GV 50"})
    return Cli(gw)


def row(output: str, needle: str) -> list[str]:
    lines = [line for line in output.splitlines() if needle in line]
    assert len(lines) == 1, f"{needle!r} in {output!r}"
    return lines[0].split()


def test_devices_and_position(gw: Any, cli: Cli) -> None:
    online = gw.connect()
    online.send_line(FRI.format(imei=ONLINE, count="0101"))
    online.read_until(b"+SACK:0101$")
    with gw.connect() as gone:
        gone.send_line(FRI.format(imei=OFFLINE, count="0202"))
        gone.read_until(b"+SACK:0202$")
        # A heartbeat makes it a long connection, which goes offline as soon as it closes.
        gone.send_line(f"+ACK:GTHBD,090302,{OFFLINE},,20170718163021,0203")
        gone.read_until(b"+SACK:GTHBD")
    db = gw.db
    wait_for(lambda: (d := db.devices.find_one({"_id": ONLINE})) and "last_position" in d and d.get("ignition"),
             what="device state")
    wait_for(lambda: db.devices.find_one({"_id": OFFLINE, "online": False}), what="offline device")
    gateway_id = db.devices.find_one({"_id": ONLINE})["gateway_id"]

    out = cli("devices")
    assert out.split()[:6] == ["IMEI", "STATUS", "GATEWAY", "LAST", "SEEN", "IGNITION"]
    assert row(out, ONLINE)[:3] == [ONLINE, "online", gateway_id] and row(out, ONLINE)[-2:] == ["on", "-"]
    assert row(out, OFFLINE)[:2] == [OFFLINE, "offline"]
    assert OFFLINE not in cli("devices", "--online") and ONLINE in cli("devices", "--online")
    listed = {d["imei"]: d for d in cli.json("devices")["devices"]}
    assert set(listed) == {ONLINE, OFFLINE}
    assert listed[ONLINE]["online"] is True and listed[ONLINE]["ignition"] is True and listed[ONLINE]["blocked"] is None
    assert listed[OFFLINE]["online"] is False and listed[ONLINE]["gateway_id"] == gateway_id
    datetime.fromisoformat(listed[ONLINE]["last_seen_at"])

    out = cli("position", ONLINE)
    fields = dict(line.split(None, 1) for line in out.splitlines())
    assert fields["imei"] == ONLINE and fields["time"] == "2017-07-12 07:46:22Z"
    assert (fields["lat"], fields["lon"], fields["speed_kmh"], fields["valid"]) == ("31.855243", "117.201342", "18.6", "yes")
    pos = cli.json("position", ONLINE)
    assert pos["imei"] == ONLINE and pos["position"]["time"] == "2017-07-12T07:46:22+00:00"
    assert (pos["position"]["lat"], pos["position"]["lon"], pos["position"]["speed_kmh"]) == (31.855243, 117.201342, 18.6)
    assert pos["position"]["valid"] is True

    assert "no position recorded yet" in cli("position", PARKED, code=1)
    assert cli.json("position", PARKED, code=1) == {"imei": PARKED, "position": None}
    assert f"unknown IMEI {UNKNOWN}" in cli("position", UNKNOWN, code=4)
    assert "is not an IMEI" in cli("position", "12345", code=2)
    online.close()


def test_send_show_commands_cancel(gw: Any, cli: Cli) -> None:
    db = gw.db
    before = datetime.now(timezone.utc)
    first = cli("send", PARKED, "block").strip()
    doc = db.commands.find_one({"_id": ObjectId(first)})
    assert doc["imei"] == PARKED and doc["type"] == "block" and doc["params"] == {} and doc["status"] == "pending"
    assert doc["attempts"] == 0 and before - timedelta(seconds=1) <= doc["created_at"] <= datetime.now(timezone.utc)
    assert doc["history"] == [{"status": "pending", "at": doc["created_at"]}]
    assert "expires_at" not in doc and "max_attempts" not in doc

    sent = cli.json("send", PARKED, "set_server", "--param", "host=gw.example.com", "--param", "port=5004",
                    "--params-json", '{"report_mode": 3, "heartbeat_min": 5}', "--expires-in", "600",
                    "--max-attempts", "2")
    second = sent["id"]
    doc = db.commands.find_one({"_id": ObjectId(second)})
    assert doc["params"] == {"host": "gw.example.com", "port": 5004, "report_mode": 3, "heartbeat_min": 5}
    assert doc["max_attempts"] == 2 and sent["max_attempts"] == 2 and sent["status"] == "pending"
    assert abs((doc["expires_at"] - doc["created_at"]).total_seconds() - 600) < 0.01
    old = db.commands.insert_one({
        "imei": PARKED, "type": "get_version", "params": {}, "status": "acknowledged", "serial": "00A7", "attempts": 1,
        "created_at": utc(2024, 5, 1, 8, 0, 0), "acknowledged_at": utc(2024, 5, 1, 8, 0, 2),
        "ack": f"+ACK:GTRTO,090302,{PARKED},,VER,00A7,20240501080002,0042",
        "history": [{"status": "pending", "at": utc(2024, 5, 1, 8, 0, 0)},
                    {"status": "acknowledged", "at": utc(2024, 5, 1, 8, 0, 2)}]}).inserted_id

    out = cli("commands", PARKED)
    ids = [line.split()[0] for line in out.splitlines()[1:]]
    assert ids == [second, first, str(old)]  # newest first
    assert row(out, second)[1:3] == ["set_server", "pending"] and row(out, str(old))[1:3] == ["get_version", "acknowledged"]
    assert row(out, str(old))[-2:] == ["00A7", "-"]
    assert len(cli("commands", PARKED, "--limit", "1").splitlines()) == 2
    listed = cli.json("commands", PARKED)
    assert listed["imei"] == PARKED and [c["id"] for c in listed["commands"]] == ids
    assert listed["commands"][2]["acknowledged_at"] == "2024-05-01T08:00:02+00:00"
    db.vehicles.insert_one({"_id": OFFLINE, "enabled": True})
    assert cli("commands", OFFLINE).strip() == f"no commands for {OFFLINE}"
    assert cli.json("commands", OFFLINE) == {"imei": OFFLINE, "commands": []}
    assert f"unknown IMEI {UNKNOWN}" in cli("commands", UNKNOWN, code=4)

    out = cli("show", str(old))
    shown = dict(line.split(None, 1) for line in out.splitlines() if not line.startswith((" ", "history")))
    assert shown["id"] == str(old) and shown["status"] == "acknowledged" and shown["serial"] == "00A7"
    assert shown["ack"] == f"+ACK:GTRTO,090302,{PARKED},,VER,00A7,20240501080002,0042"
    assert shown["acknowledged_at"] == "2024-05-01 08:00:02Z"
    assert "  2024-05-01 08:00:00Z  pending" in out and "  2024-05-01 08:00:02Z  acknowledged" in out
    one = cli.json("show", second)
    assert one["id"] == second and one["type"] == "set_server" and one["params"]["port"] == 5004

    assert cli("cancel", first).strip() == f"cancelled {first}"
    doc = db.commands.find_one({"_id": ObjectId(first)})
    assert doc["status"] == "cancelled" and [h["status"] for h in doc["history"]] == ["pending", "cancelled"]
    assert "it is cancelled, not pending or sent" in cli("cancel", first, code=1)
    assert "it is acknowledged, not pending or sent" in cli("cancel", str(old), code=1)
    assert cli.json("cancel", second)["status"] == "cancelled"

    missing = str(ObjectId())
    assert f"no command {missing}" in cli("show", missing, code=4)
    assert f"no command {missing}" in cli("cancel", missing, code=4)
    assert "is not a command id" in cli("show", "nope", code=2)
    assert "is not a command id" in cli("cancel", "1234", code=2)


def test_send_refuses_bad_input_before_inserting(gw: Any, cli: Cli) -> None:
    assert "port: must be between 0 and 65535" in cli("send", PARKED, "set_server", "--param", "host=a.example",
                                                     "--param", "port=99999", code=2)
    assert "host: is required" in cli("send", PARKED, "set_server", code=2)
    assert "contains a ','" in cli("send", PARKED, "set_apn", "--param", "apn=a,b", code=2)
    assert "not a parameter of block" in cli("send", PARKED, "block", "--param", "x=1", code=2)
    assert "invalid choice" in cli("send", PARKED, "explode", code=2)
    assert "not JSON" in cli("send", PARKED, "set_apn", "--params-json", "{apn:", code=2)
    assert "is not an IMEI" in cli("send", "86300000000000X", "block", code=2)
    assert f"unknown IMEI {UNKNOWN}" in cli("send", UNKNOWN, "block", code=4)
    assert gw.db.commands.count_documents({}) == 0
    forced = cli("send", UNKNOWN, "reboot", "--force").strip()
    assert gw.db.commands.find_one({"_id": ObjectId(forced)})["imei"] == UNKNOWN


def test_wait_timeout_and_final_statuses(gw: Any, cli: Cli) -> None:
    db = gw.db
    started = time.monotonic()
    out = cli("send", PARKED, "reboot", "--wait", "--timeout", "1", code=3)
    assert 1 <= time.monotonic() - started < 15
    assert "timed out after 1 s: command is pending. The gateway keeps trying" in out
    assert db.commands.count_documents({"status": "pending"}) == 1

    def finish(status: str, extra: dict[str, Any], *args: str) -> tuple[int, str]:
        proc = cli.popen("send", PARKED, "get_version", "--wait", "--timeout", "30", *args)
        doc = wait_for(lambda: db.commands.find_one({"type": "get_version", "status": "pending"}), what="insert")
        db.commands.update_one({"_id": doc["_id"]}, {"$set": {"status": status, **extra}})
        stdout, stderr = proc.communicate(timeout=30)
        return proc.returncode, stdout

    code, out = finish("failed", {"error": "no ACK after 3 attempts"})
    assert code == 1 and out.splitlines()[-1] == "failed: no ACK after 3 attempts"
    ack = f"+ACK:GTRTO,090302,{PARKED},,VER,0001,20240501080002,0042"
    code, out = finish("acknowledged", {"ack": ack, "acknowledged_at": utc(2024, 5, 1, 8, 0, 2)})
    assert code == 0 and out.splitlines()[-1] == f"acknowledged at 2024-05-01 08:00:02Z: {ack}"
    assert ObjectId(out.splitlines()[0])
    code, out = finish("expired", {}, "--json")
    assert code == 1 and json.loads(out)["status"] == "expired"


def test_unreachable_mongodb_is_reported_without_the_password(cli: Cli) -> None:
    uri = f"mongodb://op:s3cret-pw@127.0.0.1:{free_port()}/?directConnection=true"
    started = time.monotonic()
    out = cli("--uri", uri, "devices", code=5)
    assert time.monotonic() - started < 20
    port = uri.split("@127.0.0.1:")[1].split("/")[0]
    assert out.strip() == (f"error: cannot reach MongoDB at mongodb://op:***@127.0.0.1:{port}/?directConnection=true: "
                           f"nothing answers at 127.0.0.1:{port}. Start MongoDB there, or fix MONGODB_URI (or --uri)")
    assert "s3cret-pw" not in out


def test_send_wait_acknowledged_by_a_simulated_tracker(gw: Any, cli: Cli) -> None:
    """End to end: CLI -> commands -> gateway dispatcher -> simulated GV50 -> +ACK -> acknowledged."""
    imei = "864000000000000"
    sim = subprocess.Popen([sys.executable, "-m", "gv50_gevent.simulator", "--port", str(gw.port), "--devices", "1",
                            "--rate", "1", "--duration", "60", "--imei-base", imei, "--json"],
                           cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: gw.db.devices.find_one({"_id": imei, "online": True}), what="simulated tracker online")
        out = cli("send", imei, "get_version", "--wait", "--timeout", "20", timeout=60)
        command_id = out.splitlines()[0]
        progress = out.splitlines()[1:-1]  # each status change as it happened
        assert "pending: queued; a gateway sends it when the tracker is connected" in progress[0]
        assert any(" sent to the tracker (attempt 1, serial " in line for line in progress), out
        doc = gw.db.commands.find_one({"_id": ObjectId(command_id)})
        assert doc["status"] == "acknowledged" and doc["ack"].startswith(f"+ACK:GTRTO,090302,{imei},,VER,{doc['serial']},")
        assert out.splitlines()[-1].startswith("acknowledged at ") and doc["ack"] in out.splitlines()[-1]

        done = cli.json("send", imei, "block", "--wait", "--timeout", "20")
        assert done["status"] == "acknowledged" and done["ack"].startswith(f"+ACK:GTOUT,090302,{imei},,")
        wait_for(lambda: gw.db.devices.find_one({"_id": imei, "blocked": True}), what="blocked after the ACK")
        assert row(cli("devices"), imei)[-1] == "yes"
        assert cli.json("show", command_id)["status"] == "acknowledged"
    finally:
        sim.send_signal(signal.SIGINT)
        stdout, stderr = sim.communicate(timeout=30)
    report = json.loads(stdout)
    lines = [entry["line"] for entry in report["command_log"]]
    assert lines[0] == f"AT+GTRTO=gv50,8,,,,,,{doc['serial']}$" and lines[1].startswith("AT+GTOUT=gv50,1,")
    assert all(entry["acked_at"] for entry in report["command_log"]) and report["acks_sent"] == 2
