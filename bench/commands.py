"""Command latency benchmark: from the operator's `insert_one` (w=majority) to the `AT+GT...`
bytes arriving at the simulated tracker.

Two ways to run it:

- fixed ingest (the default): >= 1,000 commands to 1,000 connected trackers while another 1,000
  trackers keep `--background` msgs/s of ingest going (5,000 by default; 0 for none).
- `--paced 0.6`: in one run, first the commands at rest, then the gateway's ingest capacity
  (1,000 trackers offered `--capacity-rate`, SACK off: what it stores per second), then the same
  commands with ingest paced at 0.6 x that capacity. It prints both and their ratio
  (goal: p99 under ingest at most 2 x the p99 at rest).

Each command's time is split where it can be seen from outside the gateway:
insert (the operator's durable write) -> stream (a change stream of this benchmark sees it) ->
claim (the gateway's claim, its `history` time, taken just before the claim's durable write) ->
tracker (the bytes arrive).

    .venv/bin/python bench/commands.py                        # 3 runs, 5,000 msgs/s behind
    .venv/bin/python bench/commands.py --background 0         # without the ingest load
    .venv/bin/python bench/commands.py --paced 0.6 --devices 100 --commands 600 --runs 1

Goal: p50 <= 5 ms, p99 <= 20 ms.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import threading
import time
from datetime import datetime
from typing import Any

from common import Gateway, free_port, median, print_summary, repeat, simulator_report, start_simulator
from common import parser as bench_parser  # "parser" would shadow the local variable
from pymongo import MongoClient
from pymongo.write_concern import WriteConcern

from gv50_gevent.storage.database import POSITIONS

COMMAND_IMEI_BASE = 863000000000000
INGEST_IMEI_BASE = 864000000000000
STEPS = ("insert", "stream", "claim", "tracker")
STEPS_WINDOW_S = 62  # the gateway's figures cover the last 60 s


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


class StreamClock(threading.Thread):
    """When a change stream of our own sees each inserted command: how long MongoDB takes to show an
    insert to a change stream, apart from the gateway."""

    def __init__(self, coll: Any) -> None:
        super().__init__(daemon=True)
        self.coll = coll
        self.seen: dict[Any, float] = {}
        self.halt = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        with self.coll.watch([{"$match": {"operationType": "insert"}}], max_await_time_ms=100) as stream:
            self.ready.set()
            while not self.halt.is_set():
                change = stream.try_next()
                if change is not None:
                    self.seen.setdefault(change["documentKey"]["_id"], time.time())

    def stop(self) -> None:
        self.halt.set()
        self.join(5)


def ingest(port: int, rate: float, duration: float) -> subprocess.Popen[bytes]:
    return start_simulator(["--host", "127.0.0.1", "--port", str(port), "--devices", "1000", "--rate", str(rate),
                            "--heartbeat", "60", "--duration", str(duration), "--imei-base", str(INGEST_IMEI_BASE),
                            "--ramp", "5"])


def stop_early(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """End a simulator now (SIGINT: it stops and still reports)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    return simulator_report(proc, 120)


def capacity(db: Any, port: int, args: argparse.Namespace) -> dict[str, Any]:
    """What the gateway stores per second when offered more than it can take (SACK off)."""
    proc = ingest(port, args.capacity_rate, args.capacity_s)
    t0 = time.monotonic()
    samples: list[tuple[float, int]] = []
    while proc.poll() is None:
        time.sleep(1.0)
        samples.append((time.monotonic() - t0, db[POSITIONS].estimated_document_count()))
    report = simulator_report(proc, 60)
    window = [s for s in samples if 8 <= s[0] <= 5 + args.capacity_s] or samples
    (ta, na), (tb, nb) = window[0], window[-1]
    last, since = -1, time.monotonic()
    while time.monotonic() - since < 5:  # let the writer drain before the next phase
        n = db[POSITIONS].estimated_document_count()
        if n != last:
            last, since = n, time.monotonic()
        time.sleep(0.5)
    return {"capacity_msgs_per_s": (nb - na) / (tb - ta) if tb > ta else 0.0, "offered": report["achieved_rate"]}


def send_commands(db: Any, commands: Any, imeis: list[str], args: argparse.Namespace,
                  seed: int) -> dict[Any, tuple[float, float, float | None]]:
    """Insert the commands at `--per-second`; returns _id -> (before the insert, after it, when our
    change stream saw it)."""
    clock = StreamClock(db.commands)
    clock.start()
    clock.ready.wait(10)
    rng = random.Random(seed)
    order = list(imeis)
    rng.shuffle(order)
    inserted: dict[Any, tuple[float, float]] = {}
    interval = 1 / args.per_second
    next_at = time.monotonic()
    for k in range(args.commands):
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
        kind = ("block", "unblock", "locate", "get_version")[k % 4]
        t = time.time()
        result = commands.insert_one({"imei": order[k % len(order)], "type": kind})
        inserted[result.inserted_id] = (t, time.time())
    # Until every command went out (or a minute): a slow phase must not end before its stragglers.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and db.commands.count_documents(
            {"_id": {"$in": list(inserted)}, "status": {"$nin": ["sent", "acknowledged"]}}):
        time.sleep(0.5)
    time.sleep(2)
    clock.stop()
    return {key: (before, after, clock.seen.get(key)) for key, (before, after) in inserted.items()}


