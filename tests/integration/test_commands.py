"""Commands end to end: a real mongod, real gateway processes, and trackers on real sockets that
decode each `AT+GT...$` they receive and answer it with the `+ACK` a GV50 would send."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

from gv50_gevent.protocol.commands import CommandLine, decode_command
from tests.support import REPO, GatewayProcess, wait_for

# V4.01 A8: the +ACK of AT+GTRTO names the sub-command before the serial.
RTO_SUBS = {"1": "RTL", "3": "REBOOT", "8": "VER", "A": "IOS"}
VERSION = "090302"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def imei_of(n: int) -> str:
    return f"86508303{n:07d}"


class Device:
    """A GV50 on a real socket: says hello with a heartbeat, receives commands, acknowledges them."""

    def __init__(self, gw: GatewayProcess, imei: str) -> None:
        self.tracker = gw.connect()
        self.imei = imei
        self.count = 0
        self.buf = b""
        self.commands: list[CommandLine] = []

    def _count(self) -> str:
        self.count += 1
        return f"{self.count:04X}"

    def hello(self) -> None:
        count = self._count()
        self.tracker.send_line(f"+ACK:GTHBD,{VERSION},{self.imei},,20240101000000,{count}")
        frame = self._frame(5.0)
        assert frame == f"+SACK:GTHBD,{VERSION},{count}$", frame

    def _frame(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while b"$" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.tracker.sock.settimeout(remaining)
            try:
                chunk = self.tracker.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                return None
            assert chunk, f"{self.imei}: connection closed by the gateway"
            self.buf += chunk
        frame, _, self.buf = self.buf.partition(b"$")
        return frame.decode("ascii") + "$"

    def frames_until(self, wanted: str, timeout: float = 5.0) -> list[str]:
        """Every frame received up to and including `wanted` (a SACK, say), each within `timeout`."""
        frames: list[str] = []
        while wanted not in frames:
            frame = self._frame(timeout)
            assert frame is not None, f"{self.imei}: no {wanted} within {timeout}s; got {frames}"
            frames.append(frame)
        return frames

    def receive(self, timeout: float = 5.0) -> CommandLine | None:
        """The next command line (SACKs are skipped), or None if none arrives in time."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self._frame(max(0.0, deadline - time.monotonic()))
            if frame is None:
                return None
            if frame.startswith("AT+GT"):
                cmd = decode_command(frame)
                self.commands.append(cmd)
                return cmd

    def command(self, timeout: float = 5.0) -> CommandLine:
        cmd = self.receive(timeout)
        assert cmd is not None, f"{self.imei}: no command within {timeout}s"
        return cmd

    def ack_line(self, cmd: CommandLine, serial: str | None = None, type_: str | None = None) -> str:
        sub = f"{RTO_SUBS[cmd.fields[0] or '']}," if cmd.type == "GTRTO" else ""
        return (f"+ACK:{type_ or cmd.type},{VERSION},{self.imei},,{sub}{serial or cmd.serial},"
                f"20240101000000,{self._count()}")

    def ack(self, cmd: CommandLine, serial: str | None = None, type_: str | None = None) -> str:
        line = self.ack_line(cmd, serial, type_)
        self.tracker.send_line(line)
        return line

    def close(self) -> None:
        self.tracker.close()

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def status_is(gw: GatewayProcess, command_id: Any, status: str, timeout: float = 5.0) -> dict[str, Any]:
    return wait_for(lambda: (d := gw.db.commands.find_one({"_id": command_id})) and d.get("status") == status and d,
                    timeout=timeout, what=f"command {command_id} {status}")


def statuses(doc: dict[str, Any]) -> list[str]:
    return [h["status"] for h in doc["history"]]


def insert(gw: GatewayProcess, imei: str, type_: str, **fields: Any) -> Any:
    return gw.db.commands.insert_one({"imei": imei, "type": type_, **fields}).inserted_id


# --- the lifecycle on one gateway ---

