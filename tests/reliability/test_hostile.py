"""Hostile sockets against a live gateway while 100 simulated trackers keep reporting.

One gateway, one simulator process (100 devices, SACK on) and, from this process, a set of bad
clients run at the same time: random garbage, frames with no `$` at and beyond MAX_FRAME_BYTES,
HEX frames (good and impossible), a slowloris, a client that never sends, 2,000 connections opened
at once past MAX_CONNECTIONS, a peer that stops reading, and a peer that goes silent mid-session.

Afterwards: every bad connection was closed (or kept) as the settings say and within their times,
its bytes are in `messages` with a status and a reason, the gateway logged no traceback, and the
good devices saw no error and no gap: every report SACKed, stored once, in order, on time.
"""

from __future__ import annotations

import errno
import json
import random
import re
import resource
import selectors
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import wait_for

REPO = Path(__file__).resolve().parents[2]

MAX_CONNECTIONS = 300
MAX_FRAME = 1024
IDLE_S = 3.0
FRAME_S = 2.0
SEND_S = 1.5
# The gateway's reaper sweeps every min(IDLE, FRAME)/4 s; a timeout fires up to one sweep late.
SWEEP_S = min(IDLE_S, FRAME_S) / 4
SLACK_S = 1.5  # scheduling noise on a shared 2-core machine

DEVICES = 100
RATE = 200.0      # GTFRI/s for the whole fleet: one every 0.5 s per device
DURATION = 12.0
SIM_BASE = 861_000_000_000_000
FLOOD = 2000
HEARTBEATS = 6000  # from the peer that never reads

HBD = "+ACK:GTHBD,090302,{imei},,20170718163021,{count}$"
FRI = ("+RESP:GTFRI,090302,{imei},,13337,10,1,1,18.6,272,30.8,117.201342,31.855243,20170712074622,"
       "0460,0001,5504,29CF,00,347.8,00021:54:10,,,,220101,23,0,15,20170712154623,{count}$")
# The vendor's reference HEX frames (spec 1.7, p. 141 and 172), framed by their Length field.
HEX_ACK = bytes.fromhex("2B41434B01EF240901030302565022000A0027070007F907DD011E0A150A0101F9190D0A")
HEX_HBD = bytes.fromhex("2B484244EF200901030302565022000A00270707DD011D1402130039D25B0D0A")
# A HEX heartbeat header whose Length byte (3) is smaller than the header itself.
HEX_IMPOSSIBLE = b"+HBD\xef\x03" + bytes(20)


def addr_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


@dataclass
class Outcome:
    """What one hostile client did and saw; checked once everything has run."""

    name: str
    remote_addr: str = ""
    sent: bytes = b""
    closed_after: float | None = None   # seconds until the gateway closed it (None: it did not)
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Ctx:
    """What every attack gets: the gateway's port and database, and the start signal."""

    port: int
    db: Any
    go: threading.Event