def latencies(db: Any, inserted: dict[Any, Any], arrivals: dict[tuple[str, str], float]) -> dict[str, Any]:
    """insert -> tracker of each command, and its steps."""
    total: list[float] = []
    steps: dict[str, list[float]] = {name: [] for name in STEPS}
    to_claim: list[float] = []
    statuses: dict[str, int] = {}
    for doc in db.commands.find({"_id": {"$in": list(inserted)}}, {"imei": 1, "serial": 1, "status": 1,
                                                                   "history": 1}):
        status = doc.get("status") or "not yet seen by the gateway"
        statuses[status] = statuses.get(status, 0) + 1
        arrived = arrivals.get((doc["imei"], (doc.get("serial") or "").upper()))
        if arrived is None:
            continue
        before, after, streamed = inserted[doc["_id"]]
        total.append((arrived - before) * 1000)
        sent = next((h["at"].timestamp() for h in doc.get("history", []) if h.get("status") == "sent"), None)
        if sent is not None:
            to_claim.append((sent - before) * 1000)
        marks = [before, after, streamed, sent, arrived]
        if None not in marks:
            for name, a, b in zip(STEPS, marks, marks[1:]):
                steps[name].append((b - a) * 1000)
    out: dict[str, Any] = {"commands": len(inserted), "delivered": len(total), "statuses": statuses}
    if total:
        out.update(p50_ms=percentile(total, 0.50), p99_ms=percentile(total, 0.99), max_ms=max(total),
                   claim_p50_ms=percentile(to_claim, 0.50) if to_claim else None,
                   claim_p99_ms=percentile(to_claim, 0.99) if to_claim else None,
                   steps={name: {"p50": round(percentile(v, 0.50), 1), "p99": round(percentile(v, 0.99), 1)}
                          for name, v in steps.items() if v})
    return out


def gateway_steps(db: Any, gateway_id: str) -> dict[str, Any]:
    """The gateway's own split of a new command's time, last minute (`command_steps_ms` in its
    `gateway_state` figures; absent in gateways that do not time them)."""
    time.sleep(1.5)  # its figures are written every second (GATEWAY_ALIVE_INTERVAL_S)
    doc = db.gateway_state.find_one({"_id": f"gateway:{gateway_id}"}) or {}
    return (doc.get("stats") or {}).get("command_steps_ms") or {}


def arrivals_of(report: dict[str, Any]) -> dict[tuple[str, str], float]:
    arrivals: dict[tuple[str, str], float] = {}
    for entry in report["command_log"]:
        serial = entry["line"].rstrip("$").rsplit(",", 1)[1].upper()
        arrivals.setdefault((entry["imei"], serial), datetime.fromisoformat(entry["arrived_at"]).timestamp())
    return arrivals


