"""Connections benchmark.

Long connections (`--mode long`, the default): 10,000 simulated trackers stay connected and send a
heartbeat every 60 s. Reports the gateway's RSS per connection and the heartbeat reply
(+SACK:GTHBD) latency. Goal: <= 15 KB per connection, heartbeat SACK p99 <= 10 ms. The trackers
run in two simulator processes (each process may hold 20,000 descriptors).

Trackers without a connection (`--mode short`, `udp`, `http`): 10,000 trackers in report mode 1
(a TCP connection per report, SACK on), mode 4 (UDP datagrams, SACK on) or mode 8 (HTTP GET),
sending GTFRI at `--rate` reports/s for the whole fleet. Reports what was achieved per second,
answered, stored, and the gateway's and mongod's CPU. Goal for short connections: >= 1,000/s.

    .venv/bin/python bench/connections.py                 # 10,000 devices, 3 runs
    .venv/bin/python bench/connections.py --devices 2000 --runs 1 --hold 70
    .venv/bin/python bench/connections.py --mode short --rate 1200 --duration 30
    .venv/bin/python bench/connections.py --mode udp --rate 5000 --duration 30
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import json
import subprocess
import sys

from common import (REPO, Gateway, cpu_seconds, free_port, median, print_summary, repeat, rss_bytes,
                    simulator_report, start_simulator)
from common import parser as bench_parser  # "parser" would shadow the local variable
from pymongo import MongoClient


def one_run(uri: str, args: argparse.Namespace, run: int) -> dict[str, Any]:
    db_name = f"conn_{run}_{int(time.time())}"
    port = free_port()
    gw = Gateway({"MONGODB_URI": uri, "MONGODB_DB": db_name, "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port),
                  "MAX_CONNECTIONS": str(args.devices + 1000), "GATEWAY_ID": f"conn-gw{run}"},
                 f"gv50-bench-{db_name}.log")
    client: MongoClient = MongoClient(uri)
    try:
        gw.start()
        time.sleep(2)
        base = rss_bytes(gw.pid)
        per = args.devices // args.sim_procs
        sims = [start_simulator(["--host", "127.0.0.1", "--port", str(port), "--devices", str(per), "--rate", "0",
                                 "--duration", str(args.hold), "--heartbeat", "60", "--ramp", str(args.ramp),
                                 "--imei-base", str(861000000000000 + s * 100_000)])
                for s in range(args.sim_procs)]
        db = client[db_name]
        deadline = time.monotonic() + args.ramp + 60
        online = 0
        while time.monotonic() < deadline:
            online = db.devices.count_documents({"online": True})
            if online >= args.devices:
                break
            time.sleep(1)
        time.sleep(5)
        held = rss_bytes(gw.pid)
        reports = [simulator_report(p, args.hold + args.ramp + 120) for p in sims]
        latencies = [r["heartbeat_latency_ms"] for r in reports]
        return {
            "devices": args.devices, "online": online,
            "connected": sum(r["connected"] for r in reports),
            "rss_base_mb": base / 1e6, "rss_held_mb": held / 1e6,
            "bytes_per_connection": (held - base) / max(online, 1),
            "heartbeats": sum(lat.get("n", 0) for lat in latencies),
            "replies": sum(r["heartbeat_replies"] for r in reports),
            "hbd_p50_ms": max(lat.get("p50", 0.0) for lat in latencies),
            "hbd_p99_ms": max(lat.get("p99", 0.0) for lat in latencies),
            "hbd_max_ms": max(lat.get("max", 0.0) for lat in latencies),
            "hello_p99_ms": max(r["hello_latency_ms"].get("p99", 0) for r in reports),
        }
    finally:
        gw.stop()
        client.drop_database(db_name)
        client.close()


def connectionless_run(uri: str, args: argparse.Namespace, run: int) -> dict[str, Any]:
    """Short TCP connections, UDP or HTTP GET at a paced rate; every report must be stored."""
    db_name = f"{args.mode}_{run}_{int(time.time())}"
    port, http_port = free_port(), free_port()
    gw = Gateway({"MONGODB_URI": uri, "MONGODB_DB": db_name, "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port),
                  "HTTP_PORT": str(http_port), "SACK_MODE": "all", "GATEWAY_ID": f"{args.mode}-gw{run}",
                  "MAX_CONNECTIONS": "20000",
                  # Every simulated tracker sends from 127.0.0.1: one address registers them all.
                  "UDP_NEW_IMEI_PER_MIN": "100000"}, f"gv50-bench-{db_name}.log")
    client: MongoClient = MongoClient(uri)
    per = args.devices // args.sim_procs
    try:
        gw.start()
        mongod_pid = args.mongod_pid

        def fleet(duration: float) -> list[dict[str, Any]]:
            sims = [subprocess.Popen(
                [sys.executable, "-m", "gv50_gevent.simulator.connectionless", "--mode", args.mode, "--host",
                 "127.0.0.1", "--port", str(http_port if args.mode == "http" else port), "--devices", str(per),
                 "--rate", str(args.rate / args.sim_procs), "--duration", str(duration), "--sack",
                 "--imei-base", str(862000000000000 + s * 100_000)], cwd=REPO, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE) for s in range(args.sim_procs)]
            out = []
            for proc in sims:
                stdout, err = proc.communicate(timeout=duration + 120)
                if proc.returncode not in (0, 1):
                    raise RuntimeError(f"simulator failed: {err.decode()[-2000:]}")
                out.append(json.loads(stdout))
            return out

        # Every tracker's first contact registers it (a vehicles and a devices write); the steady
        # state the goal is about is trackers that come back: one warm-up round first.
        warm = fleet(args.devices / args.rate)
        client[db_name].positions.delete_many({})
        cpu0 = (cpu_seconds(gw.pid), cpu_seconds(mongod_pid) if mongod_pid else 0.0)
        reports = fleet(args.duration)
        assert warm
        cpu1 = (cpu_seconds(gw.pid), cpu_seconds(mongod_pid) if mongod_pid else 0.0)
        db = client[db_name]
        sent = sum(r["sent"] for r in reports)
        deadline = time.monotonic() + 60
        while db.positions.estimated_document_count() < sent and time.monotonic() < deadline:
            time.sleep(0.5)
        window = max(r["window_s"] for r in reports)
        return {
            "mode": args.mode, "offered_rate": args.rate, "sent": sent,
            "answered": sum(r["answered"] for r in reports), "failed": sum(r["failed"] for r in reports),
            "stored": db.positions.count_documents({}), "window_s": window,
            "achieved_per_s": sum(r["answered"] for r in reports) / window,
            "latency_p50_ms": max(r["latency_ms"]["p50"] or 0 for r in reports),
            "latency_p99_ms": max(r["latency_ms"]["p99"] or 0 for r in reports),
            "errors": [r["errors"] for r in reports],
            "gateway_cpu": (cpu1[0] - cpu0[0]) / window, "mongod_cpu": (cpu1[1] - cpu0[1]) / window,
            "online": db.devices.count_documents({"online": True}),
        }
    finally:
        gw.stop()
        client.drop_database(db_name)
        client.close()


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--mode", choices=("long", "short", "udp", "http"), default="long")
    parser.add_argument("--rate", type=float, default=1200, help="reports per second (short, udp, http)")
    parser.add_argument("--duration", type=float, default=30, help="seconds of sending (short, udp, http)")
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--hold", type=float, default=125, help="seconds connected after the ramp")
    parser.add_argument("--ramp", type=float, default=20, help="seconds to open all connections")
    parser.add_argument("--sim-procs", type=int, default=2)
    args = parser.parse_args()
    if args.mode != "long":
        _connectionless(args)
        return
    info, results = repeat(args, one_run, lambda r: (
        f"{r['online']:,} online, RSS {r['rss_base_mb']:.0f} -> {r['rss_held_mb']:.0f} MB = "
        f"{r['bytes_per_connection'] / 1024:.1f} KB per connection; heartbeat reply p50 {r['hbd_p50_ms']:.2f} ms, "
        f"p99 {r['hbd_p99_ms']:.2f} ms, max {r['hbd_max_ms']:.1f} ms; first heartbeat (admission) p99 "
        f"{r['hello_p99_ms']:.1f} ms ({r['heartbeats']:,} heartbeats, {r['replies']:,} replies)"))
    summary = {"machine": info, "args": vars(args), "runs": results,
               "kb_per_connection": median([r["bytes_per_connection"] / 1024 for r in results]),
               "hbd_p99_ms": median([r["hbd_p99_ms"] for r in results])}
    print_summary(args, summary, f"connections, median of {args.runs}: {summary['kb_per_connection']:.1f} KB per "
                  f"connection (goal <= 15), heartbeat reply p99 {summary['hbd_p99_ms']:.2f} ms (goal <= 10)")

def _connectionless(args: argparse.Namespace) -> None:
    from common import BenchMongo, machine

    mongo = BenchMongo(args.uri, args.cache_gb)
    with mongo as uri:
        args.mongod_pid = mongo.pid
        results = []
        for run in range(args.runs):
            result = connectionless_run(uri, args, run)
            results.append(result)
            print(f"run {run + 1}: {args.mode}: {result['achieved_per_s']:,.0f}/s answered of {args.rate:,.0f} "
                  f"offered ({result['sent']:,} sent, {result['answered']:,} answered, {result['stored']:,} stored, "
                  f"{result['failed']} failed); latency p50 {result['latency_p50_ms']} ms, p99 "
                  f"{result['latency_p99_ms']} ms; gateway CPU {result['gateway_cpu']:.2f}", flush=True)
    summary = {"machine": machine(), "args": vars(args), "runs": results,
               "achieved_per_s": median([r["achieved_per_s"] for r in results])}
    goal = " (goal >= 1,000)" if args.mode == "short" else ""
    print_summary(args, summary, f"{args.mode}, median of {args.runs}: {summary['achieved_per_s']:,.0f} reports/s "
                  f"answered and stored{goal}")


if __name__ == "__main__":
    main()