def closed_within(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the gateway closes `sock` (EOF or reset), or None; data read is discarded."""
    start = time.monotonic()
    deadline = start + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return time.monotonic() - start
        except (socket.timeout, TimeoutError):
            return None
        except (ConnectionResetError, BrokenPipeError):
            return time.monotonic() - start
    return None


def connect(port: int, tiny_window: bool = False) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if tiny_window:
        # Before connect: a small receive window, and a small MSS so that the gateway's send buffer
        # (autotuned from cwnd * MSS, megabytes with loopback's 64 KB MSS) stays near 50 KB.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    sock.connect(("127.0.0.1", port))
    return sock


# --- the attacks (each runs in its own thread; connections are opened before `go` fires) ---

def garbage(ctx: Ctx) -> Outcome:
    """Random bytes cut by `$` are archived frame by frame and cost no disconnect; a last burst
    with no `$`, then FIN: those bytes too must reach the archive."""
    rng = random.Random(5004)
    alphabet = bytes(b for b in range(256) if b not in b"+$\r\n\t ")
    frames = [bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 400))) for _ in range(30)]
    tail = bytes(rng.choice(alphabet) for _ in range(200))
    sock = connect(ctx.port)
    out = Outcome("garbage", addr_of(sock), notes={"frames": frames, "tail": tail})
    ctx.go.wait()
    with sock:
        for i in range(0, len(frames), 10):
            burst = b"".join(f + b"$" for f in frames[i:i + 10])
            sock.sendall(burst)
            out.sent += burst
            time.sleep(0.2)
        out.notes["open_after_garbage"] = closed_within(sock, 0.5) is None
        sock.sendall(tail)
        out.sent += tail
        time.sleep(0.3)
    return out


def frame_at_limit(ctx: Ctx) -> Outcome:
    """A frame of exactly MAX_FRAME_BYTES (its `$` included) is accepted: archived, not punished."""
    body = b"+RESP:GTFRI," + b"7" * (MAX_FRAME - len(b"+RESP:GTFRI,") - 1)
    sock = connect(ctx.port)
    out = Outcome("frame_at_limit", addr_of(sock), sent=body + b"$")
    ctx.go.wait()
    with sock:
        sock.sendall(out.sent)
        out.notes["open"] = closed_within(sock, 1.0) is None
    return out


def no_dollar_at_limit(ctx: Ctx) -> Outcome:
    """MAX_FRAME_BYTES with no `$` is not over the cap yet: held until FRAME_TIMEOUT_S cuts it."""
    sock = connect(ctx.port)
    out = Outcome("no_dollar_at_limit", addr_of(sock), sent=b"+RESP:GTFRI," + b"8" * (MAX_FRAME - 12))
    ctx.go.wait()
    with sock:
        sock.sendall(out.sent)
        out.closed_after = closed_within(sock, FRAME_S + SWEEP_S + SLACK_S + 1)
    return out


def no_dollar_beyond_limit(ctx: Ctx) -> Outcome:
    """One byte past MAX_FRAME_BYTES with no `$`: rejected and closed at once."""
    sock = connect(ctx.port)
    out = Outcome("no_dollar_beyond_limit", addr_of(sock), sent=b"+RESP:GTFRI," + b"9" * (MAX_FRAME - 11))
    ctx.go.wait()
    with sock:
        sock.sendall(out.sent)
        out.closed_after = closed_within(sock, SLACK_S)
    return out


def dollar_beyond_limit(ctx: Ctx) -> Outcome:
    """A frame whose `$` is byte MAX_FRAME_BYTES + 1: rejected and closed at once."""
    sock = connect(ctx.port)
    out = Outcome("dollar_beyond_limit", addr_of(sock), sent=b"GET /" + b"x" * (MAX_FRAME - 5) + b"$")
    ctx.go.wait()
    with sock:
        sock.sendall(out.sent)
        out.closed_after = closed_within(sock, SLACK_S)
    return out


def hex_frames(ctx: Ctx) -> Outcome:
    """The reference HEX +ACK and +HBD are framed by length, decoded and archived; the connection
    stays. A HEX header with an impossible Length closes it."""
    sock = connect(ctx.port)
    out = Outcome("hex_frames", addr_of(sock))
    ctx.go.wait()
    with sock:
        sock.sendall(HEX_ACK + HEX_HBD)
        out.notes["open_after_good_hex"] = closed_within(sock, 0.5) is None
        sock.sendall(HEX_IMPOSSIBLE)
        out.closed_after = closed_within(sock, SLACK_S)
    out.sent = HEX_ACK + HEX_HBD + HEX_IMPOSSIBLE
    return out


def slowloris(ctx: Ctx) -> Outcome:
    """One byte of a real report every 1.2 s: never idle for IDLE_TIMEOUT_S, but the frame never
    ends, so FRAME_TIMEOUT_S closes it."""
    line = FRI.format(imei="862000000000009", count="0001").encode()
    sock = connect(ctx.port)
    out = Outcome("slowloris", addr_of(sock))
    ctx.go.wait()
    with sock:
        start = time.monotonic()
        for i in range(len(line)):
            try:
                sock.sendall(line[i:i + 1])
            except OSError:
                break
            out.sent += line[i:i + 1]
            if closed_within(sock, 1.2) is not None:
                break
        out.closed_after = time.monotonic() - start
    return out


def silent(ctx: Ctx) -> Outcome:
    """Connects and never sends: closed after IDLE_TIMEOUT_S."""
    sock = connect(ctx.port)
    out = Outcome("silent", addr_of(sock))
    with sock:
        out.closed_after = closed_within(sock, IDLE_S + SWEEP_S + SLACK_S + 1)
    return out


def gone_quiet(ctx: Ctx) -> Outcome:
    """Half-open: a tracker says hello, then vanishes without a FIN (it just stops sending)."""
    imei = "862000000000001"
    sock = connect(ctx.port)
    out = Outcome("gone_quiet", addr_of(sock), sent=HBD.format(imei=imei, count="0001").encode(),
                  notes={"imei": imei})
    with sock:
        sock.sendall(out.sent)
        out.closed_after = closed_within(sock, IDLE_S + SWEEP_S + SLACK_S + 1)
    return out


def stops_reading(ctx: Ctx) -> Outcome:
    """Half-open the other way: a peer with a tiny receive window that keeps sending heartbeats
    but never reads the replies. The gateway's send blocks; SEND_TIMEOUT_S must drop it."""
    imei = "862000000000002"
    sock = connect(ctx.port, tiny_window=True)
    out = Outcome("stops_reading", addr_of(sock), notes={"imei": imei})
    ctx.go.wait()
    # 24 bytes of reply per heartbeat: 6000 replies (144 KB) are far more than both buffers hold.
    payload = "".join(HBD.format(imei=imei, count=f"{i:04X}") for i in range(1, HEARTBEATS + 1)).encode()
    limit = SEND_S + SWEEP_S + SLACK_S + 2
    with sock:
        sock.settimeout(limit)
        start = time.monotonic()
        try:
            sock.sendall(payload)  # the gateway stops reading once its own send blocks
        except OSError as exc:
            out.notes["send_error"] = repr(exc)
        out.sent = payload
        # Still not reading: only the gateway's send timeout can end this. Reading earlier would
        # unblock its send.
        offline = {"_id": imei, "online": False}
        while ctx.db.devices.find_one(offline) is None and time.monotonic() - start < limit:
            time.sleep(0.05)
        out.notes["dropped_after"] = time.monotonic() - start
        out.closed_after = closed_within(sock, 2.0)
    return out


def flood(ctx: Ctx) -> Outcome:
    """FLOOD connections at once, far past MAX_CONNECTIONS. The ones over the limit are closed at
    once; the few that got a free slot never send and are closed after IDLE_TIMEOUT_S."""
    ctx.go.wait()
    time.sleep(0.3)  # the other attackers' connections are accepted first
    sel = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    start = time.monotonic()
    errors: list[str] = []
    for _ in range(FLOOD):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        code = s.connect_ex(("127.0.0.1", ctx.port))
        if code not in (0, errno.EINPROGRESS):
            errors.append(f"connect: {code}")
            s.close()
            continue
        socks.append(s)
        sel.register(s, selectors.EVENT_READ)
    opened = time.monotonic() - start
    closed: list[float] = []
    got_data = 0
    deadline = start + IDLE_S + SWEEP_S + SLACK_S + 2
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.2):
            s = key.fileobj
            try:
                data = s.recv(4096)  # type: ignore[union-attr]
            except BlockingIOError:
                continue
            except (ConnectionResetError, ConnectionRefusedError):
                data = b""
            if data:
                got_data += 1
                continue
            closed.append(time.monotonic() - start)
            sel.unregister(s)
    still_open = len(sel.get_map())
    for s in socks:
        s.close()
    sel.close()
    return Outcome("flood", notes={"closed": sorted(closed), "still_open": still_open, "errors": errors,
                                   "got_data": got_data, "opened_in": opened})


