"""Shared by the outage and kill tests: a hand-driven tracker, the simulator as a child process,
what the kernel and /proc say about the gateway, and the exactly-once check on `positions`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any

from pymongo.database import Database

from gv50_gevent.protocol.commands import CommandLine, decode_command
from gv50_gevent.simulator import SimTracker
from tests.support import REPO

PAGE = os.sysconf("SC_PAGE_SIZE")


# --- a tracker driven by the test, one line at a time ---

class Probe:
    """A GV50 the test drives by hand on a real socket. Lines come from a socketless `SimTracker`;
    every frame the gateway sends is sorted into SACKs (by count) and commands."""

    def __init__(self, port: int, imei: str) -> None:
        self.imei = imei
        self.lines = SimTracker(imei)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.buf = b""
        self.sacks: set[str] = set()
        self.commands: list[CommandLine] = []
        self.taken = 0
        self.closed = False

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode("ascii"))

    def hello(self, timeout: float = 10.0) -> None:
        line = self.lines.heartbeat()
        self.send(line)
        count = line.rstrip("$").rsplit(",", 1)[1]
        assert self.wait_sack(f"GTHBD:{count}", timeout), f"{self.imei}: no heartbeat reply"

    def report(self) -> tuple[str, str]:
        """Send one GTFRI; returns (line, count)."""
        line = self.lines.fri()
        self.send(line)
        return line, line.rstrip("$").rsplit(",", 1)[1]

    def ack(self, command: CommandLine) -> None:
        self.send(self.lines.ack(command))

    def _pump(self, deadline: float) -> bool:
        """Read what arrives until `deadline`; False once the time is up or the connection closed."""
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self.closed:
            return False
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return False
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        self.buf += chunk
        *frames, self.buf = self.buf.split(b"$")
        for raw in frames:
            frame = raw.decode("latin-1")
            if frame.startswith("+SACK:GTHBD"):
                self.sacks.add("GTHBD:" + frame.rsplit(",", 1)[1].upper())
            elif frame.startswith("+SACK:"):
                self.sacks.add(frame[6:].upper())
            elif frame.startswith("AT+GT"):
                self.commands.append(decode_command(frame + "$"))
        return True

    def wait_sack(self, count: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while count.upper() not in self.sacks:
            if not self._pump(deadline):
                return count.upper() in self.sacks
        return True

    def wait_command(self, timeout: float) -> CommandLine | None:
        """The next command not yet taken (it may have arrived while waiting for a SACK)."""
        deadline = time.monotonic() + timeout
        while len(self.commands) <= self.taken:
            if not self._pump(deadline):
                return None
        self.taken += 1
        return self.commands[self.taken - 1]

    def close(self) -> None:
        self.sock.close()


# --- the simulator as a child process ---

class Simulator:
    """`python -m gv50_gevent.simulator --json` running beside the test; `finish()` is its report."""

    def __init__(self, port: int, *args: str) -> None:
        cmd = [sys.executable, "-m", "gv50_gevent.simulator", "--host", "127.0.0.1", "--port", str(port),
               "--json", *args]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def finish(self, timeout: float) -> dict[str, Any]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)  # it still reports what it has
            out, err = self.proc.communicate(timeout=30)
            raise AssertionError(f"simulator still running after {timeout}s; it had: {_brief(out)}") from None
        assert self.proc.returncode == 0, err.decode(errors="replace")
        return json.loads(out)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def _brief(out: bytes) -> str:
    try:
        report = json.loads(out)
    except ValueError:
        return out[:500].decode(errors="replace")
    return json.dumps({k: v for k, v in report.items() if k not in ("sacked_lines", "command_log")})


def figures(report: dict[str, Any]) -> dict[str, Any]:
    keys = ("devices", "connects", "disconnects", "fri_sent", "replayed", "sacked", "unsacked", "buffer_dropped",
            "commands", "acks_sent")
    return {key: report[key] for key in keys} | {"sack_latency_ms": report["sack_latency_ms"]}


# --- the gateway process, seen from outside ---

def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def unread_bytes(port: int) -> int:
    """Bytes the kernel holds in the receive queues of the gateway's accepted connections, i.e.
    what the trackers sent and the gateway has not read (yet)."""
    total = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            local, state, queues = fields[1], fields[3], fields[4]
            if int(local.rsplit(":", 1)[1], 16) == port and state != "0A":  # 0A: the listener
                total += int(queues.split(":")[1], 16)
    return total


def tracebacks(log: str) -> list[str]:
    """Each logged traceback with the line before it (what failed)."""
    lines = log.splitlines()
    return ["\n".join(lines[max(0, i - 1):i + 12]) for i, line in enumerate(lines) if "Traceback" in line]


# --- positions: each SACKed report stored exactly once ---

def sent_at(line: str) -> datetime:
    return datetime.strptime(line.rstrip("$").split(",")[-2], "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)


def line_key(line: str) -> tuple[str, str, datetime, str, int]:
    """The unique key of the (single) position a GTFRI line carries: imei, report, sent_at, count, index."""
    fields = line.rstrip("$").split(",")
    return fields[2], fields[0].split(":")[1], sent_at(line), fields[-1], 0


def duplicate_positions(db: Database) -> list[dict[str, Any]]:
    """Keys stored more than once, whatever `_id` says."""
    return list(db.positions.aggregate([
        {"$group": {"_id": {"imei": "$imei", "report": "$report", "sent_at": "$sent_at", "count": "$count",
                            "index": "$index"}, "n": {"$sum": 1}}},
        {"$match": {"n": {"$gt": 1}}},
        {"$limit": 20},
    ], allowDiskUse=True))


def stored_keys(db: Database, imeis: list[str]) -> list[tuple[str, str, datetime, str, int]]:
    docs = db.positions.find({"imei": {"$in": imeis}}, {"imei": 1, "report": 1, "sent_at": 1, "count": 1, "index": 1})
    return [(d["imei"], d["report"], d["sent_at"], d["count"], d["index"]) for d in docs]


def check_exactly_once(db: Database, report: dict[str, Any]) -> dict[str, int]:
    """Every report line the simulator got a SACK for is one `positions` document, no key is
    stored twice, and (the fleet ended with nothing unSACKed) nothing else was stored for it."""
    sacked_lines = [line for lines in report["sacked_lines"].values() for line in lines]
    assert all(":GTFRI," in line for line in sacked_lines), "only GTFRI were expected in the simulator's SACKs"
    sacked = {line_key(line) for line in sacked_lines}
    assert len(sacked) == len(sacked_lines), "two SACKed lines with one key: the simulator repeated a count"
    stored = stored_keys(db, list(report["sacked_lines"]))
    assert len(stored) == len(set(stored)), "a position is stored twice"
    missing = sacked - set(stored)
    assert not missing, f"{len(missing)} SACKed reports are not in MongoDB, e.g. {sorted(missing)[:3]}"
    if report["unsacked"] == 0 and report["buffer_dropped"] == 0:
        extra = set(stored) - sacked
        assert not extra, f"{len(extra)} stored reports that the simulator never got a SACK for, e.g. {sorted(extra)[:3]}"
    assert duplicate_positions(db) == []
    return {"sacked": len(sacked), "stored": len(stored)}
