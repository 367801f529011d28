"""Command latency benchmark: from the operator's `insert_one` (w=majority) to the `AT+GT...`
bytes arriving at the simulated tracker, over >= 1,000 commands with 1,000 trackers connected,
while another 1,000 trackers keep 5,000 msgs/s of ingest going in the background.

    .venv/bin/python bench/commands.py                        # 3 runs
    .venv/bin/python bench/commands.py --background 0         # without the ingest load

Goal: p50 <= 5 ms, p99 <= 20 ms.
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import datetime
from typing import Any

from common import Gateway, free_port, median, print_summary, repeat, simulator_report, start_simulator
from common import parser as bench_parser  # "parser" would shadow the local variable
from pymongo import MongoClient
from pymongo.write_concern import WriteConcern

COMMAND_IMEI_BASE = 863000000000000


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def one_run(uri: str, args: argparse.Namespace, run: int) -> dict[str, Any]:
    db_name = f"cmd_{run}_{int(time.time())}"
    port = free_port()
    gw = Gateway({"MONGODB_URI": uri, "MONGODB_DB": db_name, "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port),
                  "GATEWAY_ID": f"cmd-gw{run}"}, f"gv50-bench-{db_name}.log")
    client: MongoClient = MongoClient(uri, tz_aware=True)
    db = client[db_name]
    commands = db.get_collection("commands", write_concern=WriteConcern(w="majority"))
    try:
        gw.start()
        hold = args.commands / args.per_second + 20
        targets = start_simulator(["--host", "127.0.0.1", "--port", str(port), "--devices", str(args.devices),
                                   "--rate", "0", "--heartbeat", "60", "--duration", str(hold),
                                   "--imei-base", str(COMMAND_IMEI_BASE), "--ramp", "5"])
        background = None
        if args.background:
            background = start_simulator(["--host", "127.0.0.1", "--port", str(port), "--devices", "1000",
                                          "--rate", str(args.background), "--heartbeat", "60",
                                          "--duration", str(hold), "--imei-base", "864000000000000", "--ramp", "5"])
        deadline = time.monotonic() + 60
        while db.devices.count_documents({"online": True, "_id": {"$gte": str(COMMAND_IMEI_BASE)}}) < args.devices:
            if time.monotonic() > deadline:
                raise RuntimeError("the trackers did not all connect")
            time.sleep(0.5)
        time.sleep(3)
        rng = random.Random(run)
        imeis = [str(COMMAND_IMEI_BASE + i) for i in range(args.devices)]
        rng.shuffle(imeis)
        inserted: dict[Any, float] = {}
        interval = 1 / args.per_second
        next_at = time.monotonic()
        for k in range(args.commands):
            next_at += interval
            time.sleep(max(0.0, next_at - time.monotonic()))
            imei = imeis[k % len(imeis)]
            kind = ("block", "unblock", "locate", "get_version")[k % 4]
            t = time.time()
            result = commands.insert_one({"imei": imei, "type": kind})
            inserted[result.inserted_id] = t
        time.sleep(3)
        report = simulator_report(targets, hold + 120)
        if background is not None:
            simulator_report(background, hold + 120)
        arrivals: dict[tuple[str, str], float] = {}
        for entry in report["command_log"]:
            line = entry["line"]
            serial = line.rstrip("$").rsplit(",", 1)[1].upper()
            arrivals.setdefault((entry["imei"], serial), datetime.fromisoformat(entry["arrived_at"]).timestamp())
        latencies = []
        to_claim = []  # insert -> the gateway's claim (change stream + read): where the time goes
        statuses: dict[str, int] = {}
        for doc in db.commands.find({}, {"imei": 1, "serial": 1, "status": 1, "history": 1}):
            status = doc.get("status") or "not yet seen by the gateway"
            statuses[status] = statuses.get(status, 0) + 1
            arrived = arrivals.get((doc["imei"], (doc.get("serial") or "").upper()))
            if arrived is not None and doc["_id"] in inserted:
                latencies.append((arrived - inserted[doc["_id"]]) * 1000)
                sent = next((h["at"] for h in doc.get("history", []) if h.get("status") == "sent"), None)
                if sent is not None:
                    to_claim.append((sent.timestamp() - inserted[doc["_id"]]) * 1000)
        return {"commands": args.commands, "delivered": len(latencies), "statuses": statuses,
                "p50_ms": percentile(latencies, 0.50), "p99_ms": percentile(latencies, 0.99),
                "max_ms": max(latencies),
                "claim_p50_ms": percentile(to_claim, 0.50) if to_claim else None,
                "claim_p99_ms": percentile(to_claim, 0.99) if to_claim else None}
    finally:
        gw.stop()
        client.drop_database(db_name)
        client.close()


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--devices", type=int, default=1000, help="trackers that receive commands")
    parser.add_argument("--commands", type=int, default=1200)
    parser.add_argument("--per-second", type=float, default=50, help="commands inserted per second")
    parser.add_argument("--background", type=float, default=5000, help="ingest msgs/s from 1,000 other trackers")
    args = parser.parse_args()
    info, results = repeat(args, one_run, lambda r: (
        f"{r['delivered']:,}/{r['commands']:,} delivered; insert -> device p50 {r['p50_ms']:.2f} ms, "
        f"p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.1f} ms; insert -> claim p50 {r['claim_p50_ms']:.2f} ms, "
        f"p99 {r['claim_p99_ms']:.2f} ms; {r['statuses']}"))
    summary = {"machine": info, "args": vars(args), "runs": results,
               "p50_ms": median([r["p50_ms"] for r in results]), "p99_ms": median([r["p99_ms"] for r in results])}
    print_summary(args, summary, f"commands, median of {args.runs}: p50 {summary['p50_ms']:.2f} ms (goal <= 5), "
                  f"p99 {summary['p99_ms']:.2f} ms (goal <= 20), background ingest {args.background:,.0f} msgs/s")

if __name__ == "__main__":
    main()