ATTACKS = (garbage, frame_at_limit, no_dollar_at_limit, no_dollar_beyond_limit, dollar_beyond_limit, hex_frames,
           slowloris, silent, gone_quiet, stops_reading, flood)


# --- the test ---

def start_simulator(port: int) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "gv50_gevent.simulator", "--host", "127.0.0.1", "--port", str(port),
           "--devices", str(DEVICES), "--rate", str(RATE), "--duration", str(DURATION), "--sack", "--list-sacked",
           "--imei-base", str(SIM_BASE), "--drain", "5", "--json"]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def archived(db: Any, remote_addr: str) -> list[dict[str, Any]]:
    return list(db.messages.find({"remote_addr": remote_addr, "direction": "in"}).sort([("at", 1), ("_id", 1)]))


def test_hostile_sockets_do_not_disturb_a_reporting_fleet(start_gateway) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < FLOOD + 500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20000), hard))
    gw = start_gateway(SACK_MODE="all", MAX_CONNECTIONS=str(MAX_CONNECTIONS), MAX_FRAME_BYTES=str(MAX_FRAME),
                       IDLE_TIMEOUT_S=str(IDLE_S), FRAME_TIMEOUT_S=str(FRAME_S), SEND_TIMEOUT_S=str(SEND_S))
    sim = start_simulator(gw.port)
    try:
        fleet = {"_id": {"$gte": f"{SIM_BASE:015d}", "$lt": f"{SIM_BASE + DEVICES:015d}"}}
        wait_for(lambda: gw.db.devices.count_documents({**fleet, "online": True}) == DEVICES, timeout=20,
                 what="the fleet online")
        ctx = Ctx(gw.port, gw.db, threading.Event())
        with ThreadPoolExecutor(len(ATTACKS)) as pool:
            futures = {attack.__name__: pool.submit(attack, ctx) for attack in ATTACKS}
            time.sleep(0.3)  # every attacker has connected (and been accepted) before the flood
            ctx.go.set()
            outcomes = {name: future.result(timeout=60) for name, future in futures.items()}
        stdout, stderr = sim.communicate(timeout=DURATION + 40)
    finally:
        if sim.poll() is None:
            sim.kill()
            sim.communicate()
    assert sim.returncode == 0, stderr
    report = json.loads(stdout)
    db = gw.db

    check_fleet(db, report, gw.log())
    check_garbage(db, outcomes["garbage"])
    check_limits(db, outcomes)
    check_hex(db, outcomes["hex_frames"])
    check_slow_and_silent(db, outcomes, gw.log())
    check_flood(outcomes["flood"], gw.log())
    log = gw.log()
    assert "Traceback" not in log, log[log.index("Traceback") - 500:log.index("Traceback") + 3000]
    errors = [line for line in log.splitlines() if " ERROR " in line]
    assert errors == [], errors[:5]


