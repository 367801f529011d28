"""The device simulator: its lines parse, it answers commands like a GV50, and a fleet of it
against a real gateway and a real mongod stores every SACKed report exactly once, +BUFF replays
after a forced reconnect included."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from typing import Any

import gevent
import pytest
from gevent import socket as gsocket

from gv50_gevent.protocol import Ack, Heartbeat, Report, parse
from gv50_gevent.simulator import BUFFER_LIMIT, Behaviour, SimTracker
from tests.support import REPO, wait_for

IMEI = "860000000000042"


def run_simulator(port: int, *args: str, timeout: float = 90) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "gv50_gevent.simulator", "--host", "127.0.0.1", "--port", str(port), "--json", *args]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def sent_time(line: str) -> datetime:
    return datetime.strptime(line.rstrip("$").split(",")[-2], "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)


def assert_stored_exactly_once(db: Any, report: dict[str, Any]) -> None:
    """Every SACKed GTFRI is one `positions` document, and nothing is there twice."""
    sacked = report["sacked_lines"]
    assert sorted(sacked) == sorted(f"{report['config']['imei_base'] + i:015d}" for i in range(report["devices"]))
    for imei, lines in sacked.items():
        fris = [line for line in lines if ":GTFRI," in line]
        docs = list(db.positions.find({"imei": imei, "report": "GTFRI"}, {"count": 1, "sent_at": 1, "buffered": 1}))
        keys = [(d["count"], d["sent_at"]) for d in docs]
        assert len(keys) == len(set(keys)), f"{imei}: duplicate positions"
        expected = {(line.rstrip("$").rsplit(",", 1)[1], sent_time(line)) for line in fris}
        assert len(expected) == len(fris)
        assert set(keys) == expected, f"{imei}: stored {len(keys)}, SACKed {len(expected)}"
    dups = list(db.positions.aggregate([
        {"$group": {"_id": {"i": "$imei", "r": "$report", "s": "$sent_at", "c": "$count", "x": "$index"},
                    "n": {"$sum": 1}}},
        {"$match": {"n": {"$gt": 1}}}]))
    assert dups == []


# --- the lines ---

def test_lines_follow_the_v401_layouts_and_counts_wrap() -> None:
    t = SimTracker(IMEI, count=0xFFFE)
    fri, ign, igf, hbd = t.fri(31.5, 117.25, 42.5, azimuth=90), t.ign(), t.igf(), t.heartbeat()
    assert [len(x.rstrip("$").split(",")) for x in (fri, ign, igf, hbd)] == [30, 21, 21, 6]
    assert [x.rstrip("$").rsplit(",", 1)[1] for x in (fri, ign, igf, hbd)] == ["FFFE", "FFFF", "0000", "0001"]
    msg = parse(fri.rstrip("$"))
    assert isinstance(msg, Report) and msg.type == "GTFRI" and msg.imei == IMEI and msg.protocol_version == "090302"
    p = msg.positions[0]
    assert (p.latitude, p.longitude, p.speed_kmh, p.azimuth, p.valid) == (31.5, 117.25, 42.5, 90, True)
    assert abs((msg.sent_at - datetime.now(timezone.utc)).total_seconds()) < 5  # device time = UTC
    assert parse(ign.rstrip("$")).type == "GTIGN" and parse(igf.rstrip("$")).type == "GTIGF"
    assert isinstance(parse(hbd.rstrip("$")), Heartbeat)
    buff = SimTracker.buff(fri)
    assert buff == "+BUFF:" + fri[len("+RESP:"):]
    replayed = parse(buff.rstrip("$"))
    assert isinstance(replayed, Report) and replayed.buffered and replayed.count == "FFFE"
    assert replayed.sent_at == msg.sent_at


def test_import_does_not_monkey_patch() -> None:
    code = ("import gv50_gevent.simulator.fleet, gevent.monkey, sys; "
            "sys.exit(1 if gevent.monkey.is_module_patched('socket') else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


class FakeServer:
    """The gateway's side of one connection, on gevent sockets (this process is not patched)."""

    def __init__(self) -> None:
        self.listener = gsocket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.port = self.listener.getsockname()[1]
        self.conn: Any = None
        self.data = b""

    def accept(self) -> None:
        with gevent.Timeout(5):
            self.conn, _ = self.listener.accept()

    def lines(self, n: int, timeout: float = 5.0) -> list[str]:
        with gevent.Timeout(timeout):
            while self.data.count(b"$") < n:
                chunk = self.conn.recv(4096)
                assert chunk, f"closed; got {self.data!r}"
                self.data += chunk
        parts = self.data.split(b"$")
        self.data = b"$".join(parts[n:])
        return [p.decode() for p in parts[:n]]

    def quiet(self, seconds: float) -> bool:
        """True when nothing arrives for `seconds`."""
        timer = gevent.Timeout(seconds)
        try:
            with timer:
                chunk = self.conn.recv(4096)
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            return True
        self.data += chunk
        return False

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


