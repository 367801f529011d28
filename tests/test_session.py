"""`DeviceSession` on a real socket pair, with a slow fake sink (no database): what any reader of a
tracker's connection must keep, told in bytes in, bytes out and what the sink got. These tests
do not look inside the session: they hold for any way of reading the socket."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import gevent
import pytest
from gevent import socket
from gevent.event import Event

from gv50_gevent.config import Settings
from gv50_gevent.gateway.session import DeviceSession
from gv50_gevent.protocol.connection import Received
from gv50_gevent.simulator import SimTracker
from gv50_gevent.storage.writer import Batch

IMEI = "865083030001111"
TIMEOUT = 10.0


def count_of(line: str) -> str:
    return line.rstrip("$").rsplit(",", 1)[1]


class SlowSink:
    """Storage that takes `record_s` to take a turn (a full write buffer) and `store_s` more until
    it is durable; `gate`, when given, holds every `record()` until it is set."""

    def __init__(self, record_s: float = 0.0, store_s: float = 0.0, gate: Event | None = None) -> None:
        self.record_s = record_s
        self.store_s = store_s
        self.gate = gate
        self.started = Event()  # record() was called
        self.got: list[tuple[Received, datetime]] = []
        self.durable: set[str] = set()  # raw frames whose batch is done
        self.out: list[bytes] = []

    def record(self, events: Sequence[Received], remote_addr: str, received_at: datetime) -> list[Batch]:
        self.started.set()
        if self.gate is not None:
            self.gate.wait()
        gevent.sleep(self.record_s)
        self.got += [(event, received_at) for event in events]
        batch = Batch()
        batch.size = len(events)
        gevent.spawn_later(self.store_s, self._stored, batch, [event.raw for event in events])
        return [batch]

    def _stored(self, batch: Batch, raws: list[str]) -> None:
        self.durable.update(raws)
        batch.done.set()

    def sent(self, frames: Sequence[bytes], kind: str, imei: str | None, remote_addr: str,
             at: datetime) -> list[Batch]:
        self.out += frames
        return []

    def sacked(self, seconds: float) -> None:
        pass

    def reports(self, status: str = "ok") -> list[str]:
        return [count_of(event.raw) for event, _ in self.got if event.kind == "report" and event.status == status]


class Presence:
    def admit(self, session: DeviceSession, imei: str) -> str | None:
        return None

    def online(self, session: DeviceSession) -> None:
        pass

    def offline(self, session: DeviceSession) -> None:
        pass


class Hooks:
    """The command room: hears every ACK and report (and when its frame was read)."""

    def __init__(self) -> None:
        self.reports: list[tuple[str, datetime]] = []

    def ack(self, link: Any, ack: Any, source: str) -> None:
        pass

    def report(self, link: Any, report: Any, source: str, received_at: datetime) -> None:
        self.reports.append((report.raw, received_at))


class Device:
    """The tracker's end of the socket pair: what it sends, and the frames it gets back in order."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.frames: list[str] = []

    def send(self, *lines: str) -> None:
        self.sock.sendall("".join(lines).encode())

    def until(self, frame: str, timeout: float = TIMEOUT) -> list[str]:
        """Read until `frame` arrives; returns every frame so far."""
        with gevent.Timeout(timeout, AssertionError(f"no {frame!r} within {timeout}s; got {self.frames}")):
            while frame not in self.frames:
                chunk = self.sock.recv(65536)
                assert chunk, f"connection closed before {frame!r}; got {self.frames}"
                self.buf += chunk
                *done, self.buf = self.buf.split(b"$")
                self.frames += [f.decode() + "$" for f in done]
        return self.frames


@pytest.fixture
def pair() -> Any:
    made: list[tuple[socket.socket, socket.socket, gevent.Greenlet | None]] = []

    def start(sink: SlowSink, before: bytes = b"", hooks: Hooks | None = None
              ) -> tuple[DeviceSession, Device, gevent.Greenlet]:
        ours, theirs = socket.socketpair()
        if before:
            theirs.sendall(before)  # already waiting when the session first reads
        session = DeviceSession(ours, ("10.0.0.9", 40000), Settings(_env_file=None, SACK_MODE="all"),  # type: ignore[call-arg]
                                sink, Presence(), hooks or Hooks())
        greenlet = gevent.spawn(session.run)
        made.append((ours, theirs, greenlet))
        return session, Device(theirs), greenlet

    yield start
    for ours, theirs, greenlet in made:
        theirs.close()
        greenlet.join(5)
        greenlet.kill()
        ours.close()