def check_fleet(db: Any, report: dict[str, Any], log: str) -> None:
    """The 100 good devices: connected once, every report SACKed, stored once, no gap."""
    assert report["connected"] == DEVICES and report["connect_failures"] == 0, report
    assert report["connects"] == DEVICES and report["disconnects"] == DEVICES, "a good device was dropped"
    expected = RATE * DURATION
    assert 0.9 * expected <= report["fri_sent"] <= expected + DEVICES, report["fri_sent"]
    assert report["unsacked"] == 0 and report["sacked"] == report["fri_sent"], report
    assert report["replayed"] == 0 and report["buffer_dropped"] == 0 and report["bad_commands"] == 0
    imeis = [f"{SIM_BASE + i:015d}" for i in range(DEVICES)]
    docs = list(db.positions.find({"imei": {"$in": imeis}},
                                  {"imei": 1, "count": 1, "received_at": 1, "sent_at": 1, "buffered": 1}))
    assert len(docs) == report["fri_sent"]
    assert len({(d["imei"], d["count"]) for d in docs}) == len(docs), "duplicate positions"
    sacked = {(imei, line.rstrip("$").rsplit(",", 1)[1]) for imei, lines in report["sacked_lines"].items()
              for line in lines}
    assert sacked == {(d["imei"], d["count"]) for d in docs}
    by_imei: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        by_imei.setdefault(d["imei"], []).append(d)
    worst_gap = 0.0
    for imei, rows in by_imei.items():
        # Frames of one read share its receive time (stored to the millisecond): within it, by count.
        rows.sort(key=lambda d: (d["received_at"], d["sent_at"], int(d["count"], 16)))
        counts = [int(d["count"], 16) for d in rows]
        # Arrived in order, one count after the other (no heartbeats during the run).
        assert all((b - a) & 0xFFFF == 1 for a, b in zip(counts, counts[1:])), f"{imei}: counts {counts}"
        assert not any(d["buffered"] for d in rows)
        gaps = [(b["received_at"] - a["received_at"]).total_seconds() for a, b in zip(rows, rows[1:])]
        worst_gap = max(worst_gap, *gaps)
    # A report every DEVICES/RATE = 0.5 s per device; the attacks may not stall anyone for long.
    assert worst_gap < 2.0, f"a good device waited {worst_gap:.2f}s between two stored reports"
    assert db.messages.count_documents({"imei": {"$in": imeis}, "status": {"$ne": "ok"}}) == 0
    forced = [line for line in log.splitlines() if re.search(r"closing \S+ \(861000000000\d{3}\)", line)]
    assert forced == [], forced[:5]


