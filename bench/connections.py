"""Connections benchmark: 10,000 simulated trackers stay connected and send a heartbeat every
60 s. Reports the gateway's RSS per connection and the heartbeat reply (+SACK:GTHBD) latency.

    .venv/bin/python bench/connections.py                 # 10,000 devices, 3 runs
    .venv/bin/python bench/connections.py --devices 2000 --runs 1 --hold 70

Goal: <= 15 KB per connection, heartbeat SACK p99 <= 10 ms. The trackers run in two simulator
processes (each process may hold 20,000 descriptors).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from common import Gateway, free_port, median, print_summary, repeat, rss_bytes, simulator_report, start_simulator
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


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--hold", type=float, default=125, help="seconds connected after the ramp")
    parser.add_argument("--ramp", type=float, default=20, help="seconds to open all connections")
    parser.add_argument("--sim-procs", type=int, default=2)
    args = parser.parse_args()
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

if __name__ == "__main__":
    main()
