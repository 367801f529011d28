"""Rollout benchmark: a profile that changes two blocks (FRI and HRM) on 2,000 simulated trackers.

Measures the time from writing the profile until 99 % and 100 % of the trackers are `in_sync`
(confirmed by their own settings dump), the commands sent per tracker (goal: the blocks changed
plus one dump, so 3), and the p99 of operator commands (`get_version`, 5 a second, inserted
during the rollout) from insert to the tracker. A second scenario starts with 20 % of the fleet
offline; they reconnect 10 s after the profile is written.

    .venv/bin/python bench/rollout.py --rate 100        # both scenarios, 2,000 trackers
    .venv/bin/python bench/rollout.py --trackers 300 --runs 1   # a quick look

The trackers run in this process (gevent, monkey-patched); the gateway is its own process with
its default FLEET_COMMANDS_PER_S unless --rate is given. `gv50ctl rollout` runs once when a
fifth of the trackers is in sync and once at the end; its output is printed.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import random  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402
from common import REPO, Gateway, free_port, print_summary, repeat  # noqa: E402
from common import parser as bench_parser  # noqa: E402
from pymongo import MongoClient  # noqa: E402
from pymongo.write_concern import WriteConcern  # noqa: E402

from gv50_gevent.simulator import SimTracker  # noqa: E402

IMEI_BASE = 866000000000000
PROFILE = {"_id": "bench", "settings": {"fri": {"mode": 1, "send_interval_s": 30}, "hrm": {"hbd_mask": "E7"}},
           "applies_to": {"all": True}}
OPERATOR_PER_S = 5.0


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else float("nan")


def gv50ctl(uri: str, db_name: str, *args: str) -> str:
    env = {"MONGODB_URI": uri, "MONGODB_DB": db_name, "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "gv50_gevent.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    return done.stdout + done.stderr


def connect(trackers: list[SimTracker], port: int, per_s: float = 500) -> None:
    for k, t in enumerate(trackers):
        t.connect("127.0.0.1", port)
        if k % 50 == 49:
            gevent.sleep(50 / per_s)


def one_run(uri: str, args: Any, run: int) -> dict[str, Any]:
    offline_share = args.offline if run % 2 else 0.0
    db_name = f"rollout_{run}_{int(time.time())}"
    port = free_port()
    env = {"MONGODB_URI": uri, "MONGODB_DB": db_name, "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port),
           "GATEWAY_ID": f"rollout-gw{run}", "UDP_ENABLED": "false"}
    if args.rate:
        env["FLEET_COMMANDS_PER_S"] = str(args.rate)
    gw = Gateway(env, f"gv50-bench-{db_name}.log")
    client: MongoClient = MongoClient(uri, tz_aware=True)
    db = client[db_name]
    majority = WriteConcern(w="majority")
    trackers = [SimTracker(str(IMEI_BASE + i)) for i in range(args.trackers)]
    n_off = int(len(trackers) * offline_share)
    offline = trackers[:n_off]
    outputs: dict[str, str] = {}
    try:
        gw.start()
        connect(trackers, port)
        deadline = time.monotonic() + 120
        while db.devices.count_documents({"online": True}) < len(trackers):
            if time.monotonic() > deadline:
                raise RuntimeError("the trackers did not all connect")
            gevent.sleep(0.5)
        for t in offline:
            t.disconnect()
        while db.devices.count_documents({"online": True}) > len(trackers) - n_off:
            gevent.sleep(0.5)

        t0 = time.time()
        db.get_collection("profiles", write_concern=majority).insert_one(
            {**PROFILE, "created_at": datetime.now(timezone.utc), "updated_at": datetime.now(timezone.utc)})
        operator_ids: dict[Any, tuple[float, SimTracker]] = {}
        stop = Event()
        rng = random.Random(run)
        online = trackers[n_off:]

        def operator() -> None:
            commands = db.get_collection("commands", write_concern=majority)
            while not stop.wait(1 / OPERATOR_PER_S):
                t = rng.choice(online)
                at = time.time()
                operator_ids[commands.insert_one({"imei": t.imei, "type": "get_version"}).inserted_id] = (at, t)

        op = gevent.spawn(operator)
        if offline:
            gevent.spawn_later(args.reconnect_after, connect, offline, port)
        t99 = t100 = None
        half_done = False
        limit = time.monotonic() + args.timeout
        while time.monotonic() < limit:
            in_sync = db.devices.count_documents({"config_state.state": "in_sync"})
            if not half_done and in_sync >= len(trackers) // 5:
                half_done = True
                outputs["during"] = gv50ctl(uri, db_name, "rollout", "bench", "--limit", "5")
            if t99 is None and in_sync >= 0.99 * len(trackers):
                t99 = time.time() - t0
            if in_sync == len(trackers):
                t100 = time.time() - t0
                break
            gevent.sleep(0.25)
        stop.set()
        op.join()
        outputs["after"] = gv50ctl(uri, db_name, "rollout", "bench", "--limit", "5")
        rollout = db.commands.count_documents({"source": "profile:bench"})
        by_type = {row["_id"]: row["n"] for row in db.commands.aggregate([
            {"$match": {"source": "profile:bench"}}, {"$group": {"_id": "$type", "n": {"$sum": 1}}}])}
        latencies = []
        for doc in db.commands.find({"_id": {"$in": list(operator_ids)}}, {"serial": 1}):
            at, t = operator_ids[doc["_id"]]
            serial = str(doc.get("serial") or "")
            arrived = next((c[0] for c in t.commands if serial and c[2].rstrip("$").endswith(serial)), None)
            if arrived is not None:
                latencies.append((arrived - at) * 1000)
        states = {row["_id"]: row["n"] for row in db.devices.aggregate([
            {"$group": {"_id": "$config_state.state", "n": {"$sum": 1}}}])}
        return {"trackers": len(trackers), "offline_at_start": n_off, "t99_s": t99, "t100_s": t100,
                "commands_per_tracker": rollout / len(trackers), "rollout_commands": by_type, "states": states,
                "operator_commands": len(operator_ids), "operator_delivered": len(latencies),
                "operator_p50_ms": percentile(latencies, 0.5), "operator_p99_ms": percentile(latencies, 0.99),
                "gv50ctl_rollout": outputs}
    finally:
        for t in trackers:
            t.disconnect()
        gw.stop()
        client.drop_database(db_name)
        client.close()


def main() -> None:
    parser = bench_parser(__doc__)
    parser.set_defaults(runs=2)
    parser.add_argument("--trackers", type=int, default=2000)
    parser.add_argument("--offline", type=float, default=0.2, help="share offline at start in the second run")
    parser.add_argument("--reconnect-after", type=float, default=10.0, help="seconds after the profile")
    parser.add_argument("--rate", type=float, default=None, help="FLEET_COMMANDS_PER_S (default: the gateway's)")
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()

    def line(r: dict[str, Any]) -> str:
        t99 = f"{r['t99_s']:.1f} s" if r["t99_s"] is not None else "not reached"
        t100 = f"{r['t100_s']:.1f} s" if r["t100_s"] is not None else "not reached"
        return (f"{r['trackers']:,} trackers, {r['offline_at_start']} offline at start: 99 % in sync {t99}, "
                f"100 % {t100}; {r['commands_per_tracker']:.2f} commands per tracker {r['rollout_commands']}; "
                f"operator commands {r['operator_delivered']}/{r['operator_commands']} delivered, "
                f"p50 {r['operator_p50_ms']:.0f} ms, p99 {r['operator_p99_ms']:.0f} ms; states {r['states']}")

    info, results = repeat(args, one_run, line)
    if not args.json:
        for r in results:
            for when, text in r["gv50ctl_rollout"].items():
                print(f"\n$ gv50ctl rollout bench   # {when}, {r['offline_at_start']} offline at start\n{text}")
    print_summary(args, {"machine": info, "args": vars(args), "runs": results}, "rollout: see the runs above")


if __name__ == "__main__":
    main()