def check_garbage(db: Any, out: Outcome) -> None:
    assert out.notes["open_after_garbage"], "a connection was closed for garbage framed by '$'"
    docs = archived(db, out.remote_addr)
    assert all(d["status"] in ("invalid", "unknown_type") and d["error"] and d["imei"] is None for d in docs)
    cut = [d for d in docs if "incomplete frame" in d["error"]]
    whole = [d for d in docs if d not in cut]
    assert sorted(d["raw"].encode("latin-1") for d in whole) == sorted(out.notes["frames"])
    # The tail that never got its `$` before the client went away (FIN): its bytes are kept too.
    assert [d["raw"].encode("latin-1") for d in cut] == [out.notes["tail"]], \
        f"the last {len(out.notes['tail'])} bytes before FIN were not archived"
    assert "closed by peer" in cut[0]["error"]


def check_limits(db: Any, outcomes: dict[str, Outcome]) -> None:
    at = outcomes["frame_at_limit"]
    assert at.notes["open"], "a frame of exactly MAX_FRAME_BYTES closed the connection"
    [doc] = archived(db, at.remote_addr)
    assert doc["raw"].encode("latin-1") + b"$" == at.sent and doc["status"] == "invalid" and doc["error"]

    held = outcomes["no_dollar_at_limit"]
    assert held.closed_after is not None, "MAX_FRAME_BYTES without '$' was never cut off"
    assert FRAME_S - 0.2 <= held.closed_after <= FRAME_S + SWEEP_S + SLACK_S, held.closed_after
    [doc] = archived(db, held.remote_addr)
    assert doc["raw"].encode("latin-1") == held.sent and doc["status"] == "invalid"
    assert "not completed" in doc["error"]

    for name, reason in (("no_dollar_beyond_limit", "no '$' within 1024 bytes"),
                         ("dollar_beyond_limit", "frame of 1025 bytes exceeds 1024")):
        out = outcomes[name]
        assert out.closed_after is not None, f"{name}: connection not closed"
        [doc] = archived(db, out.remote_addr)
        # The archive keeps the first MAX_FRAME_BYTES: the cap bounds what one frame may cost.
        assert doc["raw"].encode("latin-1") == out.sent[:MAX_FRAME], name
        assert doc["status"] == "invalid" and "oversize" in doc["error"] and reason in doc["error"], doc["error"]


def check_hex(db: Any, out: Outcome) -> None:
    assert out.notes["open_after_good_hex"], "a well-framed HEX frame closed the connection"
    assert out.closed_after is not None, "an impossible HEX Length did not close the connection"
    docs = archived(db, out.remote_addr)
    assert [d["raw"] for d in docs[:2]] == [HEX_ACK.hex().upper(), HEX_HBD.hex().upper()]
    assert [(d["kind"], d["status"]) for d in docs[:2]] == [("ack", "ok"), ("heartbeat", "ok")]
    [bad] = docs[2:]
    assert bad["status"] == "invalid" and "impossible length 3" in bad["error"]
    assert bad["raw"] == HEX_IMPOSSIBLE.hex().upper()  # binary is archived as hex (CONTRACT: messages.raw)


