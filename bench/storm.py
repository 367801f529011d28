"""Reconnect-storm benchmark: how fast the gateway drains a fleet that comes back all at once,
against its own steady ingest capacity measured in the same run.

One gateway (SACK_MODE=all, production timers) and, in each run:

1. steady: 1,000 trackers offer GTFRI at more than the gateway can store (`--steady-rate`);
   the stored reports per second over the window (from 5 s after the ramp to the end of sending)
   is the steady capacity;
2. storm: `--devices` trackers (2,000) connect within `--ramp` seconds, each with a full GV50
   buffer of 600 reports that it replays as +BUFF in writes of about 100 KB, then sends a
   heartbeat every 5 s while it waits for its SACKs. Drain time runs from the first connection
   to the last report stored; the drain rate is the storm's reports over the time from the first
   to the last one stored.

It reports drain time, drain rate, the ratio drain / steady (goal >= 0.9), heartbeat reply
p50/p99/max during the storm, the gateway's RSS max, and the connections the gateway dropped.

    .venv/bin/python bench/storm.py                       # 2,000 trackers x 600 reports, one run
    .venv/bin/python bench/storm.py --devices 4000 --runs 3
    .venv/bin/python bench/storm.py --replset             # on a 3-node replica set (tests/replset.py)
"""

from __future__ import annotations

import argparse
import threading
import time
from contextlib import ExitStack
from typing import Any

from common import BenchMongo, Gateway, free_port, machine, median, print_summary, simulator_report, start_simulator
from common import parser as bench_parser
from pymongo import MongoClient

from gv50_gevent.simulator import BUFFER_LIMIT
from gv50_gevent.storage.database import POSITIONS

STEADY_BASE = 867000000000000
STORM_BASE = 868000000000000


class Sampler(threading.Thread):
    """Stored positions and the gateway's RSS, every half second."""

    def __init__(self, db: Any, pid: int) -> None:
        super().__init__(daemon=True)
        self.db, self.pid = db, pid
        self.halt = threading.Event()
        self.samples: list[tuple[float, int, float]] = []  # (epoch, positions, RSS MB)

    def run(self) -> None:
        while not self.halt.wait(0.5):
            self.samples.append((time.time(), self.db[POSITIONS].estimated_document_count(), vm_rss_mb(self.pid)))

    def stop(self) -> list[tuple[float, int, float]]:
        self.halt.set()
        self.join(5)
        return self.samples


def vm_rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def wait_settled(db: Any, quiet_s: float = 3.0, limit_s: float = 300.0) -> int:
    """Wait until the stored count stops moving; returns it."""
    last, since, deadline = -1, time.monotonic(), time.monotonic() + limit_s
    while time.monotonic() < deadline:
        n = db[POSITIONS].estimated_document_count()
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
        time.sleep(0.5)
    return last


