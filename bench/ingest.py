"""Ingest benchmark: N simulated trackers send GTFRI and heartbeats at an offered rate; we report
the stored documents per second, sustained, with durable writes and all indexes. In the same run,
raw `insert_many` of the same kind of documents (batches of 1000, j=true, same indexes, 4
writer threads) against the same mongod gives the ceiling, and the ratio ingest / raw.

    .venv/bin/python bench/ingest.py                      # 1,000 devices, 15,000 msgs/s, 60 s, 3 runs
    .venv/bin/python bench/ingest.py --procs 2            # two gateway processes on one port
    .venv/bin/python bench/ingest.py --sack all --rate 20000   # overload: twice the SACK-mode capacity
"""

from __future__ import annotations

import argparse
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from common import (BenchMongo, Gateway, cpu_seconds, free_port, machine, median, print_summary, rss_bytes,
                    simulator_report, start_simulator)
from common import parser as bench_parser  # "parser" would shadow the local variable
from pymongo import MongoClient
from pymongo.write_concern import WriteConcern

from gv50_gevent.protocol import parse
from gv50_gevent.simulator.tracker import SimTracker
from gv50_gevent.storage.database import MESSAGES, POSITIONS, ensure_indexes
from gv50_gevent.storage.documents import archive_doc, position_docs


