"""CPU per GTFRI on the gateway's own path, without sockets or MongoDB: the connection core
(framing and parsing), `Ingest.record` (the documents and the device state), the SACK handed to
`Ingest.sent`, what `insert_many` does for each document before encoding it (an `_id` for a
document without one), and the BSON encoding of every document that would be written. Also the
documents per GTFRI. gevent patches the process first, as in the gateway (pymongo's `ObjectId()`
then takes a gevent lock). Process CPU time, so that other work on the machine counts less than in a
wall-clock figure; alternate the sides of an A/B and take the medians.

    .venv/bin/python bench/store_cost.py [--sack] [--messages N] [--reps N] [--code DIR]

`--code DIR`: time another checkout's code (e.g. the baseline of an A/B) with this script.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402


class CollectingWriter:
    """Stands in for the BatchWriter: keeps what it is handed."""

    def __init__(self) -> None:
        self.docs: list[tuple[str, dict[str, Any]]] = []

    def acquire(self, n: int) -> None:
        pass

    def put(self, collection: str, doc: dict[str, Any]) -> CollectingWriter:
        self.docs.append((collection, doc))
        return self


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sack", action="store_true", help="SACK_MODE=all: every report is answered")
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--code", default=str(Path(__file__).resolve().parents[1]), help="the checkout to time")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, args.code)
    import bson
    from pymongo import MongoClient

    from gv50_gevent.protocol.connection import NEED_DATA, Admit, Connection
    from gv50_gevent.simulator.tracker import SimTracker
    from gv50_gevent.storage.devices import Devices
    from gv50_gevent.storage.ingest import Ingest

    db = MongoClient("mongodb://127.0.0.1:1", connect=False)["bench"]  # never reached
    trackers = [SimTracker(str(860000000500000 + i)) for i in range(args.devices)]
    t0 = time.time()
    frames = [(k % args.devices, trackers[k % args.devices].fri(
        31.8 + (k % 97) * 1e-3, 117.2 + (k % 89) * 1e-3, 42.0, now=t0 + k // args.devices).encode())
        for k in range(args.messages)]
    figures: dict[str, list[float]] = {"core": [], "record": [], "insert": [], "bson": [], "total": []}
    docs_per_message = 0.0
    for _ in range(args.reps):
        cores = [Connection(2048, sack_enabled=args.sack) for _ in trackers]
        writer = CollectingWriter()
        ingest = Ingest(writer, Devices(db, "bench"), "bench")  # type: ignore[arg-type]
        gc.collect()
        gc.freeze()
        gc.set_threshold(100_000, 50, 100)  # as the gateway sets it once it is ready (app.GC_GEN0_THRESHOLD)
        core_s = record_s = 0.0
        clock = time.process_time
        for device, data in frames:
            a = clock()
            core = cores[device]
            core.receive_data(data)
            events = []
            while (event := core.next_event()) is not NEED_DATA:
                if isinstance(event, Admit):
                    event = core.admitted()
                events.append(event)
            b = clock()
            at = datetime.now(timezone.utc)
            ingest.record(events, "127.0.0.1:40000", at)
            sacks = [e.sack for e in events if e.sack is not None]
            if sacks:
                ingest.sent(sacks, "sack", trackers[device].imei, "127.0.0.1:40000", at)
            record_s += clock() - b
            core_s += b - a
        a = clock()
        for _, doc in writer.docs:  # what insert_many does to each document before it encodes them
            if "_id" not in doc:
                doc["_id"] = bson.ObjectId()
        insert_s = clock() - a
        a = clock()
        for _, doc in writer.docs:
            bson.encode(doc)
        bson_s = clock() - a
        gc.unfreeze()
        n = len(frames)
        for name, seconds in (("core", core_s), ("record", record_s), ("insert", insert_s), ("bson", bson_s),
                              ("total", core_s + record_s + insert_s + bson_s)):
            figures[name].append(seconds / n * 1e6)
        docs_per_message = len(writer.docs) / n
    result = {name: round(statistics.median(values), 1) for name, values in figures.items()}
    result["docs_per_message"] = round(docs_per_message, 2)
    if args.json:
        print(json.dumps({"code": args.code, "sack": args.sack, **result}))
    else:
        print(f"{args.code} (SACK {'on' if args.sack else 'off'}), µs of CPU per GTFRI, median of {args.reps}: "
              f"core {result['core']}, record {result['record']}, insert {result['insert']}, BSON {result['bson']}, "
              f"total {result['total']}; "
              f"documents per GTFRI {result['docs_per_message']}")


if __name__ == "__main__":
    main()
