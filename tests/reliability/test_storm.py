"""A reconnect storm: after a cell-network outage, every tracker comes back within seconds and
replays its whole buffer at once. The gateway must take it all without dropping anyone.

300 simulated GV50s (1,000 with `pytest --long`) connect within 3 s. Each holds a full buffer of
600 GTFRI (BUFFER_LIMIT) made while it was offline, and replays it as +BUFF in writes of about
100 KB: more than the gateway reads at once (64 KB), so almost every read ends inside a frame,
and the sessions then wait their turn behind the write buffer (backpressure). With SACK_MODE=all
every tracker keeps each report until its +SACK. All the while, each tracker sends a heartbeat
every 5 s and times its reply.

FRAME_TIMEOUT_S is 10 s here (60 s by default) so that the bug this test guards against shows in
CI time: a session that waits for the gateway (its write buffer full) must not be charged for it
as a frame that "did not complete", nor as an idle tracker: the gateway's own waiting never
counts against a tracker's timers.

What must hold:
* the gateway closes no connection: no tracker sees an EOF or a reset, none reconnects, and the
  gateway logs no "frame not completed" or "idle" close;
* every report is stored exactly once, and every SACKed report is stored (all of them are SACKed);
* every heartbeat is answered, within 60 s at worst, and no later than 2 s after the SACKs of the
  reports its tracker wrote before it (TCP keeps a connection's frames in order, so a reply may
  wait for those to be stored, and no longer; 1 s more is allowed for a busy test machine);
* the gateway's RSS stays under 600 MB.
The figures (drain time and rate, heartbeat p50/p99/max, RSS max) are printed and written to
$TMPDIR/gv50-storm-test.json.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from gv50_gevent.simulator import BUFFER_LIMIT
from tests.support import GatewayProcess

from .helpers import Simulator, check_exactly_once, figures, rss_mb, tracebacks

LONG = os.environ.get("GV50_LONG_TESTS") == "1"
IMEI_BASE = 865000000000000
DEVICES = 1000 if LONG else 300
BACKLOG = BUFFER_LIMIT      # 600 reports: a full GV50 buffer
REPLAY_BYTES = 100_000      # about the whole buffer in one write
RAMP_S = 3.0
HEARTBEAT_S = 5.0
CONNECTED_S = 20.0          # the least time trackers stay (sending heartbeats) before they may leave
DRAIN_S = 600.0 if LONG else 240.0  # the longest the fleet waits for its last SACKs
FRAME_TIMEOUT_S = 10
HEARTBEAT_LIMIT_S = 60.0
HEARTBEAT_BEHIND_S = 2.0 + 1.0  # the rule's 2 s, plus slack for the simulator on a shared machine
RSS_LIMIT_MB = 600.0
GATEWAY_CLOSES = ("frame not completed", "idle for")


class Sampler(threading.Thread):
    """The gateway's RSS and the stored positions, every half second, until stopped."""

    def __init__(self, gw: GatewayProcess) -> None:
        super().__init__(daemon=True)
        assert gw.proc is not None
        self.pid = gw.proc.pid
        self.db = gw.db
        self.stop_event = threading.Event()
        self.samples: list[tuple[float, float, int]] = []  # (monotonic, RSS MB, positions)

    def run(self) -> None:
        while not self.stop_event.wait(0.5):
            try:
                self.samples.append((time.monotonic(), rss_mb(self.pid), self.db.positions.estimated_document_count()))
            except (OSError, ValueError):
                return  # the gateway is gone: the test says why

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)


def drain_figures(samples: list[tuple[float, float, int]], started: float, total: int) -> dict[str, float]:
    """From the first stored report to the last: how long, and how many per second."""
    first = next((t for t, _, n in samples if n > 0), None)
    last = next((t for t, _, n in samples if n >= total), None)
    if first is None or last is None or last <= first:
        return {"drain_s": float("nan"), "drain_rate": float("nan")}
    return {"drain_s": round(last - started, 1), "drain_rate": round(total / (last - first), 0)}


