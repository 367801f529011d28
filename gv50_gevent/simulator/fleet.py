"""A fleet of simulated trackers in one process.

Timeline: connections open one after another over the ramp; then, for `duration` seconds, the
fleet offers `rate` GTFRI per second in total, spread evenly (tracker i of N sends every N/rate
seconds, offset by i/rate), and every tracker sends a heartbeat every `heartbeat` seconds. A
dropped connection is reopened after `reconnect_delay` and the buffer replayed as +BUFF. Then,
with SACK on, the fleet waits up to `drain` seconds for the last +SACKs (heartbeats go on
meanwhile, and their last replies are waited for too), closes, and reports.

A reconnect storm: with `backlog` > 0 each tracker starts with that many reports in its buffer,
as after a network outage, and replays them as +BUFF as soon as it connects (in writes of
`Behaviour.replay_bytes`); `rate` 0 and `heartbeat` > 0 then measure how the gateway drains them
and how long heartbeats wait for their replies meanwhile.

Each tracker has a greenlet for its connection and heartbeats; the reports of the whole fleet are
sent by one pacing greenlet. The fleet is the benchmarks' load generator and shares the machine
with the gateway it measures: a timer and a greenlet switch per report cost it twice the CPU.
A report that the socket does not take at once (the gateway is applying backpressure and the
kernel buffers are full) stays in the tracker's buffer, as on a device; while the rest of a
report is still being written, the tracker's next reports are skipped and counted as `skipped`.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import gevent
from gevent.event import Event

from .tracker import DEFAULT_BEHAVIOUR, Behaviour, SimTracker

PACE_S = 0.001              # the pacing greenlet wakes at most this often
LATENCY_SAMPLES = 100_000   # SACK latencies kept (reservoir sampling beyond that)
TIMELINE_LIMIT = 36_000     # seconds of SACK timeline kept (ten hours)
COMMAND_LOG_LIMIT = 10_000  # command arrivals listed in a report
# Where the V4.01 examples were recorded (Hefei); trackers start spread around it.
BASE_LAT, BASE_LON = 31.82, 117.22


@dataclass(slots=True)
class FleetConfig:
    host: str = "127.0.0.1"
    port: int = 5004
    devices: int = 10
    rate: float = 10.0                 # GTFRI per second, the whole fleet together
    duration: float = 10.0             # seconds of sending, after the ramp
    heartbeat: float = 0.0             # seconds between heartbeats per tracker; 0 = none
    imei_base: int = 860000000000000
    ramp: float | None = None          # seconds to open all connections; None = 1 ms per device, at most 10 s
    drain: float = 5.0                 # seconds to wait for outstanding SACKs at the end
    reconnect_delay: float = 1.0
    connect_timeout: float = 10.0
    backlog: int = 0                   # reports each tracker holds before it first connects (a storm)
    behaviour: Behaviour = field(default_factory=lambda: DEFAULT_BEHAVIOUR)

    def ramp_s(self) -> float:
        return min(10.0, self.devices / 1000) if self.ramp is None else self.ramp


class SackTimeline:
    """When the fleet's SACKs arrived: a count per second since the fleet started, and the
    longest gap between two SACKs (a pause of the gateway's acknowledgements)."""

    __slots__ = ("started", "per_second", "last", "gap_max", "gap_from")

    def __init__(self) -> None:
        self.started = time.time()
        self.per_second: dict[int, int] = {}
        self.last: float | None = None
        self.gap_max = 0.0
        self.gap_from: float | None = None

    def add(self) -> None:
        now = time.time()
        second = int(now - self.started)
        if second < TIMELINE_LIMIT:
            self.per_second[second] = self.per_second.get(second, 0) + 1
        if self.last is not None and now - self.last > self.gap_max:
            self.gap_max, self.gap_from = now - self.last, self.last
        self.last = now

    def summary(self) -> dict[str, Any]:
        return {"started_at": self.started, "per_second": sorted(self.per_second.items()),
                "gap_max_s": round(self.gap_max, 3), "gap_from": self.gap_from}


class Latencies:
    """A bounded sample of latencies (seconds) with percentiles."""

    __slots__ = ("samples", "seen", "max")

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.seen = 0
        self.max = 0.0

    def add(self, value: float) -> None:
        self.seen += 1
        self.max = max(self.max, value)
        if len(self.samples) < LATENCY_SAMPLES:
            self.samples.append(value)
        else:
            slot = random.randrange(self.seen)
            if slot < LATENCY_SAMPLES:
                self.samples[slot] = value

    def summary_ms(self) -> dict[str, float | int]:
        ordered = sorted(self.samples)
        if not ordered:
            return {"n": 0}

        def pct(p: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2)
        return {"n": self.seen, "p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99), "max": round(self.max * 1000, 2)}


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc).isoformat()


class Fleet:
    """`Fleet(config).run()` -> report dict. `stop()` (from a signal handler) ends it early."""

    def __init__(self, config: FleetConfig) -> None:
        if config.devices < 1:
            raise ValueError("devices must be at least 1")
        if config.rate < 0 or config.duration < 0 or config.heartbeat < 0:
            raise ValueError("rate, duration and heartbeat must not be negative")
        self.config = config
        self.sack_latency = Latencies()
        self.heartbeat_latency = Latencies()
        self.hello_latency = Latencies()
        self.heartbeat_behind = Latencies()
        self.sack_timeline = SackTimeline()
        self.connect_failures = 0
        self.skipped = 0
        self.trackers = [self._tracker(i) for i in range(config.devices)]
        self._stop = Event()
        # Each tracker's driver sleeps until its next heartbeat, or until its connection drops.
        self._wakes = [Event() for _ in self.trackers]
        for tracker, wake in zip(self.trackers, self._wakes):
            tracker.on_down = wake.set
        self.window_s = 0.0

    def _tracker(self, i: int) -> SimTracker:
        imei = f"{self.config.imei_base + i:015d}"
        jitter = random.Random(imei)
        tracker = SimTracker(imei, self.config.behaviour, lat=BASE_LAT + jitter.uniform(-0.2, 0.2),
                             lon=BASE_LON + jitter.uniform(-0.2, 0.2), count=jitter.randrange(0x10000))
        tracker.on_sack = self._sacked
        tracker.on_hbd_reply = self._heartbeat_reply
        if self.config.backlog:
            tracker.backfill(self.config.backlog)
        return tracker

    def _sacked(self, seconds: float) -> None:
        self.sack_latency.add(seconds)
        self.sack_timeline.add()

    def _heartbeat_reply(self, seconds: float, hello: bool, behind: float) -> None:
        if hello:
            self.hello_latency.add(seconds)
        else:
            self.heartbeat_latency.add(seconds)
            self.heartbeat_behind.add(behind)

    def stop(self) -> None:
        self._stop.set()
        for wake in self._wakes:
            wake.set()

    def _sleep_until(self, when: float) -> bool:
        """Sleep until monotonic `when`; False if the fleet was stopped meanwhile."""
        delay = when - time.monotonic()
        if delay > 0:
            return not self._stop.wait(delay)
        return not self._stop.is_set()

    def _connect(self, tracker: SimTracker) -> bool:
        try:
            tracker.connect(self.config.host, self.config.port, self.config.connect_timeout)
            return True
        except OSError:
            self.connect_failures += 1
            return False

    def run(self) -> dict[str, Any]:
        c = self.config
        self.sack_timeline = SackTimeline()
        start = time.monotonic()
        ramp = c.ramp_s()
        t0 = start + ramp
        end = t0 + c.duration
        greenlets = [gevent.spawn(self._drive, i, tracker, start + ramp * i / c.devices, t0, end)
                     for i, tracker in enumerate(self.trackers)]
        if c.rate > 0:
            greenlets.append(gevent.spawn(self._pace_reports, t0, end))
        try:
            gevent.joinall(greenlets)
        finally:
            gevent.killall([g for g in greenlets if not g.dead])
            for tracker in self.trackers:
                tracker.disconnect()
        self.window_s = max(0.0, min(time.monotonic(), end) - t0)
        return self.report()

    def _retry_at(self, tracker: SimTracker, after_failure: float) -> float:
        after_drop = tracker.down_at + self.config.reconnect_delay if tracker.down_at else 0.0
        return max(after_failure, after_drop)

    def _drive(self, i: int, tracker: SimTracker, connect_at: float, t0: float, end: float) -> None:
        """The tracker's connection (opened, reopened after a drop) and its heartbeats."""
        c = self.config
        self._sleep_until(connect_at)
        retry_at = 0.0
        next_hbd = connect_at + c.heartbeat * (1 + i / c.devices) if c.heartbeat > 0 else float("inf")
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= end:
                break
            if not tracker.connected and now >= self._retry_at(tracker, retry_at):
                if not self._connect(tracker):
                    retry_at = time.monotonic() + c.reconnect_delay
            if now >= next_hbd:
                if tracker.connected:
                    tracker.send_line(tracker.heartbeat())
                next_hbd += c.heartbeat
            wake = min(next_hbd, end)
            if not tracker.connected:
                wake = min(wake, max(self._retry_at(tracker, retry_at), time.monotonic() + 0.01))
            delay = wake - time.monotonic()
            if delay > 0:
                self._wakes[i].wait(delay)
            self._wakes[i].clear()
        self._drain(tracker, end + c.drain, next_hbd)

    def _pace_reports(self, t0: float, end: float) -> None:
        """Every tracker's GTFRI: report k of the fleet goes at t0 + k/rate, from tracker k mod N."""
        c = self.config
        trackers, n = self.trackers, len(self.trackers)
        interval = n / c.rate
        last = int((end - t0) * c.rate)  # reports due before `end`
        k = 0
        while k < last and self._sleep_until(max(t0 + k / c.rate, time.monotonic() + PACE_S)):
            due = min(last, int((time.monotonic() - t0) * c.rate) + 1)
            while k < due:
                tracker = trackers[k % n]
                k += 1
                if tracker.connected and not tracker.writable:
                    self.skipped += 1  # its last report is still being written: the socket is full
                    continue
                tracker.move(interval)
                tracker.offer_report(tracker.fri())  # buffered if the connection is down or full

    def _drain(self, tracker: SimTracker, deadline: float, next_hbd: float) -> None:
        """Deliver what is still buffered: reconnect if need be, then wait for the SACKs, sending
        heartbeats as before; then wait for the replies to the heartbeats already sent."""
        behaviour = self.config.behaviour
        while tracker.buffer and time.monotonic() < deadline and not self._stop.is_set():
            if not tracker.connected:
                if not self._connect(tracker):
                    self._sleep_until(min(deadline, time.monotonic() + self.config.reconnect_delay))
                    continue
                if not behaviour.sack:
                    break
            if time.monotonic() >= next_hbd:
                tracker.send_line(tracker.heartbeat())
                next_hbd += self.config.heartbeat
            gevent.sleep(0.02)
        while tracker.connected and tracker.awaiting_heartbeat and time.monotonic() < deadline \
                and not self._stop.is_set():
            gevent.sleep(0.02)
        if behaviour.ack_delay > 0 and any(record[1] is None for record in tracker.commands):
            # A late ACK still on its way: give it the time it was promised.
            self._sleep_until(min(deadline, time.monotonic() + behaviour.ack_delay + 0.1))

    def report(self) -> dict[str, Any]:
        c = self.config
        totals: dict[str, int] = {}
        for tracker in self.trackers:
            for key, value in tracker.stats().items():
                totals[key] = totals.get(key, 0) + value
        commands = [
            {"imei": t.imei, "arrived_at": _iso(arrived), "acked_at": _iso(acked), "line": raw}
            for t in self.trackers for arrived, acked, raw in t.commands
        ]
        commands.sort(key=lambda entry: entry["arrived_at"] or "")
        report: dict[str, Any] = {
            "config": {k: v for k, v in asdict(c).items() if k != "behaviour"} | {"ramp": c.ramp_s()},
            "behaviour": asdict(c.behaviour),
            "devices": c.devices,
            "connected": sum(1 for t in self.trackers if t.connects),
            "connect_failures": self.connect_failures,
            "skipped": self.skipped,
            **totals,
            "window_s": round(self.window_s, 3),
            "offered_rate": c.rate,
            "achieved_rate": round(totals["fri_sent"] / self.window_s, 2) if self.window_s else 0.0,
            "sack_latency_ms": self.sack_latency.summary_ms(),
            "sack_timeline": self.sack_timeline.summary(),
            "heartbeat_latency_ms": self.heartbeat_latency.summary_ms(),
            # How long each reply came after the SACKs of the reports written before its heartbeat.
            "heartbeat_behind_ms": self.heartbeat_behind.summary_ms(),
            "hello_latency_ms": self.hello_latency.summary_ms(),
            "command_log": commands[:COMMAND_LOG_LIMIT],
        }
        if c.behaviour.track_sacked:
            report["sacked_lines"] = {t.imei: sorted(t.sacked or ()) for t in self.trackers}
        return report


def run_fleet(config: FleetConfig) -> dict[str, Any]:
    return Fleet(config).run()