@pytest.fixture
def server() -> Any:
    srv = FakeServer()
    yield srv
    srv.close()


def test_commands_get_a7_and_a8_acks_echoing_the_serial_then_the_answer(server: FakeServer) -> None:
    t = SimTracker(IMEI)
    t.connect("127.0.0.1", server.port)
    server.accept()
    assert server.lines(1)[0].startswith(f"+ACK:GTHBD,090302,{IMEI},,")  # the hello heartbeat
    server.conn.sendall(b"AT+GTOUT=gv50,1,0,0,,,,1,,,,,,,00A1$")
    ack = parse(server.lines(1)[0])
    assert isinstance(ack, Ack) and (ack.type, ack.serial, ack.sub, ack.imei) == ("GTOUT", "00A1", None, IMEI)
    server.conn.sendall(b"AT+GTRTO=gv50,8,,,,,,00A2$AT+GTRTO=gv50,A,,,,,,00A3$AT+GTRTO=gv50,1,,,,,,00A4$")
    lines = server.lines(6)
    assert [ln.split(",")[0] for ln in lines] == ["+ACK:GTRTO", "+RESP:GTVER", "+ACK:GTRTO", "+RESP:GTIOS",
                                                  "+ACK:GTRTO", "+RESP:GTRTL"]
    acks = [parse(lines[i]) for i in (0, 2, 4)]
    assert [(a.sub, a.serial) for a in acks] == [("VER", "00A2"), ("IOS", "00A3"), ("RTL", "00A4")]
    assert lines[3].split(",")[7:9] == ["01", "01"]  # GTIOS: ignition input on, output 1 on (after GTOUT)
    assert all(isinstance(parse(ln), (Ack, Report)) for ln in lines)
    counts = [int(ln.rsplit(",", 1)[1], 16) for ln in lines]
    assert counts == list(range(counts[0], counts[0] + 6))
    server.conn.sendall(b"AT+GTGEO=gv50,4,3,121.412248,31.187891,1000,600,1,1,0,0,,,,,000A$")
    geo = parse(server.lines(1)[0])
    assert (geo.type, geo.sub, geo.serial) == ("GTGEO", "4", "000A")
    assert [r[2] for r in t.commands][0] == "AT+GTOUT=gv50,1,0,0,,,,1,,,,,,,00A1$"
    assert all(r[1] is not None and r[1] >= r[0] for r in t.commands)
    t.disconnect()


def test_switches_silent_late_and_duplicate(server: FakeServer) -> None:
    t = SimTracker(IMEI, Behaviour(silent=True))
    t.connect("127.0.0.1", server.port, hello=False)
    server.accept()
    server.conn.sendall(b"AT+GTRTO=gv50,3,,,,,,0001$")
    assert server.quiet(0.5) and len(t.commands) == 1 and t.commands[0][1] is None
    t.disconnect()

    t = SimTracker(IMEI, Behaviour(ack_delay=0.6, duplicate_ack=True))
    t.connect("127.0.0.1", server.port, hello=False)
    server.accept()
    server.conn.sendall(b"AT+GTFRI=gv50,1,1,,1,1000,2300,,30,,,,,600,,,,,0009$")
    assert server.quiet(0.4)
    first, second = server.lines(2, timeout=2)
    assert first == second and parse(first).serial == "0009"
    assert t.commands[0][1] - t.commands[0][0] >= 0.55
    t.disconnect()