def check_slow_and_silent(db: Any, outcomes: dict[str, Outcome], log: str) -> None:
    slow = outcomes["slowloris"]
    # Cut by FRAME_TIMEOUT_S (counted from its first byte), long before IDLE_TIMEOUT_S could fire.
    assert FRAME_S - 0.2 <= slow.closed_after <= FRAME_S + SWEEP_S + SLACK_S, slow.closed_after
    [doc] = archived(db, slow.remote_addr)
    assert doc["raw"].encode("latin-1") == slow.sent and doc["status"] == "invalid"
    assert "not completed within 2s" in doc["error"]

    for name in ("silent", "gone_quiet"):
        out = outcomes[name]
        assert out.closed_after is not None, f"{name}: never closed"
        assert IDLE_S - 0.2 <= out.closed_after <= IDLE_S + SWEEP_S + SLACK_S, (name, out.closed_after)
    assert archived(db, outcomes["silent"].remote_addr) == []
    quiet = outcomes["gone_quiet"]
    [hello] = archived(db, quiet.remote_addr)
    assert hello["status"] == "ok" and hello["imei"] == quiet.notes["imei"]
    assert db.devices.find_one({"_id": quiet.notes["imei"]})["online"] is False

    stalled = outcomes["stops_reading"]
    imei = stalled.notes["imei"]
    assert re.search(rf"closing \S+ \({imei}\): send timed out", log), "not dropped by SEND_TIMEOUT_S"
    assert db.devices.find_one({"_id": imei})["online"] is False
    assert stalled.closed_after is not None, "the non-reading peer was never closed"
    assert stalled.notes["dropped_after"] <= SEND_S + SWEEP_S + SLACK_S, stalled.notes
    docs = archived(db, stalled.remote_addr)
    # The gateway gave up long before it had read every heartbeat; the last one it read may be cut.
    assert 0 < len(docs) < HEARTBEATS and all(d["imei"] == imei for d in docs)
    # What it read is archived: handled heartbeats `ok`, the ones still buffered when the send
    # timed out `rejected` (never SACKed), and the heartbeat it was cut in the middle of `invalid`.
    by_status: dict[str, list[str]] = {}
    for d in docs:
        by_status.setdefault(d["status"], []).append(d["raw"])
    assert set(by_status) <= {"ok", "rejected", "invalid"}, by_status.keys()
    handled, left = len(by_status.get("ok", [])), len(by_status.get("rejected", []))
    lines = [HBD.format(imei=imei, count=f"{i:04X}")[:-1] for i in range(1, HEARTBEATS + 1)]
    assert sorted(by_status.get("ok", [])) == sorted(lines[:handled])
    assert sorted(by_status.get("rejected", [])) == sorted(lines[handled:handled + left])
    for d in docs:
        if d["status"] != "ok":
            assert "send timed out" in d["error"], d["error"]
    if "invalid" in by_status:
        [partial] = by_status["invalid"]
        assert lines[handled + left].startswith(partial)


def check_flood(out: Outcome, log: str) -> None:
    notes = out.notes
    assert notes["errors"] == [] and notes["got_data"] == 0 and notes["still_open"] == 0, \
        {k: v for k, v in notes.items() if k != "closed"}
    closed = notes["closed"]
    assert len(closed) == FLOOD
    free = MAX_CONNECTIONS - DEVICES
    refused = [t for t in closed if t < IDLE_S - 0.5]
    idle = [t for t in closed if t >= IDLE_S - 0.5]
    assert len(refused) >= FLOOD - free, f"only {len(refused)} of {FLOOD} refused at once"
    assert max(refused) < 2.0, f"refusing took {max(refused):.2f}s"
    assert all(t <= IDLE_S + SWEEP_S + SLACK_S + 0.5 for t in idle), idle[-5:]
    assert f"MAX_CONNECTIONS={MAX_CONNECTIONS} reached" in log
