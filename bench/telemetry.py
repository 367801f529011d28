"""What `devices.telemetry` adds to the ingest path, in µs, against the path without it.

    .venv/bin/python bench/telemetry.py [--reps N] [--number N] [--mongod] [--json]

1. Per report (the session's greenlet, every GTFRI): the device state a report leaves, as
   `Ingest._note_report` builds it (fields, last position) and notes it, without telemetry
   (`Devices.note`, as before) and with it (`Devices.note_report`, which keeps the newest report
   of each kind for the flush), and the telemetry extraction of one GTFRI alone. 1,000 devices take
   turns, as in `bench/ingest.py`, and what is held is dropped every 15,000 reports (what a flush
   does at 15,000 msgs/s).
2. Per device update (the flush greenlet, 1,000 devices a second in the ingest benchmark):
   building the pipeline update and encoding it to BSON, without telemetry and with a GTFRI's
   (read from the held report, as the flush does when the telemetry is due).
3. `--mongod`: mongod's own time for those updates: bulk writes of 1,000 device updates into a
   fresh single-node replica set, without and with telemetry, and mongod's CPU seconds per update.

Reps of the two variants are interleaved so the noise of a shared machine hits both alike; the
figures are the best (lowest) of the reps: on a busy machine noise only ever adds.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bson  # noqa: E402
from pymongo import MongoClient, UpdateOne  # noqa: E402

from gv50_gevent.storage.ingest import _last_position, device_fields  # noqa: E402
from gv50_gevent.protocol import Report, parse  # noqa: E402
from gv50_gevent.storage.devices import TELEMETRY_INTERVAL_S, Devices, _state_update  # noqa: E402
from gv50_gevent.storage.telemetry import report_telemetry  # noqa: E402

DEVICES = 1000
FLUSH_EVERY = 15_000
T0 = datetime(2026, 11, 30, 8, 0, tzinfo=timezone.utc)


def fri(imei: str, at: datetime) -> Report:
    stamp = at.strftime("%Y%m%d%H%M%S")
    report = parse(f"+RESP:GTFRI,090302,{imei},,13337,10,1,1,18.6,272,30.8,117.201342,31.855243,{stamp},"
                   f"0460,0001,5504,29CF,00,347.8,00021:54:10,,,80,220101,23,0,15,{stamp},1854")
    assert isinstance(report, Report)
    return report


def per_report(reports: list[Report], devices: Devices, with_telemetry: bool, number: int) -> float:
    received = T0
    n = len(reports)
    start = time.perf_counter()
    for k in range(number):
        report = reports[k % n]
        fields = device_fields(report)
        position = _last_position(report, received)
        if with_telemetry:
            devices.note_report(report, received, fields, position)
        else:
            devices.note(report.imei, received, fields, position)
        if k % FLUSH_EVERY == FLUSH_EVERY - 1:
            devices._pending = {}
    elapsed = time.perf_counter() - start
    devices._pending = {}
    return elapsed / number * 1e6


def extraction(reports: list[Report], number: int) -> float:
    n = len(reports)
    start = time.perf_counter()
    for k in range(number):
        report_telemetry(reports[k % n])
    return (time.perf_counter() - start) / number * 1e6


def entries(reports: list[Report], with_telemetry: bool) -> dict[str, dict[str, Any]]:
    devices = Devices(MongoClient("mongodb://127.0.0.1:1", connect=False)["bench"], "bench", telemetry_interval_s=0)
    for report in reports:
        if with_telemetry:
            devices.note_report(report, T0, device_fields(report), _last_position(report, T0))
        else:
            devices.note(report.imei, T0, device_fields(report), _last_position(report, T0))
    for entry in devices._pending.values():
        entry["known"] = {}  # a connected tracker's stored `since` values, as the flush has them
    return devices._pending


def flush_build(pending: dict[str, dict[str, Any]]) -> float:
    start = time.perf_counter()
    for imei, entry in pending.items():
        bson.encode({"q": {"_id": imei}, "u": _state_update(entry), "upsert": True})
    return (time.perf_counter() - start) / len(pending) * 1e6


def timed(reps: int, variants: dict[str, Callable[[], float]]) -> dict[str, float]:
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, run in variants.items():
            results[name].append(run())
    return {name: min(values) for name, values in results.items()}


def mongod_cost(reps: int, imeis: list[str]) -> dict[str, float]:
    from bench.common import BenchMongo, cpu_seconds
    out: dict[str, list[float]] = {"mongod_us_per_update_without": [], "mongod_us_per_update_with": [],
                                   "mongod_cpu_us_per_update_without": [], "mongod_cpu_us_per_update_with": []}
    with BenchMongo(cache_gb=0.25) as uri:
        client: MongoClient[dict[str, Any]] = MongoClient(uri, tz_aware=True)
        pid = _mongod_pid(uri)
        db = client["bench_telemetry"]
        for rep in range(reps + 1):
            # Each rep one second later, as a flush a second after the last one writes.
            reports = [fri(imei, T0 + timedelta(seconds=rep)) for imei in imeis]
            for name, with_telemetry in (("without", False), ("with", True)):
                coll = db[f"devices_{name}"]
                ops = [UpdateOne({"_id": imei}, _state_update(entry), upsert=True)
                       for imei, entry in entries(reports, with_telemetry).items()]
                cpu0, t0 = cpu_seconds(pid), time.perf_counter()
                for start in range(0, len(ops), 100):
                    coll.bulk_write(ops[start:start + 100], ordered=False)
                wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
                if rep:  # the first rep inserts; the others update, as the ingest's flushes do
                    out[f"mongod_us_per_update_{name}"].append(wall / len(ops) * 1e6)
                    out[f"mongod_cpu_us_per_update_{name}"].append(cpu / len(ops) * 1e6)
        client.close()
    return {k: min(v) for k, v in out.items()}


def _mongod_pid(uri: str) -> int:
    client: MongoClient[dict[str, Any]] = MongoClient(uri)
    try:
        return int(client.admin.command("serverStatus")["pid"])
    finally:
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--number", type=int, default=60_000)
    parser.add_argument("--mongod", action="store_true", help="also time mongod's side of the flush")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    imeis = [f"{860000000000000 + i:015d}" for i in range(DEVICES)]
    reports = [fri(imei, T0 + timedelta(seconds=k)) for k in range(3) for imei in imeis]
    devices = Devices(MongoClient("mongodb://127.0.0.1:1", connect=False)["bench"], "bench")
    gc.collect()
    gc.freeze()
    figures = timed(args.reps, {
        "report_us_without": lambda: per_report(reports, devices, False, args.number),
        "report_us_with": lambda: per_report(reports, devices, True, args.number),
        "extraction_us": lambda: extraction(reports, args.number),
    })
    plain, full = entries(reports[:DEVICES], False), entries(reports[:DEVICES], True)
    figures |= timed(args.reps, {"flush_us_per_device_without": lambda: flush_build(plain),
                                 "flush_us_per_device_with": lambda: flush_build(full)})
    figures["update_bytes_without"] = len(bson.encode({"u": _state_update(next(iter(plain.values())))}))
    figures["update_bytes_with"] = len(bson.encode({"u": _state_update(next(iter(full.values())))}))
    if args.mongod:
        figures |= mongod_cost(args.reps, imeis)
    if args.json:
        print(json.dumps({k: round(v, 2) for k, v in figures.items()}))
        return
    for name, value in figures.items():
        print(f"{name:<36} {value:10.2f}")
    added = figures["report_us_with"] - figures["report_us_without"]
    flush = figures["flush_us_per_device_with"] - figures["flush_us_per_device_without"]
    print(f"added per GTFRI on the session's greenlet: {added:.2f} µs")
    print(f"added per device update that writes telemetry: gateway {flush:.1f} µs" + (
        f", mongod CPU {figures['mongod_cpu_us_per_update_with'] - figures['mongod_cpu_us_per_update_without']:.0f} µs"
        if args.mongod else ""))
    # bench/ingest.py: 1,000 devices, 15,000 GTFRI/s, flushed every second; a GTFRI's telemetry
    # is written every TELEMETRY_INTERVAL_S (the simulator's device status does not change).
    per_fri = added + flush / (TELEMETRY_INTERVAL_S * 15)
    mongod_added = (figures["mongod_cpu_us_per_update_with"] - figures["mongod_cpu_us_per_update_without"]) \
        / (TELEMETRY_INTERVAL_S * 15) if args.mongod else 0.0
    print(f"in bench/ingest.py's load (15 GTFRI per device and second, telemetry every "
          f"{TELEMETRY_INTERVAL_S:.0f} s): {per_fri:.2f} µs of gateway CPU per GTFRI"
          + (f", {mongod_added:.2f} µs of mongod CPU" if args.mongod else ""))


if __name__ == "__main__":
    main()