def test_block_is_sent_acknowledged_and_blocks_the_device(start_gateway) -> None:
    gw = start_gateway(GATEWAY_ID="gw-one")
    imei = imei_of(1)
    with Device(gw, imei) as dev:
        dev.hello()
        cid = insert(gw, imei, "block")  # the operator writes only imei and type
        cmd = dev.command()
        assert cmd.type == "GTOUT" and cmd.password == "gv50" and cmd.fields[0] == "1"
        sent = status_is(gw, cid, "sent")
        assert sent["serial"] == cmd.serial and sent["attempts"] == 1 and sent["gateway_id"] == "gw-one"
        assert isinstance(sent["created_at"], datetime) and sent["sent_at"] >= sent["created_at"]
        line = dev.ack(cmd)
        done = status_is(gw, cid, "acknowledged")
        assert done["ack"] == line and done["acknowledged_at"] == done["finished_at"] == done["history"][-1]["at"]
        assert done["sent_at"] == done["history"][0]["at"] == done["sent_via"]["at"]  # one moment, one clock read
        assert statuses(done) == ["sent", "acknowledged"] and done["history"][0]["serial"] == cmd.serial
        wait_for(lambda: (gw.db.devices.find_one({"_id": imei}) or {}).get("blocked") is True, what="devices.blocked")
        # The command went out through the session, so it is in the raw archive too.
        out = wait_for(lambda: gw.db.messages.find_one({"imei": imei, "direction": "out", "kind": "command"}),
                       what="archived command")
        assert out["raw"] == cmd.raw.rstrip("$") and out["gateway_id"] == "gw-one"

        unblock = insert(gw, imei, "unblock")
        cmd = dev.command()
        assert cmd.type == "GTOUT" and cmd.fields[0] == "0"
        dev.ack(cmd)
        status_is(gw, unblock, "acknowledged")
        wait_for(lambda: gw.db.devices.find_one({"_id": imei})["blocked"] is False, what="unblocked")


def test_answers_and_set_server_side_effects(start_gateway) -> None:
    gw = start_gateway(GATEWAY_ID="gw-one", SACK_MODE="off")
    imei = imei_of(2)
    with Device(gw, imei) as dev:
        dev.hello()
        version = insert(gw, imei, "get_version")
        cmd = dev.command()
        assert cmd.type == "GTRTO" and cmd.fields[0] == "8"
        dev.ack(cmd)
        status_is(gw, version, "acknowledged")
        report = f"+RESP:GTVER,{VERSION},{imei},,GV50,020E,0105,20240101000000,{dev._count()}"
        dev.tracker.send_line(report)
        done = wait_for(lambda: (d := gw.db.commands.find_one({"_id": version})) and "answer" in d and d,
                        what="answer")
        assert done["answer"]["raw"] == report and done["answer"]["report"] == "GTVER"

        server = insert(gw, imei, "set_server", params={"host": "gps.example.com", "port": 5004, "sack_enable": True})
        cmd = dev.command()
        assert cmd.type == "GTSRI" and "gps.example.com" in cmd.fields
        dev.ack(cmd)
        status_is(gw, server, "acknowledged")
        device = wait_for(lambda: (d := gw.db.devices.find_one({"_id": imei})) and "config" in d and d, what="config")
        assert device["config"]["server"]["host"] == "gps.example.com" and device["config"]["server"]["port"] == 5004
        # The device now expects +SACK for every message: this session switched it on.
        count = dev._count()
        dev.tracker.send_line(report[: report.rindex(",") + 1] + count)
        assert dev._frame(3.0) == f"+SACK:{count}$"
    # ... and it holds after a reconnect: the gateway reads it back from devices.sack_enable.
    with Device(gw, imei) as dev:
        dev.hello()
        count = dev._count()
        dev.tracker.send_line(report[: report.rindex(",") + 1] + count)
        assert dev._frame(3.0) == f"+SACK:{count}$"


