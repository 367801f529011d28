"""What majority costs: WRITE_CONCERN=majority against WRITE_CONCERN=1, on a single node and on a
3-node replica set (three mongod processes on this same machine), for

- ingest with SACK off (bench/ingest.py),
- ingest with SACK on at 6,000 msgs/s: SACK latency (bench/ingest.py --sack all --rate 6000),
- command latency with ingest behind it (bench/commands.py).

Each cell is one run of the named benchmark, in the same session, alternating the two write
concerns so that drift of this noisy machine does not favour either.

    .venv/bin/python bench/majority.py                     # 30 s per ingest run, both topologies
    .venv/bin/python bench/majority.py --topologies single --duration 60
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from common import REPO, BenchMongo, machine

sys.path.insert(0, str(REPO))

from tests.replset import ReplicaSet  # noqa: E402

BENCH = Path(__file__).resolve().parent


def run(script: str, uri: str, write_concern: str, extra: list[str]) -> dict[str, Any]:
    env = {**os.environ, "WRITE_CONCERN": write_concern}
    out = subprocess.run([sys.executable, str(BENCH / script), "--uri", uri, "--runs", "1", "--json", *extra],
                         env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{script} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def cells(uri: str, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {"majority": {}, "1": {}}
    for wc in ("majority", "1", "1", "majority")[: 2 * args.rounds]:
        row = table[wc]
        ingest = run("ingest.py", uri, wc, ["--duration", str(args.duration), "--raw-seconds", "5",
                                            "--rate", str(args.rate)])
        row.setdefault("ingest_msgs_per_s", []).append(round(ingest["msgs_per_s"]))
        sack = run("ingest.py", uri, wc, ["--duration", str(args.duration), "--raw-seconds", "5", "--sack", "all",
                                          "--rate", "6000"])
        row.setdefault("sack_p50_ms", []).append(sack["sack_p50_ms"])
        row.setdefault("sack_p99_ms", []).append(sack["sack_p99_ms"])
        row.setdefault("sack_msgs_per_s", []).append(round(sack["msgs_per_s"]))
        commands = run("commands.py", uri, wc, ["--commands", str(args.commands)])
        row.setdefault("command_p50_ms", []).append(round(commands["p50_ms"], 2))
        row.setdefault("command_p99_ms", []).append(round(commands["p99_ms"], 2))
        print(f"  WRITE_CONCERN={wc}: ingest {row['ingest_msgs_per_s'][-1]:,} msgs/s; SACK p50/p99 "
              f"{row['sack_p50_ms'][-1]}/{row['sack_p99_ms'][-1]} ms at {row['sack_msgs_per_s'][-1]:,} msgs/s; "
              f"commands p50/p99 {row['command_p50_ms'][-1]}/{row['command_p99_ms'][-1]} ms", flush=True)
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--topologies", default="single,replset3")
    ap.add_argument("--duration", type=float, default=30)
    ap.add_argument("--rate", type=float, default=15000, help="offered msgs/s of the SACK-off ingest run")
    ap.add_argument("--commands", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=1, choices=(1, 2), help="2: majority, 1, 1, majority")
    ap.add_argument("--cache-gb", type=float, default=2.0)
    args = ap.parse_args()
    results: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    for topology in args.topologies.split(","):
        print(f"{topology}:", flush=True)
        if topology == "single":
            with BenchMongo(None, args.cache_gb) as uri:
                results[topology] = cells(uri, args)
        else:
            # Three members on one 2-core machine: each gets a third of the cache the single node had.
            with ReplicaSet(name="benchrs", cache_gb=max(0.25, args.cache_gb / 3)) as rs:
                results[topology] = cells(rs.uri, args)
    print(json.dumps(results, default=str))


if __name__ == "__main__":
    main()
