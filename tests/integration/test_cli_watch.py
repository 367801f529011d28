"""The operator CLI's views of a running system, as subprocesses against a real mongod: `status`
(the gateways' figures from `gateway_state`), `tail` (the raw archive live, through a change
stream), `messages` (its history), `devices` pages; and the help that every option carries."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from pymongo import MongoClient

from gv50_gevent.cli import EXAMPLE_PARAMS, build_parser, example_command, frame_type
from gv50_gevent.protocol.commands import COMMAND_TYPES, validate_command
from tests.support import REPO, wait_for

IMEI_A, IMEI_B = "865083030000001", "865083030000002"


# A set_apn command as archived: the device password (field 0) and the APN password (field 3).
APN_PASSWORD = "pa55word"
BSI = f"AT+GTBSI=Zq81Kx,m2m.example,,{APN_PASSWORD},,,,,1A2C$"
BSI_SHOWN = "AT+GTBSI=***,m2m.example,,***,,,,,1A2C$"


def now() -> datetime:
    return datetime.now(timezone.utc)


class Cli:
    def __init__(self, uri: str, db: str) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("MONGODB_", "MONGOD_"))}
        self.env.update(MONGODB_URI=uri, MONGODB_DB=db)

    def run(self, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([sys.executable, "-m", "gv50_gevent.cli", *args], cwd=REPO, env=self.env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == code, f"exit {done.returncode}, wanted {code}\n{done.stdout}\n{done.stderr}"
        return done

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "gv50_gevent.cli", *args], cwd=REPO, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture
def cli(mongo_uri: str, db_name: str) -> Cli:
    return Cli(mongo_uri, db_name)


def frame(imei: str | None, direction: str, raw: str, kind: str, status: str = "ok", **extra: Any) -> dict[str, Any]:
    return {"imei": imei, "direction": direction, "raw": raw, "at": now(), "kind": kind, "status": status,
            "error": None, "remote_addr": "127.0.0.1:40000", "gateway_id": "gw-a", **extra}


FRI = ("+RESP:GTFRI,090302,{imei},,13337,10,1,1,18.6,272,30.8,117.201342,31.855243,20170712074622,"
       "0460,0001,5504,29CF,00,347.8,00021:54:10,,,,220101,23,0,15,20170712154623,0101")


def test_status_shows_every_live_gateway_in_a_table(mongo: MongoClient, db_name: str, cli: Cli) -> None:
    state = mongo[db_name].gateway_state
    at = now()
    state.insert_many([
        {"_id": "gateway:gw-a", "gateway_id": "gw-a", "alive_at": at, "stats": {
            "at": at - timedelta(seconds=3), "connections": {"tcp": 9500, "udp": 12},
            "last_minute": {"report/ok": 120_000, "heartbeat/ok": 800, "report/invalid": 3},
            "stored": 1_234_567, "duplicates": 17, "invalid": 3, "warnings": 5, "write_queue": 240,
            "backpressure_s": 1.5, "sack_latency_ms": {"p50": 4.2, "p99": 31.0},
            "commands": {"sent": 2, "acknowledged": 40}, "mongo_write_ms": {"p50": 2.5, "p99": None},
            "something_new": 7}},
        # Only alive so far: its first figures are not written yet. Every missing figure is "-".
        {"_id": "gateway:gw-b", "gateway_id": "gw-b", "alive_at": at},
        # Silent for 10 minutes: not running, left out unless --all.
        {"_id": "gateway:gw-old", "gateway_id": "gw-old", "alive_at": at - timedelta(minutes=10),
         "stats": {"stored": 1}},
        {"_id": "commands_watcher:gw-a", "gateway_id": "gw-a", "resume_token": {"_data": "00"}},
    ])
    out = cli.run("status").stdout
    lines = out.splitlines()
    assert lines[0].split() == ["gw-a", "gw-b"]

    def row(label: str) -> str:
        [line] = [line for line in lines if line.startswith(label + " ")]
        return line[len(label):].strip()

    assert row("trackers connected").split("  ")[0] == "tcp 9,500, udp 12"
    assert row("trackers connected").endswith("-")
    assert row("frames in the last minute").startswith("120,803: heartbeat/ok 800, report/invalid 3, report/ok 120,000")
    assert row("stored").split() == ["1,234,567", "-"]
    assert row("duplicates").split() == ["17", "-"] and row("invalid frames").split() == ["3", "-"]
    assert row("values with warnings").split() == ["5", "-"]
    assert row("write queue (documents)").split() == ["240", "-"] and row("backpressure (s)").split() == ["1.5", "-"]
    assert row("SACK latency").startswith("p50 4.2 ms, p99 31.0 ms")
    assert row("MongoDB write time").startswith("p50 2.5 ms, p99 -")
    assert row("commands").startswith("acknowledged 40, sent 2")
    assert row("something_new").split() == ["7", "-"]  # a figure this CLI does not know yet is still shown
    ago = [int(row(label).split("(")[1].split()[0]) for label in ("figures from", "alive")]
    assert ago[0] - ago[1] in (2, 3, 4) and ago[1] < 30  # seconds, as of the run
    assert "gw-old" not in out and "commands_watcher" not in out

    assert "gw-old" in cli.run("status", "--all").stdout.splitlines()[0]
    shown = json.loads(cli.run("status", "--json").stdout)
    assert [g["gateway_id"] for g in shown["gateways"]] == ["gw-a", "gw-b"]
    assert shown["gateways"][0]["stats"]["connections"] == {"tcp": 9500, "udp": 12}

    state.delete_many({"_id": {"$in": ["gateway:gw-a", "gateway:gw-b"]}})
    done = cli.run("status", code=1)
    assert done.stdout.strip().startswith("no gateway is running")


def test_tail_follows_frames_live_in_both_directions(mongo: MongoClient, db_name: str, cli: Cli) -> None:
    messages = mongo[db_name].messages
    messages.insert_one(frame(IMEI_A, "in", FRI.format(imei=IMEI_A), "report"))  # before: not shown
    follow_all = cli.popen("tail", "--duration", "60")
    only_b = cli.popen("tail", IMEI_B, "--duration", "60", "--json")
    try:
        wait_for(lambda: follow_all.stderr.readline().startswith("following every frame live"), timeout=30,
                 what="tail started")
        time.sleep(1.0)  # the JSON one has no banner; give it the same head start
        messages.insert_one(frame(IMEI_A, "in", FRI.format(imei=IMEI_A), "report"))
        messages.insert_one(frame(IMEI_A, "out", "+SACK:0101", "sack"))
        messages.insert_one(frame(IMEI_B, "out", "AT+GTOUT=Zq81Kx,1,0,0,,,,1,,,,,,1A2B", "command"))
        messages.insert_one(frame(IMEI_B, "in", "+ACK:GTOUT,090302,865083030000002,,1A2B,20240101000000,0002",
                                  "ack"))
        messages.insert_one(frame(None, "in", "HELLO", "other", "invalid", error="not a frame"))
        messages.insert_one(frame(IMEI_B, "out", BSI, "command"))
        lines = [follow_all.stdout.readline().rstrip("\n") for _ in range(6)]
        picked = [json.loads(only_b.stdout.readline()) for _ in range(3)]
    finally:
        for proc in (follow_all, only_b):
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=30)
    cols = [line.split() for line in lines]
    assert [c[2:7] for c in cols[:4]] == [
        [IMEI_A, "in", "GTFRI", "report", "ok"],
        [IMEI_A, "out", "SACK", "sack", "ok"],
        [IMEI_B, "out", "GTOUT", "command", "ok"],
        [IMEI_B, "in", "GTOUT", "ack", "ok"],
    ]
    datetime.strptime(f"{cols[0][0]} {cols[0][1]}", "%Y-%m-%d %H:%M:%S.%f")
    assert lines[0].endswith(FRI.format(imei=IMEI_A))  # the frame itself, last
    assert "AT+GTOUT=***,1," in lines[2] and "Zq81Kx" not in "".join(lines)  # never the device password
    assert cols[4][2:7] == ["-", "in", "?", "other", "invalid"] and "(not a frame)" in lines[4]
    assert [(p["imei"], p["direction"], p["type"]) for p in picked[:2]] == [(IMEI_B, "out", "GTOUT"),
                                                                            (IMEI_B, "in", "GTOUT")]
    # The APN password of an AT+GTBSI line is masked too, in text and in JSON.
    assert lines[5].endswith(BSI_SHOWN) and picked[2]["raw"] == BSI_SHOWN
    assert APN_PASSWORD not in "".join(lines) + json.dumps(picked)
    assert follow_all.returncode == 0 and only_b.returncode == 0  # Ctrl-C is the normal end of a tail


def test_messages_shows_the_history_since(mongo: MongoClient, db_name: str, cli: Cli) -> None:
    messages = mongo[db_name].messages
    old = frame(IMEI_A, "in", FRI.format(imei=IMEI_A), "report")
    old["at"] = now() - timedelta(hours=3)
    recent = [frame(IMEI_A, "in", FRI.format(imei=IMEI_A), "report"), frame(IMEI_A, "out", "+SACK:0101", "sack")]
    recent[0]["at"] = now() - timedelta(minutes=30)
    messages.insert_many([old, *recent, frame(IMEI_B, "in", "+ACK:GTHBD,090302,865083030000002,,x,0001", "heartbeat"),
                          frame(IMEI_B, "out", BSI, "command", error=f"not stored: ({BSI})")])
    out = cli.run("messages", IMEI_A).stdout.splitlines()  # the last hour by default
    assert [line.split()[2:5] for line in out] == [[IMEI_A, "in", "GTFRI"], [IMEI_A, "out", "SACK"]]
    shown = cli.run("messages", IMEI_B).stdout.splitlines()
    assert any(line.endswith(BSI_SHOWN) for line in shown) and APN_PASSWORD not in "".join(shown)
    as_json = cli.run("messages", IMEI_B, "--json").stdout
    assert BSI_SHOWN in as_json and APN_PASSWORD not in as_json
    assert len(cli.run("messages", IMEI_A, "--since", "4h").stdout.splitlines()) == 3
    done = cli.run("messages", IMEI_A, "--since", "4h", "--limit", "1")
    assert done.stdout.split()[3:5] == ["out", "SACK"] and "the last 1 of 3 frames" in done.stderr
    assert json.loads(cli.run("messages", IMEI_A, "--json").stdout)["total"] == 2
    assert "not a duration" in cli.run("messages", IMEI_A, "--since", "soon", code=2).stderr


def test_a_reply_recorded_on_its_frame_shows_as_the_out_line_it_was(mongo: MongoClient, db_name: str,
                                                                     cli: Cli) -> None:
    # Since part 11 a SACK or heartbeat reply is recorded on the frame it answers (`reply`); both
    # views show it as before: the frame, then its reply going out. Old documents read as they did.
    messages = mongo[db_name].messages
    follow = cli.popen("tail", IMEI_A, "--duration", "60")
    try:
        wait_for(lambda: follow.stderr.readline().startswith("following the frames of"), timeout=30,
                 what="tail started")
        messages.insert_one(frame(IMEI_A, "in", FRI.format(imei=IMEI_A), "report", reply="+SACK:0101",
                                  reply_when="once_stored"))
        messages.insert_one(frame(IMEI_A, "in", "+ACK:GTHBD,090302,865083030000001,,20240101000000,0102",
                                  "heartbeat", reply="+SACK:GTHBD,090302,0102", reply_when="at_once"))
        lines = [follow.stdout.readline().rstrip("\n") for _ in range(4)]
    finally:
        follow.send_signal(signal.SIGINT)
        follow.communicate(timeout=30)
    assert [line.split()[2:7] for line in lines] == [
        [IMEI_A, "in", "GTFRI", "report", "ok"], [IMEI_A, "out", "SACK", "sack", "ok"],
        [IMEI_A, "in", "GTHBD", "heartbeat", "ok"], [IMEI_A, "out", "GTHBD", "sack", "ok"],
    ]
    assert lines[1].endswith("  +SACK:0101") and lines[3].endswith("  +SACK:GTHBD,090302,0102")
    out = cli.run("messages", IMEI_A).stdout.splitlines()
    assert [line.split()[3:5] for line in out] == [["in", "GTFRI"], ["out", "SACK"], ["in", "GTHBD"], ["out", "GTHBD"]]
    shown = json.loads(cli.run("messages", IMEI_A, "--json").stdout)["messages"]
    assert [(m["direction"], m["kind"], m["raw"]) for m in shown][1] == ("out", "sack", "+SACK:0101")


def test_devices_pages_and_says_how_many(mongo: MongoClient, db_name: str, cli: Cli) -> None:
    mongo[db_name].devices.insert_many([{"_id": f"86508303{n:07d}", "online": n % 2 == 0, "gateway_id": "gw-a"}
                                        for n in range(25)])
    done = cli.run("devices", "--limit", "10")
    assert len(done.stdout.splitlines()) == 11 and done.stdout.splitlines()[1].startswith("865083030000000")
    assert done.stderr.strip() == "devices 1-10 of 25; next page: --skip 10"
    done = cli.run("devices", "--limit", "10", "--skip", "20")
    assert [line.split()[0] for line in done.stdout.splitlines()[1:]] == [f"86508303{n:07d}" for n in range(20, 25)]
    assert done.stderr.strip() == "devices 21-25 of 25"
    assert cli.run("devices", "--online").stderr.strip() == "devices online 1-13 of 13"
    shown = json.loads(cli.run("devices", "--skip", "5", "--limit", "5", "--json").stdout)
    assert shown["total"] == 25 and len(shown["devices"]) == 5 and shown["devices"][0]["imei"] == "865083030000005"


def test_every_option_has_help_with_its_default() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in {"gv50ctl": parser, **subparsers.choices}.items():
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or not action.option_strings:
                continue
            assert action.help and "default" in action.help, f"{name} {action.option_strings}"


def test_send_help_lists_every_type_with_its_parameters_and_an_example(cli: Cli) -> None:
    out = cli.run("send", "--help").stdout
    for type_ in COMMAND_TYPES:
        assert f"\n  {type_}" in out and example_command(type_) in out, type_
    assert "port             required; integer, 0..65535" in out
    assert "report_mode      default 3; integer, one of 0, 1, 2, 3, 4, 5, 6, 8" in out
    assert "send_interval_s  optional (required in mode 1, 4, 5); integer, 5..86400" in out
    for type_, params in EXAMPLE_PARAMS.items():  # every example is a valid command
        validate_command(type_, params)
    assert set(EXAMPLE_PARAMS) <= COMMAND_TYPES


def test_frame_types() -> None:
    assert frame_type("+RESP:GTFRI,090302,x") == "GTFRI" and frame_type("+BUFF:GTIGN,1") == "GTIGN"
    assert frame_type("+ACK:GTHBD,1") == "GTHBD" and frame_type("+SACK:GTHBD,090302,0001") == "GTHBD"
    assert frame_type("+SACK:0101") == "SACK" and frame_type("AT+GTRTO=gv50,8,,,,,,0001") == "GTRTO"
    assert frame_type("2b525350") == "HEX" and frame_type("garbage") == "?" and frame_type(None) == "-"