def test_no_ack_is_resent_with_the_same_serial_then_failed(start_gateway) -> None:
    gw = start_gateway(GATEWAY_ID="gw-one", COMMAND_ACK_TIMEOUT_S="0.7", COMMAND_MAX_ATTEMPTS="3")
    imei = imei_of(3)
    with Device(gw, imei) as dev:
        dev.hello()
        cid = insert(gw, imei, "reboot")
        first = dev.command()
        second = dev.command(3)
        third = dev.command(3)
        assert first.raw == second.raw == third.raw  # same line, same serial
        failed = status_is(gw, cid, "failed", timeout=3)
        assert failed["error"] == "no ACK after 3 attempts" and failed["attempts"] == 3
        assert statuses(failed) == ["sent", "sent", "sent", "failed"]
        assert [h.get("attempt") for h in failed["history"][:3]] == [1, 2, 3]
        assert dev.receive(1.0) is None  # nothing after the last attempt
        dev.ack(first)  # too late: harmless
        wait_for(lambda: f"unmatched +ACK:GTRTO serial {first.serial}" in gw.log(), what="the late ACK judged")
        assert gw.db.commands.find_one({"_id": cid})["status"] == "failed"

        own = insert(gw, imei, "reboot", max_attempts=1)  # the command's own max_attempts wins
        dev.command()
        assert status_is(gw, own, "failed", timeout=3)["error"] == "no ACK after 1 attempts"


def test_offline_device_gets_its_command_within_a_second_of_connecting(start_gateway) -> None:
    gw = start_gateway(GATEWAY_ID="gw-one")
    imei = imei_of(4)
    cid = insert(gw, imei, "locate")
    pending = wait_for(lambda: (d := gw.db.commands.find_one({"_id": cid})) and "attempts" in d and d,
                       what="normalised")
    assert pending["status"] == "pending" and pending["attempts"] == 0 and pending["history"] == []
    assert pending["created_at"] == cid.generation_time
    with Device(gw, imei) as dev:
        started = time.monotonic()
        dev.hello()
        cmd = dev.command(1.0)
        assert time.monotonic() - started < 1.0
        assert cmd.type == "GTRTO" and cmd.fields[0] == "1"
        dev.ack(cmd)
        status_is(gw, cid, "acknowledged")


def test_expired_cancelled_and_invalid_commands_are_never_sent(start_gateway) -> None:
    gw = start_gateway(GATEWAY_ID="gw-one", COMMAND_TTL_S="3600")
    imei = imei_of(5)
    long_ago = utcnow() - timedelta(hours=2)
    expired = insert(gw, imei, "block", expires_at=utcnow() - timedelta(minutes=1))
    too_old = insert(gw, imei, "block", created_at=long_ago)  # created_at + COMMAND_TTL_S has passed
    cancelled = insert(gw, imei, "block")
    bad_host = insert(gw, imei, "set_server", params={"host": "evil.com,1", "port": 5004})
    bad_port = insert(gw, imei, "set_server", params={"host": "gps.example.com", "port": 70000})
    unknown = insert(gw, imei, "self_destruct")
    wait_for(lambda: (d := gw.db.commands.find_one({"_id": cancelled})) and d.get("status") == "pending",
             what="pending")
    gw.db.commands.update_one({"_id": cancelled, "status": "pending"}, {"$set": {"status": "cancelled"}})

    for cid in (expired, too_old):
        doc = status_is(gw, cid, "expired", timeout=3)  # the device never connected: expired anyway
        assert statuses(doc) == ["expired"] and "sent_at" not in doc
    for cid, field in ((bad_host, "params.host"), (bad_port, "params.port"), (unknown, "type")):
        doc = status_is(gw, cid, "failed")
        assert doc["error"].startswith(f"{field}: ") and statuses(doc) == ["failed"] and "serial" not in doc
    assert "','" in gw.db.commands.find_one({"_id": bad_host})["error"]

    # A deadline that passes while the command waits for its device is honoured: it is never sent.
    late = insert(gw, imei, "block", expires_at=utcnow() + timedelta(seconds=1.5))
    ok = insert(gw, imei, "unblock")
    status_is(gw, late, "expired", timeout=5)  # by the housekeeper, while its device is away
    with Device(gw, imei) as dev:
        dev.hello()
        cmd = dev.command(2)
        assert cmd.type == "GTOUT" and cmd.fields[0] == "0"  # only `unblock`
        dev.ack(cmd)
        status_is(gw, ok, "acknowledged")
        assert dev.receive(0.5) is None
    assert status_is(gw, late, "expired")["history"][-1]["status"] == "expired"
    assert gw.db.commands.find_one({"_id": cancelled})["status"] == "cancelled"
    assert len(dev.commands) == 1