def test_sack_buffer_replays_as_buff_after_reconnect(server: FakeServer) -> None:
    t = SimTracker(IMEI, Behaviour(sack=True, track_sacked=True))
    t.connect("127.0.0.1", server.port, hello=False)
    server.accept()
    lines = [t.fri() for _ in range(3)]
    for line in lines:
        assert t.send_report(line)
    server.lines(3)
    counts = [line.rstrip("$").rsplit(",", 1)[1] for line in lines]
    server.conn.sendall(f"+SACK:{counts[0]}$".encode())
    wait_for(lambda: (gevent.sleep(0.01), t.sacked_count == 1)[1], what="first SACK")
    t.disconnect()
    server.conn.close()
    offline = t.fri()
    assert not t.send_report(offline) and list(t.buffer) == counts[1:] + [offline.rstrip("$").rsplit(",", 1)[1]]
    t.connect("127.0.0.1", server.port)
    server.accept()
    replay = server.lines(3)
    assert replay == [SimTracker.buff(line).rstrip("$") for line in lines[1:] + [offline]]
    server.conn.sendall("".join(f"+SACK:{c}$" for c in [*counts[1:], offline.rstrip('$').rsplit(',', 1)[1]]).encode())
    gevent.sleep(0)
    assert t.wait_sacked(2) and t.sacked == {*lines, offline} and t.replayed == 3
    t.disconnect()


def test_storm_backfill_replays_a_full_buffer_in_large_writes(server: FakeServer) -> None:
    """A tracker back from an outage: 600 reports made while offline (30 s apart, ending now),
    replayed as +BUFF in writes of about 100 KB; a heartbeat after them is timed against their
    SACKs; and a connection the server closes is counted as dropped by the server."""
    t = SimTracker(IMEI, Behaviour(sack=True, replay_bytes=100_000))
    replies: list[tuple[float, bool, float]] = []
    t.on_hbd_reply = lambda *reply: replies.append(reply)
    t.backfill(BUFFER_LIMIT, every_s=30.0)
    lines = [line for line, _ in t.buffer.values()]
    assert len(lines) == BUFFER_LIMIT and t.sent == 0
    times = [sent_time(line) for line in lines]
    assert (times[-1] - times[0]).total_seconds() == 30 * (BUFFER_LIMIT - 1)
    assert abs((times[-1] - datetime.now(timezone.utc)).total_seconds()) < 5
    chunks = t._replay_chunks(lines)
    sizes = [sum(len(line) for line in lines[a:b]) for a, b in chunks]
    assert chunks[0][0] == 0 and chunks[-1][1] == BUFFER_LIMIT
    assert all(end == start for (_, end), (start, _) in zip(chunks, chunks[1:]))  # contiguous
    assert all(size <= 100_000 for size in sizes) and sizes[0] > 90_000  # large writes, whole lines

    t.connect("127.0.0.1", server.port)
    server.accept()
    replay = server.lines(BUFFER_LIMIT)
    assert replay == [SimTracker.buff(line).rstrip("$") for line in lines] and t.replayed == BUFFER_LIMIT
    hbd = t.heartbeat()
    assert t.send_line(hbd)
    assert server.lines(1) == [hbd.rstrip("$")]
    # The SACKs of the replay, then the heartbeat's reply 0.3 s later: the reply lagged its own
    # reports' SACKs by about 0.3 s.
    server.conn.sendall("".join(f"+SACK:{line.rstrip('$').rsplit(',', 1)[1]}$" for line in lines).encode())
    assert t.wait_sacked(5)
    gevent.sleep(0.3)
    server.conn.sendall(f"+SACK:GTHBD,090302,{hbd.rstrip('$').rsplit(',', 1)[1]}$".encode())
    wait_for(lambda: (gevent.sleep(0.01), replies)[1], what="the heartbeat reply")
    (latency, hello, behind), = replies
    assert not hello and latency >= behind and 0.25 <= behind < 1.0
    # The server closes the connection: the tracker counts it, and knows no reply can come now.
    assert t.send_line(t.heartbeat())
    server.conn.close()
    wait_for(lambda: (gevent.sleep(0.01), not t.connected)[1], what="the tracker to see the close")
    assert t.dropped_by_peer == 1 and t.stats()["heartbeats_unanswered"] == 1