def one_run(uri: str, args: argparse.Namespace, run: int) -> dict[str, Any]:
    db_name = f"cmd_{run}_{int(time.time())}"
    port = free_port()
    gw = Gateway({"MONGODB_URI": uri, "MONGODB_DB": db_name, "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port),
                  "GATEWAY_ID": f"cmd-gw{run}", "GATEWAY_ALIVE_INTERVAL_S": "1"}, f"gv50-bench-{db_name}.log")
    client: MongoClient = MongoClient(uri, tz_aware=True)
    db = client[db_name]
    commands = db.get_collection("commands", write_concern=WriteConcern(w="majority"))
    phase_s = args.commands / args.per_second + 20
    try:
        gw.start()
        hold = (args.capacity_s + 2 * phase_s + 60) if args.paced else phase_s
        targets = start_simulator(["--host", "127.0.0.1", "--port", str(port), "--devices", str(args.devices),
                                   "--rate", "0", "--heartbeat", "60", "--duration", str(hold),
                                   "--imei-base", str(COMMAND_IMEI_BASE), "--ramp", "5"])
        background = ingest(port, args.background, phase_s) if args.background and not args.paced else None
        deadline = time.monotonic() + 60
        while db.devices.count_documents({"online": True, "_id": {"$gte": str(COMMAND_IMEI_BASE),
                                                                  "$lt": str(INGEST_IMEI_BASE)}}) < args.devices:
            if time.monotonic() > deadline:
                raise RuntimeError("the trackers did not all connect")
            time.sleep(0.5)
        time.sleep(3)
        imeis = [str(COMMAND_IMEI_BASE + i) for i in range(args.devices)]
        if not args.paced:
            inserted = send_commands(db, commands, imeis, args, run)
            inside = gateway_steps(db, f"cmd-gw{run}")
            report = simulator_report(targets, hold + 120)
            if background is not None:
                simulator_report(background, hold + 120)
            return {**latencies(db, inserted, arrivals_of(report)), "gateway_steps": inside}
        at_rest = send_commands(db, commands, imeis, args, run)
        rest_inside, rest_end = gateway_steps(db, f"cmd-gw{run}"), time.monotonic()
        result: dict[str, Any] = capacity(db, port, args)
        rate = args.paced * result["capacity_msgs_per_s"]
        # The gateway's own figures cover the last minute: the loaded phase's must not include the rest's.
        time.sleep(max(0.0, rest_end + STEPS_WINDOW_S - (time.monotonic() + 10 + args.commands / args.per_second)))
        background = ingest(port, rate, phase_s)
        time.sleep(8)  # the ramp, and the writer's batches at their steady size
        loaded = send_commands(db, commands, imeis, args, run + 1000)
        loaded_inside = gateway_steps(db, f"cmd-gw{run}")
        offered = stop_early(background)["achieved_rate"]
        arrivals = arrivals_of(stop_early(targets))
        result.update(paced_rate=rate, paced_offered=offered,
                      rest={**latencies(db, at_rest, arrivals), "gateway_steps": rest_inside},
                      loaded={**latencies(db, loaded, arrivals), "gateway_steps": loaded_inside})
        result["ratio_p99"] = result["loaded"]["p99_ms"] / result["rest"]["p99_ms"]
        # The summary's figures are those under ingest.
        result.update({k: result["loaded"][k] for k in ("p50_ms", "p99_ms")})
        return result
    finally:
        gw.stop()
        client.drop_database(db_name)
        client.close()


def steps_text(r: dict[str, Any]) -> str:
    outside = ", ".join(f"{name} {s['p50']}/{s['p99']}" for name, s in r.get("steps", {}).items())
    inside = ", ".join(f"{name} {s['p50']}/{s['p99']}" for name, s in r.get("gateway_steps", {}).items())
    return outside + (f"; inside the gateway: {inside}" if inside else "")


def phase_text(r: dict[str, Any]) -> str:
    return (f"{r['delivered']:,}/{r['commands']:,} delivered; insert -> tracker p50 {r['p50_ms']:.2f} ms, "
            f"p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.1f} ms; steps p50/p99 ms: {steps_text(r)}; "
            f"{r['statuses']}")


def describe(r: dict[str, Any]) -> str:
    if "rest" not in r:
        return phase_text(r)
    return (f"capacity {r['capacity_msgs_per_s']:,.0f} msgs/s (offered {r['offered']:,.0f}); at rest: "
            f"{phase_text(r['rest'])}\n       with ingest at {r['paced_rate']:,.0f} msgs/s (offered "
            f"{r['paced_offered']:,.0f}): {phase_text(r['loaded'])}\n       p99 under ingest / at rest: "
            f"{r['ratio_p99']:.2f} (goal <= 2)")


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--devices", type=int, default=1000, help="trackers that receive commands")
    parser.add_argument("--commands", type=int, default=1200)
    parser.add_argument("--per-second", type=float, default=50, help="commands inserted per second")
    parser.add_argument("--background", type=float, default=5000, help="ingest msgs/s from 1,000 other trackers")
    parser.add_argument("--paced", type=float, default=None, metavar="F",
                        help="measure the capacity, then commands at rest and with ingest at F x capacity")
    parser.add_argument("--capacity-rate", type=float, default=15000, help="msgs/s offered to measure the capacity")
    parser.add_argument("--capacity-s", type=float, default=15, help="seconds of the capacity measurement")
    args = parser.parse_args()
    info, results = repeat(args, one_run, describe)
    summary: dict[str, Any] = {"machine": info, "args": vars(args), "runs": results,
                               "p50_ms": median([r["p50_ms"] for r in results]),
                               "p99_ms": median([r["p99_ms"] for r in results])}
    behind = f"ingest at {args.paced} x capacity" if args.paced else f"background ingest {args.background:,.0f} msgs/s"
    line = (f"commands, median of {args.runs}: p50 {summary['p50_ms']:.2f} ms (goal <= 5), "
            f"p99 {summary['p99_ms']:.2f} ms (goal <= 20), {behind}")
    if args.paced:
        summary["ratio_p99"] = median([r["ratio_p99"] for r in results])
        line += f"; p99 under ingest / at rest {summary['ratio_p99']:.2f} (goal <= 2)"
    print_summary(args, summary, line)


if __name__ == "__main__":
    main()