def raw_documents(n_messages: int, devices: int) -> list[tuple[str, dict[str, Any]]]:
    """The documents the gateway writes for GTFRI messages: one position and one archive entry each."""
    trackers = [SimTracker(str(860000000000000 + 500_000 + i)) for i in range(devices)]
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    docs: list[tuple[str, dict[str, Any]]] = []
    for k in range(n_messages):
        tracker = trackers[k % devices]
        at = start + timedelta(seconds=k // devices)
        line = tracker.fri(31.8 + (k % 97) * 1e-3, 117.2 + (k % 89) * 1e-3, 42.0, now=at.timestamp()).rstrip("$")
        message = parse(line)
        for doc in position_docs(message, at):  # type: ignore[arg-type]
            docs.append((POSITIONS, doc))
        docs.append((MESSAGES, archive_doc(imei=tracker.imei, direction="in", raw=line, at=at, kind="report",
                                           status="ok", remote_addr="127.0.0.1:40000", gateway_id="raw")))
    return docs


def raw_insert_rate(uri: str, seconds: float, writers: int = 4, batch: int = 1000) -> float:
    """docs/s of plain insert_many(ordered=False), j=true, on the gateway's indexes."""
    client: MongoClient = MongoClient(uri)
    db = client.get_database("ingest_raw", write_concern=WriteConcern(w=1, j=True))
    client.drop_database("ingest_raw")
    ensure_indexes(db, 30)
    pool = raw_documents(400_000, 1000)
    lock = threading.Lock()
    cursor = [0]
    inserted = [0]
    deadline = time.monotonic() + seconds

    def writer() -> None:
        while time.monotonic() < deadline:
            with lock:
                start = cursor[0]
                cursor[0] += batch
            chunk = pool[start % len(pool): start % len(pool) + batch]
            if start >= len(pool):
                return
            by_coll: dict[str, list[dict[str, Any]]] = {}
            for name, doc in chunk:
                by_coll.setdefault(name, []).append(dict(doc))
            for name, docs in by_coll.items():
                db[name].insert_many(docs, ordered=False)
            with lock:
                inserted[0] += len(chunk)

    t0 = time.monotonic()
    threads = [threading.Thread(target=writer) for _ in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    client.drop_database("ingest_raw")
    client.close()
    return inserted[0] / elapsed


def one_run(uri: str, mongod_pid: int | None, args: argparse.Namespace, run: int) -> dict[str, Any]:
    db_name = f"ingest_{run}_{int(time.time())}"
    port = free_port()
    gateways = [Gateway({"MONGODB_URI": uri, "MONGODB_DB": db_name, "GATEWAY_HOST": "127.0.0.1",
                         "GATEWAY_PORT": str(port), "GATEWAY_ID": f"bench-gw{i}", "SACK_MODE": args.sack,
                         "REUSE_PORT": "true"}, f"gv50-bench-{db_name}-gw{i}.log") for i in range(args.procs)]
    try:
        return _measure(uri, mongod_pid, args, gateways, db_name, port)
    finally:
        for gw in gateways:
            gw.stop()


def _measure(uri: str, mongod_pid: int | None, args: argparse.Namespace, gateways: list[Gateway], db_name: str,
             port: int) -> dict[str, Any]:
    for gw in gateways:
        gw.start()
    client: MongoClient = MongoClient(uri)
    db = client[db_name]
    sims = []
    per_devices = args.devices // args.sim_procs
    for s in range(args.sim_procs):
        sims.append(start_simulator([
            "--host", "127.0.0.1", "--port", str(port), "--devices", str(per_devices),
            "--rate", str(args.rate / args.sim_procs), "--duration", str(args.duration),
            "--heartbeat", str(args.heartbeat), "--imei-base", str(860000000000000 + s * 100_000),
            "--drain", "10", *(["--sack"] if args.sack == "all" else [])]))
    ramp = min(10.0, per_devices / 1000)
    t0 = time.monotonic()
    samples: list[tuple[float, int, int, float, float, int]] = []
    sim_cpu0 = sum(cpu_seconds(p.pid) for p in sims)
    mongod_cpu0 = cpu_seconds(mongod_pid) if mongod_pid else 0.0
    sim_cpu = 0.0
    while any(p.poll() is None for p in sims):
        time.sleep(1.0)
        sim_cpu = max(sim_cpu, sum(cpu_seconds(p.pid) for p in sims) - sim_cpu0)
        samples.append((time.monotonic() - t0, db[POSITIONS].estimated_document_count(),
                        db[MESSAGES].estimated_document_count(),
                        sum(cpu_seconds(g.pid) for g in gateways),
                        cpu_seconds(mongod_pid) if mongod_pid else 0.0,
                        sum(rss_bytes(g.pid) for g in gateways)))
    reports = [simulator_report(p, 60) for p in sims]
    # Drain: the gateways flush what they hold.
    last = -1
    for _ in range(60):
        n = db[POSITIONS].estimated_document_count()
        if n == last:
            break
        last = n
        time.sleep(1.0)
    # Steady window: from 5 s after the ramp to the end of sending.
    begin, end = ramp + 5, ramp + args.duration
    window = [s for s in samples if begin <= s[0] <= end]
    if len(window) < 2:
        window = samples
    (ta, pa, ma, ga, mga, _), (tb, pb, mb, gb, mgb, _) = window[0], window[-1]
    span = tb - ta
    fri_sent = sum(r["fri_sent"] for r in reports)
    stored = db[POSITIONS].count_documents({})
    result = {
        "positions_per_s": (pb - pa) / span,
        "docs_per_s": ((pb - pa) + (mb - ma)) / span,
        "gateway_cpu": (gb - ga) / span,
        "mongod_cpu": (mgb - mga) / span if mongod_pid else None,
        "gateway_rss_max_mb": max(s[5] for s in samples) / 1e6,
        "offered": args.rate,
        "fri_sent": fri_sent,
        "positions_stored": stored,
        # With SACK on, what counts is that every SACKed report is stored (the tests check the
        # exact sets); what was written but never SACKed is still in the tracker's buffer.
        "lost": (max(0, sum(r.get("sacked", 0) for r in reports) - stored) if args.sack == "all"
                 else fri_sent - stored),
        "duplicates": duplicate_positions(db),
        "achieved_offered": sum(r.get("achieved_rate") or 0 for r in reports),
        "sack_p50_ms": max((r.get("sack_latency_ms") or {}).get("p50", 0) for r in reports),
        "sack_p99_ms": max((r.get("sack_latency_ms") or {}).get("p99", 0) for r in reports),
        "sacked": sum(r.get("sacked", 0) for r in reports),
        "unsacked": sum(r.get("unsacked", 0) for r in reports),
        "simulator_cpu": sim_cpu / samples[-1][0] if samples else None,
        "mongod_cpu_total": (samples[-1][4] - mongod_cpu0) if mongod_pid else None,
    }
    for gw in gateways:
        result.setdefault("exit_codes", []).append(gw.stop())
    client.drop_database(db_name)
    client.close()
    return result


def duplicate_positions(db: Any) -> int:
    """Positions that share the contract's unique key (imei, report, sent_at, count, index)."""
    pipeline = [{"$group": {"_id": {"i": "$imei", "r": "$report", "s": "$sent_at", "c": "$count", "x": "$index"},
                            "n": {"$sum": 1}}}, {"$match": {"n": {"$gt": 1}}}, {"$count": "dups"}]
    result = list(db[POSITIONS].aggregate(pipeline, allowDiskUse=True))
    return result[0]["dups"] if result else 0


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=15000, help="offered GTFRI per second, whole fleet")
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--heartbeat", type=float, default=60)
    parser.add_argument("--procs", type=int, default=1, help="gateway processes sharing the port")
    parser.add_argument("--sim-procs", type=int, default=2, help="simulator processes")
    parser.add_argument("--sack", choices=("off", "all"), default="off")
    parser.add_argument("--raw-seconds", type=float, default=20)
    args = parser.parse_args()
    info = machine()
    results = []
    raws = []
    with BenchMongo(args.uri, args.cache_gb) as uri:
        for run in range(args.runs):
            results.append(one_run(uri, mongod_pid_of(uri), args, run))
            raws.append(raw_insert_rate(uri, args.raw_seconds))
            r = results[-1]
            print(f"run {run + 1}: stored {r['positions_per_s']:,.0f} msgs/s ({r['docs_per_s']:,.0f} docs/s), "
                  f"raw insert_many {raws[-1]:,.0f} docs/s, ratio {r['docs_per_s'] / raws[-1]:.2f}; "
                  f"CPU gateway {r['gateway_cpu']:.2f}, mongod {r['mongod_cpu'] or 0:.2f}, "
                  f"simulator {r['simulator_cpu'] or 0:.2f}, "
                  f"RSS max {r['gateway_rss_max_mb']:.0f} MB, lost {r['lost']}, duplicates {r['duplicates']}, "
                  f"sent {r['fri_sent']:,} (offered {r['achieved_offered']:,.0f}/s)"
                  + (f", SACK p50 {r['sack_p50_ms']} ms p99 {r['sack_p99_ms']} ms, sacked {r['sacked']:,}, "
                     f"unsacked {r['unsacked']}" if args.sack == "all" else ""), flush=True)
    summary = {
        "machine": info, "args": vars(args),
        "msgs_per_s": median([r["positions_per_s"] for r in results]),
        "docs_per_s": median([r["docs_per_s"] for r in results]),
        "raw_docs_per_s": median(raws),
        "ratio": median([r["docs_per_s"] / raw for r, raw in zip(results, raws)]),
        "lost": sum(r["lost"] for r in results),
        "runs": results, "raw_runs": raws,
    }
    line = (f"ingest, median of {args.runs}: {summary['msgs_per_s']:,.0f} msgs/s stored "
            f"({summary['docs_per_s']:,.0f} docs/s); raw insert_many {summary['raw_docs_per_s']:,.0f} docs/s; "
            f"ratio {summary['ratio']:.2f} (goal >= 15,000 msgs/s, ratio >= 0.6); lost {summary['lost']}")
    if args.sack == "all":
        summary["sack_p50_ms"] = median([r["sack_p50_ms"] for r in results])
        summary["sack_p99_ms"] = median([r["sack_p99_ms"] for r in results])
        line += f"; SACK p50 {summary['sack_p50_ms']:,.0f} ms, p99 {summary['sack_p99_ms']:,.0f} ms (goal p99 <= 100)"
    print_summary(args, summary, line)

def mongod_pid_of(uri: str) -> int | None:
    """The pid of a mongod on this machine listening on the URI's port (for its CPU figure)."""
    import re
    import subprocess
    m = re.search(r":(\d+)/", uri)
    if not m:
        return None
    out = subprocess.run(["pgrep", "-f", f"mongod.*--port {m.group(1)}"], capture_output=True, text=True).stdout.split()
    return int(out[0]) if out else None


if __name__ == "__main__":
    main()