def test_heartbeats_are_answered_while_the_sink_is_slow(pair) -> None:
    sim = SimTracker(IMEI)
    sink = SlowSink(record_s=0.5, store_s=0.5)
    _, device, _ = pair(sink)
    reports = [sim.fri() for _ in range(64)]  # four turns of storing, two seconds at least
    device.send(*reports)
    assert sink.started.wait(TIMEOUT)
    heartbeat = sim.heartbeat()
    device.send(heartbeat)
    device.until(f"+SACK:GTHBD,090302,{count_of(heartbeat)}$")
    assert len(sink.reports()) < len(reports), "the heartbeat waited until everything before it was stored"
    frames = device.until(f"+SACK:{count_of(reports[-1])}$")
    assert [f for f in frames if not f.startswith("+SACK:GTHBD")] == [f"+SACK:{count_of(r)}$" for r in reports]


def test_sacks_go_out_in_order_each_once_and_only_for_what_is_durable(pair) -> None:
    sim = SimTracker(IMEI)
    sink = SlowSink(record_s=0.02, store_s=0.3)
    _, device, _ = pair(sink)
    reports = [sim.fri() for _ in range(40)]
    sacked: list[str] = []
    for start in range(0, len(reports), 10):
        device.send(*reports[start:start + 10])
        for line in reports[start:start + 10]:
            frames = device.until(f"+SACK:{count_of(line)}$")
            for frame in frames[len(sacked):]:
                raw = next(r.rstrip("$") for r in reports if f"+SACK:{count_of(r)}$" == frame)
                assert raw in sink.durable, f"{frame} went out before its frame was stored"
                sacked.append(frame)
    assert sacked == [f"+SACK:{count_of(r)}$" for r in reports]
    assert sink.reports() == [count_of(r) for r in reports]


def test_what_was_read_when_the_tracker_closes_is_archived(pair) -> None:
    sim = SimTracker(IMEI)
    sink = SlowSink(record_s=0.05, store_s=0.05)
    _, device, greenlet = pair(sink)
    reports = [sim.fri() for _ in range(5)]
    cut = sim.fri()
    device.send(*reports, cut[:60])
    device.until(f"+SACK:{count_of(reports[-1])}$")
    device.sock.shutdown(socket.SHUT_WR)  # the tracker hangs up in the middle of a frame
    assert greenlet.join(TIMEOUT) is None and greenlet.dead
    assert sink.reports() == [count_of(r) for r in reports]
    last, _ = sink.got[-1]
    assert (last.status, last.raw) == ("invalid", cut[:60]) and "incomplete frame" in (last.error or "")


def test_frames_read_but_not_handled_when_the_session_is_closed_are_archived_once(pair) -> None:
    sim = SimTracker(IMEI)
    gate = Event()
    sink = SlowSink(gate=gate)
    reports = [sim.fri() for _ in range(40)]
    session, _, greenlet = pair(sink, before="".join(reports).encode())
    assert sink.started.wait(TIMEOUT)  # storing the first frames
    session.close("shutting down")
    gate.set()
    assert greenlet.join(TIMEOUT) is None and greenlet.dead
    stored = sink.reports("ok")
    left = [(count_of(event.raw), event.error) for event, _ in sink.got if event.status == "rejected"]
    assert stored and left, (stored, left)
    assert sorted(stored + [count for count, _ in left]) == sorted(count_of(r) for r in reports)
    assert all("not handled" in (error or "") and "shutting down" in (error or "") for _, error in left)


def test_received_at_is_when_the_bytes_were_read_not_when_they_were_handled(pair) -> None:
    sim = SimTracker(IMEI)
    sink = SlowSink(record_s=0.6, store_s=1.5)
    _, device, _ = pair(sink)
    first, second = sim.fri(), sim.fri()
    device.send(first)
    with gevent.Timeout(TIMEOUT):
        while not sink.got:  # stored; its SACK waits 1.5 s more for durability
            gevent.sleep(0.01)
    sent_at = datetime.now(timezone.utc)
    device.send(second)
    device.until(f"+SACK:{count_of(second)}$")
    received_at = next(at for event, at in sink.got if event.raw == second.rstrip("$"))
    # Stamped when handled it would be about 1.5 s late (the first frame's SACK wait); 1 s leaves
    # room for a busy machine.
    assert abs((received_at - sent_at).total_seconds()) < 1.0, (received_at, sent_at)


def test_the_command_room_hears_a_report_with_the_time_its_bytes_were_read(pair) -> None:
    sim = SimTracker(IMEI)
    sink, hooks = SlowSink(record_s=0.5), Hooks()
    _, device, _ = pair(sink, hooks=hooks)
    reports = [sim.fri() for _ in range(3)]
    device.send(*reports)
    device.until(f"+SACK:{count_of(reports[-1])}$")
    stored = {event.raw: at for event, at in sink.got}
    assert [raw for raw, _ in hooks.reports] == [r.rstrip("$") for r in reports]
    assert all(at == stored[raw] for raw, at in hooks.reports), (hooks.reports, stored)