def test_reconnect_storm_drops_nobody(start_gateway) -> None:
    gw = start_gateway(SACK_MODE="all", FRAME_TIMEOUT_S=str(FRAME_TIMEOUT_S), MAX_CONNECTIONS=str(DEVICES + 100),
                       LAST_SEEN_INTERVAL_S="1", GATEWAY_ID="gw-storm")
    assert gw.proc is not None
    db = gw.db
    total = DEVICES * BACKLOG
    sampler = Sampler(gw)
    sampler.start()
    started = time.monotonic()
    sim = Simulator(gw.port, "--devices", str(DEVICES), "--rate", "0", "--duration", str(CONNECTED_S),
                    "--ramp", str(RAMP_S), "--heartbeat", str(HEARTBEAT_S), "--backlog", str(BACKLOG),
                    "--replay-bytes", str(REPLAY_BYTES), "--sack", "--list-sacked", "--drain", str(DRAIN_S),
                    "--imei-base", str(IMEI_BASE))
    try:
        report = sim.finish(timeout=RAMP_S + CONNECTED_S + DRAIN_S + 120)
    finally:
        sim.kill()
        sampler.stop()
    elapsed = time.monotonic() - started
    samples = sampler.samples
    log = gw.log()
    closes = [line for line in log.splitlines() if "closing" in line and any(k in line for k in GATEWAY_CLOSES)]
    hbd = report["heartbeat_latency_ms"]
    rss_max = max((rss for _, rss, _ in samples), default=float("nan"))
    result: dict[str, Any] = {
        "devices": DEVICES, "reports": total, "elapsed_s": round(elapsed, 1),
        **drain_figures(samples, started, total),
        "heartbeat_ms": hbd, "heartbeat_behind_ms": report["heartbeat_behind_ms"],
        "heartbeats_unanswered": report["heartbeats_unanswered"],
        "dropped_by_gateway": report["dropped_by_peer"], "gateway_closes": len(closes),
        "rss_max_mb": round(rss_max, 1), "sacked": report["sacked"], "unsacked": report["unsacked"],
        "stored": db.positions.count_documents({}),
    }
    out = Path(tempfile.gettempdir()) / "gv50-storm-test.json"
    out.write_text(json.dumps(result, indent=1))
    print(f"\nstorm: {json.dumps(result)}")

    assert gw.proc.poll() is None, f"gateway exited:\n{log[-3000:]}"
    assert tracebacks(log) == [], "\n\n".join(tracebacks(log)[:3])
    # Nobody dropped: not by a reset or an EOF the trackers saw, not by a timer the gateway logged.
    assert closes == [], f"{len(closes)} connections closed by the gateway, e.g.:\n" + "\n".join(closes[:5])
    assert report["dropped_by_peer"] == 0, \
        f"the gateway dropped {report['dropped_by_peer']} connections: {figures(report)}"
    assert report["connected"] == DEVICES and report["connects"] == DEVICES, figures(report)
    # Everything replayed, SACKed and stored once.
    assert report["replayed"] == total and report["buffer_dropped"] == 0, figures(report)
    assert report["unsacked"] == 0, f"{report['unsacked']} reports never SACKed: {figures(report)}"
    counted = check_exactly_once(db, report)
    assert counted["sacked"] == counted["stored"] == total, counted
    # Heartbeats answered, and not after a minute.
    assert report["heartbeats_sent"] > DEVICES, figures(report)
    assert report["heartbeats_unanswered"] == 0, f"{report['heartbeats_unanswered']} heartbeats never answered"
    assert hbd["max"] < HEARTBEAT_LIMIT_S * 1000, f"a heartbeat waited {hbd['max'] / 1000:.1f}s for its reply: {hbd}"
    behind = report["heartbeat_behind_ms"]
    assert behind["max"] <= HEARTBEAT_BEHIND_S * 1000, (
        f"a heartbeat reply came {behind['max'] / 1000:.1f}s after the SACKs of the reports before it: {behind}")
    assert rss_max < RSS_LIMIT_MB, f"gateway RSS reached {rss_max:.0f} MB"