# --- against the real gateway ---

def test_offered_reports_never_wait_for_a_full_socket(server: FakeServer) -> None:
    """The fleet sends every tracker's reports from one greenlet, so offering a report must never
    wait for the socket: what it does not take stays in the tracker's buffer, as on a device."""
    server.listener.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_RCVBUF, 4096)
    tracker = SimTracker(IMEI)
    tracker.connect("127.0.0.1", server.port, hello=False)
    server.accept()
    tracker.sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_SNDBUF, 4096)
    offered: list[str] = []
    with gevent.Timeout(10):  # an offer that waited for the (unread) socket would hang here
        while tracker.writable and (not offered or tracker.offer_report(offered[-1])):
            offered.append(tracker.fri())
        refused = []
        for _ in range(50):
            line = tracker.fri()
            refused.append(line)
            assert not tracker.offer_report(line) or not tracker.writable
    buffered = {line for line, _ in tracker.buffer.values()}
    assert set(refused) <= buffered
    gevent.sleep(0.5)
    tracker.disconnect()
    # What reached the server is whole lines, in count order, ending with the partly written one
    # (finished by its own greenlet): nothing cut, nothing interleaved.
    server.data += b"".join(iter(lambda: server.conn.recv(65536), b""))
    lines = [part.decode() for part in server.data.split(b"$") if part]
    assert lines and all(parse(line).kind == "report" for line in lines)
    counts = [int(line.rsplit(",", 1)[1], 16) for line in lines]
    assert counts == list(range(counts[0], counts[0] + len(counts)))
    assert not any(line + "$" in buffered for line in lines)


def test_a_jammed_connection_does_not_hold_up_the_fleet() -> None:
    from gv50_gevent.simulator import Fleet, FleetConfig
    listener = gsocket.socket()
    listener.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    received: list[bytes] = []
    held: list[Any] = []

    def serve() -> None:
        jammed, _ = listener.accept()  # the first tracker's connection is never read
        conn, _ = listener.accept()
        held.append(jammed)
        while chunk := conn.recv(65536):
            received.append(chunk)

    server = gevent.spawn(serve)
    fleet = Fleet(FleetConfig(port=listener.getsockname()[1], devices=2, rate=20000, duration=3, ramp=0.2, drain=0))
    try:
        with gevent.Timeout(15):
            report = fleet.run()
    finally:
        server.kill()
        listener.close()
    from_reader = b"".join(received).count(b"+RESP:GTFRI")
    # The reading connection got its share (10,000/s for 3 s) although the other one jammed once
    # its kernel buffers (a few MB on loopback) were full; from then on the jammed tracker, its
    # last report still being written, skipped its turns.
    assert from_reader >= 0.9 * 30000, report
    assert report["skipped"] > 3000, report
    assert report["fri_sent"] + report["unsacked"] + report["buffer_dropped"] + report["skipped"] >= 0.95 * 60000


def test_fleet_every_sacked_message_is_stored_exactly_once(start_gateway) -> None:
    gw = start_gateway(SACK_MODE="all")
    report = run_simulator(gw.port, "--devices", "20", "--rate", "100", "--duration", "5", "--heartbeat", "1",
                           "--sack", "--list-sacked", "--imei-base", "861000000000000")
    assert report["connected"] == 20 and report["connect_failures"] == 0
    assert 450 <= report["fri_sent"] <= 520, report
    assert report["sacked"] == report["fri_sent"] and report["unsacked"] == 0
    assert report["heartbeats_sent"] >= 20 * 5 and report["heartbeat_replies"] >= report["heartbeats_sent"] - 20
    assert report["sack_latency_ms"]["n"] == report["sacked"]
    assert_stored_exactly_once(gw.db, report)
    assert gw.db.positions.count_documents({}) == report["fri_sent"]