def steady_phase(db: Any, port: int, args: argparse.Namespace) -> dict[str, Any]:
    devices = args.steady_devices
    procs = [start_simulator(["--host", "127.0.0.1", "--port", str(port), "--devices", str(devices // args.sim_procs),
                              "--rate", str(args.steady_rate / args.sim_procs), "--duration", str(args.steady_s),
                              "--heartbeat", "60", "--sack", "--drain", "30",
                              "--imei-base", str(STEADY_BASE + s * 100_000)]) for s in range(args.sim_procs)]
    ramp = min(10.0, devices / args.sim_procs / 1000)
    t0 = time.monotonic()
    samples: list[tuple[float, int]] = []
    while any(p.poll() is None for p in procs):
        time.sleep(1.0)
        samples.append((time.monotonic() - t0, db[POSITIONS].estimated_document_count()))
    reports = [simulator_report(p, 60) for p in procs]
    begin, end = ramp + 5, ramp + args.steady_s
    window = [s for s in samples if begin <= s[0] <= end] or samples
    (ta, na), (tb, nb) = window[0], window[-1]
    return {"steady_rate": (nb - na) / (tb - ta) if tb > ta else 0.0,
            "steady_offered": sum(r["achieved_rate"] for r in reports),
            "steady_dropped": sum(r["dropped_by_peer"] for r in reports)}


def storm_phase(db: Any, pid: int, port: int, base: int, args: argparse.Namespace) -> dict[str, Any]:
    per = args.devices // args.sim_procs
    total = per * args.sim_procs * args.backlog
    sampler = Sampler(db, pid)
    sampler.start()
    procs = [start_simulator(["--host", "127.0.0.1", "--port", str(port), "--devices", str(per), "--rate", "0",
                              "--duration", str(args.connected_s), "--ramp", str(args.ramp), "--heartbeat", "5",
                              "--backlog", str(args.backlog), "--replay-bytes", str(args.replay_bytes), "--sack",
                              "--drain", str(args.drain), "--imei-base", str(STORM_BASE + s * 100_000)])
             for s in range(args.sim_procs)]
    try:
        reports = [simulator_report(p, args.connected_s + args.drain + args.ramp + 300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        samples = sampler.stop()
    started = min(r["sack_timeline"]["started_at"] for r in reports)  # the first connection, about
    first = next((t for t, n, _ in samples if n > base), None)
    done = next((t for t, n, _ in samples if n >= base + total), None)
    hbd = [r["heartbeat_latency_ms"] for r in reports if r["heartbeat_latency_ms"].get("n")]
    result: dict[str, Any] = {
        "reports": total, "stored": db[POSITIONS].estimated_document_count() - base,
        "drain_s": done - started if done else None,
        "drain_rate": total / (done - first) if done and first and done > first else None,
        "hbd_p50_ms": max((h["p50"] for h in hbd), default=None),
        "hbd_p99_ms": max((h["p99"] for h in hbd), default=None),
        "hbd_max_ms": max((h["max"] for h in hbd), default=None),
        # How long a reply came after the SACKs of the reports its tracker wrote before the heartbeat.
        "hbd_behind_max_ms": max((r["heartbeat_behind_ms"].get("max", 0) for r in reports), default=None),
        "heartbeats": sum(r["heartbeats_sent"] for r in reports),
        "heartbeats_unanswered": sum(r["heartbeats_unanswered"] for r in reports),
        "dropped": sum(r["dropped_by_peer"] for r in reports),
        "reconnects": sum(r["connects"] - r["devices"] for r in reports),
        "unsacked": sum(r["unsacked"] for r in reports),
        "rss_max_mb": max((rss for _, _, rss in samples), default=0.0),
    }
    return result


def one_run(uri: str, args: argparse.Namespace, run: int) -> dict[str, Any]:
    db_name = f"storm_{run}_{int(time.time())}"
    port = free_port()
    gw = Gateway({"MONGODB_URI": uri, "MONGODB_DB": db_name, "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port),
                  "GATEWAY_ID": "bench-storm", "SACK_MODE": "all", "LOG_LEVEL": "INFO",
                  "MAX_CONNECTIONS": str(args.devices + args.steady_devices + 100)}, f"gv50-bench-{db_name}.log")
    client: MongoClient = MongoClient(uri)
    db = client[db_name]
    try:
        gw.start()
        result = steady_phase(db, port, args)
        base = wait_settled(db)
        result.update(storm_phase(db, gw.pid, port, base, args))
        log = gw.log_path.read_text(errors="replace")
        result["gateway_closes"] = sum(1 for line in log.splitlines() if "closing" in line and
                                       ("frame not completed" in line or "idle for" in line))
        result["exit_code"] = gw.stop()
        drain, steady = result["drain_rate"], result["steady_rate"]
        result["ratio"] = drain / steady if drain and steady else None
        # The steady figure is a capacity only if the gateway could not keep up with what was offered.
        result["steady_saturated"] = result["steady_rate"] < 0.95 * result["steady_offered"]
        return result
    finally:
        gw.stop()
        client.drop_database(db_name)
        client.close()


def num(value: float | None, spec: str = ",.0f") -> str:
    return "-" if value is None else format(value, spec)


def describe(r: dict[str, Any]) -> str:
    return (f"steady {num(r['steady_rate'])} reports/s (offered {num(r['steady_offered'])}"
            f"{'' if r['steady_saturated'] else ': NOT saturated, raise --steady-rate'}); storm of {r['reports']:,} "
            f"drained in {num(r['drain_s'], '.1f')} s at {num(r['drain_rate'])} reports/s, "
            f"ratio {num(r['ratio'], '.2f')}; heartbeat reply p50 {num(r['hbd_p50_ms'])} ms, "
            f"p99 {num(r['hbd_p99_ms'])} ms, max {num(r['hbd_max_ms'])} ms, unanswered {r['heartbeats_unanswered']}, "
            f"behind its own SACKs at most {num(r['hbd_behind_max_ms'])} ms; dropped by the gateway {r['dropped']} "
            f"(log: {r['gateway_closes']}), reconnects {r['reconnects']}, unsacked {r['unsacked']}; "
            f"RSS max {r['rss_max_mb']:.0f} MB")


def median_of(results: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in results if r[key] is not None]
    return median(values) if values else None


def main() -> None:
    parser = bench_parser(__doc__)
    parser.set_defaults(runs=1)
    parser.add_argument("--devices", type=int, default=2000, help="trackers in the storm")
    parser.add_argument("--backlog", type=int, default=BUFFER_LIMIT, help="reports each storm tracker replays")
    parser.add_argument("--replay-bytes", type=int, default=100_000, help="bytes per replay write")
    parser.add_argument("--ramp", type=float, default=3.0, help="seconds for the storm's trackers to connect")
    parser.add_argument("--connected-s", type=float, default=30.0, help="least time the storm's trackers stay")
    parser.add_argument("--drain", type=float, default=900.0, help="longest wait for the storm's last SACKs")
    parser.add_argument("--steady-devices", type=int, default=1000)
    parser.add_argument("--steady-rate", type=float, default=15000, help="offered GTFRI/s of the steady phase")
    parser.add_argument("--steady-s", type=float, default=30.0)
    parser.add_argument("--sim-procs", type=int, default=2, help="simulator processes per phase")
    parser.add_argument("--replset", action="store_true", help="a fresh 3-node replica set instead of one node")
    args = parser.parse_args()
    info = machine()
    results = []
    with ExitStack() as stack:
        if args.replset:
            from tests.replset import ReplicaSet  # common.py put the repository on sys.path
            uri = stack.enter_context(ReplicaSet(name="gv50bench", cache_gb=args.cache_gb)).uri
        else:
            uri = stack.enter_context(BenchMongo(args.uri, args.cache_gb))
        for run in range(args.runs):
            results.append(one_run(uri, args, run))
            print(f"run {run + 1}: {describe(results[-1])}", flush=True)

    summary = {"machine": info, "args": vars(args), "runs": results,
               **{key: median_of(results, key) for key in (
                   "steady_rate", "drain_s", "drain_rate", "ratio", "hbd_p50_ms", "hbd_p99_ms", "hbd_max_ms",
                   "hbd_behind_max_ms", "rss_max_mb")},
               "dropped": sum(r["dropped"] for r in results)}
    line = (f"storm, median of {args.runs}: {args.devices:,} trackers x {args.backlog} reports drained in "
            f"{num(summary['drain_s'], '.1f')} s at {num(summary['drain_rate'])} reports/s; steady "
            f"{num(summary['steady_rate'])} reports/s; ratio {num(summary['ratio'], '.2f')} (goal >= 0.9); heartbeat "
            f"p50 {num(summary['hbd_p50_ms'])} ms, p99 {num(summary['hbd_p99_ms'])} ms, "
            f"max {num(summary['hbd_max_ms'])} ms "
            f"(goal max <= 60,000); RSS max {num(summary['rss_max_mb'])} MB; dropped {summary['dropped']}")
    print_summary(args, summary, line)


if __name__ == "__main__":
    main()