def test_cancel_of_a_queued_command_while_connected(start_gateway) -> None:
    gw = start_gateway(GATEWAY_ID="gw-one")
    imei = imei_of(6)
    with Device(gw, imei) as dev:
        dev.hello()
        first = insert(gw, imei, "block")
        queued = insert(gw, imei, "reboot")
        third = insert(gw, imei, "unblock")
        cmd = dev.command()
        assert cmd.type == "GTOUT" and cmd.fields[0] == "1"
        assert dev.receive(0.3) is None  # one at a time: the next waits for this ACK
        gw.db.commands.update_one({"_id": queued}, {"$set": {"status": "cancelled"}})
        dev.ack(cmd)
        status_is(gw, first, "acknowledged")
        cmd = dev.command()
        assert cmd.type == "GTOUT" and cmd.fields[0] == "0"  # the cancelled reboot was skipped
        dev.ack(cmd)
        status_is(gw, third, "acknowledged")
    assert gw.db.commands.find_one({"_id": queued})["status"] == "cancelled"


def cli(gw: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONGODB_", "MONGOD_"))}
    env.update(MONGODB_URI=gw.settings["MONGODB_URI"], MONGODB_DB=gw.settings["MONGODB_DB"])
    return subprocess.run([sys.executable, "-m", "gv50_gevent.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)


def test_cancel_after_sending_is_never_resent_and_keeps_the_late_ack(start_gateway) -> None:
    ack_timeout = 1.0
    gw = start_gateway(GATEWAY_ID="gw-one", COMMAND_ACK_TIMEOUT_S=str(ack_timeout), COMMAND_MAX_ATTEMPTS="10")
    imei = imei_of(8)
    with Device(gw, imei) as dev:
        dev.hello()
        cid = insert(gw, imei, "block")
        cmd = dev.command()  # sent; the tracker stays silent for now
        status_is(gw, cid, "sent")
        done = cli(gw, "cancel", str(cid), "--json")
        assert done.returncode == 0, done.stderr
        cancelled = json.loads(done.stdout)
        assert cancelled["status"] == "cancelled" and cancelled["history"][-1]["status"] == "cancelled"
        sends = cancelled["attempts"]  # resends that happened before the cancel landed are legitimate
        assert sends >= 1 and statuses(gw.db.commands.find_one({"_id": cid})) == ["sent"] * sends + ["cancelled"]
        # Never sent again: wait well past the ACK timeout (every resend would come within it).
        while dev.receive(3 * ack_timeout) is not None:
            pass
        assert len(dev.commands) == sends and all(c.raw == cmd.raw for c in dev.commands)

        line = dev.ack(cmd)  # the tracker had acted after all
        doc = wait_for(lambda: (d := gw.db.commands.find_one({"_id": cid})) and "late_ack" in d and d,
                       what="late_ack recorded")
        assert doc["status"] == "cancelled" and doc["late_ack"]["raw"] == line
        assert isinstance(doc["late_ack"]["at"], datetime) and doc["late_ack"]["at"] >= doc["finished_at"]
        assert "ack" not in doc and "acknowledged_at" not in doc and doc["attempts"] == sends
        assert statuses(doc) == ["sent"] * sends + ["cancelled"]
        assert (gw.db.devices.find_one({"_id": imei}) or {}).get("blocked") is None  # the ACK changed nothing else
        judged = gw.log().count(f"unmatched +ACK:GTOUT serial {cmd.serial}")
        dev.ack(cmd)  # a duplicate of the late ACK: the first one stays
        wait_for(lambda: gw.log().count(f"unmatched +ACK:GTOUT serial {cmd.serial}") > judged,
                 what="the duplicate judged")
        assert gw.db.commands.find_one({"_id": cid})["late_ack"] == doc["late_ack"]
        assert "kept as late_ack" in gw.log()

        after = insert(gw, imei, "unblock")  # the device's next command goes out as usual
        nxt = dev.command()
        assert nxt.fields[0] == "0" and nxt.serial != cmd.serial
        dev.ack(nxt)
        status_is(gw, after, "acknowledged")
    with Device(gw, imei) as again:  # nor is it sent on the next connection
        again.hello()
        assert again.receive(2 * ack_timeout) is None
    assert gw.db.commands.find_one({"_id": cid})["status"] == "cancelled"
    assert "cannot cancel" in cli(gw, "cancel", str(cid)).stderr


def test_acks_out_of_order_duplicate_or_unknown_are_harmless(start_gateway) -> None:
    gw = start_gateway(GATEWAY_ID="gw-one", COMMAND_ACK_TIMEOUT_S="0.6")
    imei = imei_of(7)
    with Device(gw, imei) as dev:
        dev.hello()
        c1 = insert(gw, imei, "block")
        c2 = insert(gw, imei, "get_info")
        first = dev.command()
        resent = dev.command(2)  # no ACK in time: resent with the same serial
        assert resent.raw == first.raw
        unknown = "ABCD" if first.serial != "ABCD" else "ABCE"
        dev.ack(first, serial=unknown)  # unknown serial
        line = dev.ack(first)           # acknowledges c1 ...
        dev.ack(resent)                 # ... and the ACK of the resend is a duplicate
        second = dev.command()
        assert second.type == "GTRTO" and second.fields[0] == "A" and second.serial != first.serial
        dev.ack(first)                          # a late duplicate of c1 while c2 is in flight
        dev.ack(second, type_="GTOUT")          # c2's serial with the wrong type
        wait_for(lambda: f"serial matches command {c2} but it expects" in gw.log(), what="the wrong type judged")
        doc2 = gw.db.commands.find_one({"_id": c2})
        assert doc2["status"] == "sent" and doc2["attempts"] == 1
        good = dev.ack(second)
        done2 = status_is(gw, c2, "acknowledged")
        assert done2["ack"] == good and statuses(done2) == ["sent", "acknowledged"]
        done1 = gw.db.commands.find_one({"_id": c1})
        assert done1["ack"] == line and statuses(done1) == ["sent", "sent", "acknowledged"]
    wait_for(lambda: "unmatched +ACK:GTOUT serial " + unknown in gw.log(), what="logged unknown ACK")
    assert gw.log().count("unmatched +ACK:") >= 4


def test_an_ack_whose_write_fails_for_good_does_not_hold_its_sack(start_gateway) -> None:
    """The commands collection's validator (the operator's) refuses `acknowledged`: an error that
    never clears. The ACK's frame is SACKed at once (the frame itself is archived), the failure is
    logged once, and the tracker's connection goes on: its heartbeats are still answered."""
    gw = start_gateway(GATEWAY_ID="gw-one", SACK_MODE="all", COMMAND_ACK_TIMEOUT_S="30")
    imei = imei_of(8)
    with Device(gw, imei) as dev:
        dev.hello()
        cid = insert(gw, imei, "block")
        cmd = dev.command()
        status_is(gw, cid, "sent")
        gw.db.command("collMod", "commands", validator={"status": {"$ne": "acknowledged"}})
        line = dev.ack(cmd)
        dev.frames_until(f"+SACK:{line.rsplit(',', 1)[1]}$")
        assert gw.db.messages.find_one({"raw": line})
        dev.hello()  # the connection is not held
        assert gw.log().count("_handle_ack failed for good") == 1
        assert "retrying" not in gw.log()
        assert gw.db.commands.find_one({"_id": cid})["status"] == "sent"


# --- restarts and several gateways ---

def test_watcher_resumes_after_a_gateway_restart(start_gateway) -> None:
    first = start_gateway(GATEWAY_ID="gw-restart")
    imei = imei_of(8)
    before = insert(first, imei, "reboot")
    wait_for(lambda: first.db.commands.find_one({"_id": before, "attempts": 0}), what="normalised")
    assert first.terminate() == 0
    state = first.db.gateway_state.find_one({"_id": "commands_watcher:gw-restart"})
    assert state is not None and state["resume_token"]

    during = insert(first, imei, "block")  # inserted while no gateway runs
    second = start_gateway(GATEWAY_ID="gw-restart")
    wait_for(lambda: "resumed from the stored token" in second.log(), what="resume log")
    with Device(second, imei) as dev:
        dev.hello()
        for cid, type_ in ((before, "GTRTO"), (during, "GTOUT")):
            cmd = dev.command()
            assert cmd.type == type_
            dev.ack(cmd)
            assert status_is(second, cid, "acknowledged")["gateway_id"] == "gw-restart"
        after = insert(second, imei, "unblock")  # and the new stream carries what comes next
        dev.ack(dev.command())
        status_is(second, after, "acknowledged")


def test_a_resume_token_that_cannot_resume_leads_to_a_sweep(start_gateway) -> None:
    first = start_gateway(GATEWAY_ID="gw-stale")
    imei = imei_of(10)
    with first.db.commands.watch(max_await_time_ms=200) as stream:
        cid = insert(first, imei, "reboot")
        change = wait_for(stream.try_next, what="change event")
    assert first.terminate() == 0
    # An event token moved to a time when no such event happened: mongod refuses to resume
    # (ChangeStreamFatalError 280), the same path as a token that fell out of the oplog (286).
    data = change["_id"]["_data"]
    forged = {"_data": "82" + "00000010" + "00000001" + data[18:]}
    first.db.gateway_state.update_one({"_id": "commands_watcher:gw-stale"}, {"$set": {"resume_token": forged}})
    second = start_gateway(GATEWAY_ID="gw-stale")
    wait_for(lambda: "cannot resume" in second.log(), timeout=30, what="history lost")
    with Device(second, imei) as dev:
        dev.hello()
        dev.ack(dev.command())
        status_is(second, cid, "acknowledged")
    wait_for(lambda: second.db.gateway_state.find_one({"_id": "commands_watcher:gw-stale"})["resume_token"] != forged,
             what="a fresh token stored")


def test_sent_command_of_a_dead_gateway_is_taken_over(start_gateway) -> None:
    old = start_gateway(GATEWAY_ID="gw-old", COMMAND_ACK_TIMEOUT_S="30")
    imei = imei_of(9)
    with Device(old, imei) as dev:
        dev.hello()
        cid = insert(old, imei, "block")
        lost = dev.command()  # the device never acknowledges it
    assert old.terminate() == 0
    new = start_gateway(GATEWAY_ID="gw-new")
    with Device(new, imei) as dev:
        dev.hello()
        cmd = dev.command(1.0)
        assert cmd.raw == lost.raw  # same serial, resent at once by the gateway now holding the device
        dev.ack(cmd)
        done = status_is(new, cid, "acknowledged")
        assert done["gateway_id"] == "gw-new" and done["attempts"] == 2
        assert done["history"][1]["taken_over_from"] == "gw-old"


def test_two_gateways_deliver_each_command_exactly_once_by_its_owner(start_gateway) -> None:
    settings = {"COMMAND_ACK_TIMEOUT_S": "20"}
    gateways = {"gw-a": start_gateway(GATEWAY_ID="gw-a", **settings),
                "gw-b": start_gateway(GATEWAY_ID="gw-b", **settings)}
    owner = {imei_of(100 + n): ("gw-a" if n % 2 else "gw-b") for n in range(20)}
    devices = {imei: Device(gateways[gw], imei) for imei, gw in owner.items()}
    db = gateways["gw-a"].db
    types = ["block", "unblock", "reboot", "get_version", "locate"]
    try:
        for dev in devices.values():
            dev.hello()
        docs = [{"imei": imei, "type": types[i % len(types)]} for i in range(10) for imei in owner]
        ids = db.commands.insert_many(docs).inserted_ids

        def serve(dev: Device) -> None:
            for _ in range(10):
                dev.ack(dev.command(15))
            assert dev.receive(0.5) is None  # nothing sent twice

        with ThreadPoolExecutor(len(devices)) as pool:
            for future in [pool.submit(serve, dev) for dev in devices.values()]:
                future.result()
        wait_for(lambda: db.commands.count_documents({"status": "acknowledged"}) == 200, timeout=10,
                 what="200 acknowledged")
    finally:
        for dev in devices.values():
            dev.close()
    by_imei: dict[str, list[dict[str, Any]]] = {}
    for doc in db.commands.find({"_id": {"$in": ids}}).sort("_id", 1):
        by_imei.setdefault(doc["imei"], []).append(doc)
        assert doc["gateway_id"] == owner[doc["imei"]] and doc["attempts"] == 1
        assert statuses(doc) == ["sent", "acknowledged"]
    for imei, dev in devices.items():
        sent = by_imei[imei]
        # Each device got exactly its 10 commands, once each, in the order they were inserted.
        assert [c.serial for c in dev.commands] == [d["serial"] for d in sent]
        assert len({c.serial for c in dev.commands}) == 10
    for gw_id in gateways:
        query = {"kind": "command", "direction": "out", "gateway_id": gw_id}
        wait_for(lambda: db.messages.count_documents(query) >= 100, what=f"{gw_id} archive")
        assert db.messages.count_documents(query) == 100


# --- the command path under load: its own connections, and where a command's time goes ---

def test_the_change_stream_has_a_client_of_its_own_and_the_claims_find_connections_open(start_gateway) -> None:
    """A burst of claims must neither make the change stream wait for a connection behind them nor
    wait for connections to be opened (under ingest that took seconds). The claims have a client
    of their own too: ACK and answer writes and the fleet's reads kept the command client's
    connections all in use, and a claim waited for one behind them."""
    gw = start_gateway(GATEWAY_ID="gw-pools")

    def connections() -> dict[str, Any] | None:
        ops = list(gw.db.client.admin.aggregate([{"$currentOp": {"allUsers": True, "idleConnections": True}}]))
        by_app: dict[str, list[dict[str, Any]]] = {}
        for op in ops:
            by_app.setdefault(op.get("appName", ""), []).append(op)
        streams = [op for op in by_app.get("gv50_gevent-commands-watch", [])
                   if (op.get("command") or {}).get("getMore") is not None
                   or "$changeStream" in str((op.get("command") or {}).get("pipeline", ""))]
        warm = len(by_app.get("gv50_gevent-commands", []))
        claims = len(by_app.get("gv50_gevent-commands-claim", []))
        return {"streams": streams, "warm": warm, "claims": claims} if streams and warm >= 8 and claims >= 8 else None

    found = wait_for(connections, timeout=15, what="the watcher's own client and the command room's open connections")
    assert found["warm"] >= 8 and found["claims"] >= 8


def test_a_new_commands_steps_are_timed_in_the_gateways_figures(start_gateway) -> None:
    gw = start_gateway(GATEWAY_ID="gw-steps", GATEWAY_ALIVE_INTERVAL_S="0.5")
    imei = imei_of(7)
    with Device(gw, imei) as dev:
        dev.hello()
        insert(gw, imei, "get_version")
        dev.ack(dev.command())

        def steps() -> dict[str, Any] | None:
            stats = (gw.db.gateway_state.find_one({"_id": "gateway:gw-steps"}) or {}).get("stats") or {}
            found = stats.get("command_steps_ms") or {}
            return found if set(found) == {"stream", "dispatch", "claim", "send"} else None

        found = wait_for(steps, timeout=10, what="command_steps_ms with every step")
    for name, figure in found.items():
        assert figure["samples"] == 1 and 0 <= figure["p50"] == figure["p99"] < 5000, (name, figure)