def test_buff_replay_after_forced_reconnect_stores_no_duplicates(start_gateway) -> None:
    gw = start_gateway(SACK_MODE="all")
    report = run_simulator(gw.port, "--devices", "3", "--rate", "30", "--duration", "3", "--sack", "--list-sacked",
                           "--disconnect-after", "8", "--reconnect-delay", "0.5", "--imei-base", "862000000000000")
    assert report["disconnects"] >= 3 and report["connects"] >= 6, report
    assert report["replayed"] >= 3 and report["unsacked"] == 0
    # fri_sent counts real-time writes; reports made while the connection was down went out as +BUFF only.
    assert report["sacked"] >= report["fri_sent"]
    assert_stored_exactly_once(gw.db, report)
    total_reports = sum(len(v) for v in report["sacked_lines"].values())
    assert gw.db.positions.count_documents({}) == total_reports
    # The replays reached the gateway as +BUFF and were archived, but made no second document.
    wait_for(lambda: gw.db.messages.count_documents({"raw": {"$regex": "^\\+BUFF:GTFRI"}}) >= report["replayed"],
             what="+BUFF frames archived")
    resent = set()
    for imei in report["sacked_lines"]:
        raws = [m["raw"] for m in gw.db.messages.find({"imei": imei, "direction": "in", "kind": "report"})]
        live = {r.rsplit(",", 1)[1] for r in raws if r.startswith("+RESP:")}
        resent |= {(imei, r.rsplit(",", 1)[1]) for r in raws if r.startswith("+BUFF:") and r.rsplit(",", 1)[1] in live}
    assert resent, "no report arrived both live and replayed: the test did not exercise deduplication"


def test_a_hex_fleet_is_stored_like_an_ascii_one(start_gateway) -> None:
    """The simulator in HEX mode (--hex): reports, a +BUFF replay after a forced reconnect, and
    heartbeats go out as HEX frames; every SACKed report is stored once, as for ASCII."""
    gw = start_gateway(SACK_MODE="all")
    report = run_simulator(gw.port, "--hex", "--devices", "5", "--rate", "50", "--duration", "3", "--heartbeat", "1",
                           "--sack", "--list-sacked", "--disconnect-after", "20", "--reconnect-delay", "0.5",
                           "--imei-base", "863000000000000")
    assert report["connected"] == 5 and report["unsacked"] == 0 and report["replayed"] >= 1, report
    assert report["heartbeat_replies"] >= 5
    assert_stored_exactly_once(gw.db, report)
    archived = list(gw.db.messages.find({"direction": "in", "imei": {"$regex": "^863"}}, {"raw": 1, "kind": 1}))
    heads = {bytes.fromhex(d["raw"][:8]) for d in archived if d["kind"] in ("report", "heartbeat")}
    assert {b"+RSP", b"+HBD"} <= heads, heads  # HEX frames, archived as hex
    assert b"+BSP" in heads  # the replay as HEX buffered frames
    assert gw.db.devices.count_documents({"config.protocol_format": "hex"}) == 5


def test_the_simulator_says_how_it_goes_while_it_runs(start_gateway) -> None:
    gw = start_gateway(SACK_MODE="all")
    cmd = [sys.executable, "-m", "gv50_gevent.simulator", "--host", "127.0.0.1", "--port", str(gw.port),
           "--devices", "3", "--rate", "20", "--duration", "3", "--sack", "--progress", "1",
           "--imei-base", "864000000000000"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "connected" in line]
    assert len(lines) >= 2, done.stderr
    assert "connected 3/3" in lines[-1] and "SACKed" in lines[-1] and "answered" in lines[-1]
