"""µs per `parse()` call for the common message types, each against a bare `line.split(",")` of the
same line timed in the same run; and µs per `parse_hex()` call for HEX frames carrying the same
values (the GTFRI with the fields its ASCII twin has), against `frame.split(b",")`; for those the
"fields" column is the frame's size in bytes.

    .venv/bin/python bench/parse.py [--reps N] [--number N] [--json]

Each rep times a loop of `--number` calls (timeit-style, garbage collector on as in production,
with `gc.freeze()` after setup like the gateway does); the figure is the median over the reps.
Parse and split reps are interleaved so that the noise of this VM hits both alike. Goal: a GTFRI
in 10 µs or less, ASCII or HEX.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gv50_gevent.protocol import InvalidMessage, encode_hex, parse, parse_hex  # noqa: E402
from gv50_gevent.protocol.hex import DEFAULT_MASKS  # noqa: E402

GOAL_US = 10.0

_FRI = ("+RESP:GTFRI,090302,865083030004642,,13337,10,1,1,18.6,272,30.8,117.201342,31.855243,20170712074622,"
        "0460,0001,5504,29CF,00,347.8,00021:54:10,,,,220101,23,0,15,20170712154623,1854")
_FRI_2 = ("+RESP:GTFRI,090302,865083030004642,,13337,10,2,1,18.6,272,30.8,117.201342,31.855243,20170712074622,"
          "0460,0001,5504,29CF,00,1,20.5,275,31.0,117.201000,31.856000,20170712074652,0460,0001,5504,29D0,00,"
          "347.8,00021:54:10,,,,220101,23,0,15,20170712154623,1854")

# Vendor examples (GV50 @Track V4.01), except the unknown type and the invalid line.
CASES: list[tuple[str, str]] = [
    ("GTFRI", _FRI),
    ("GTFRI x2 points", _FRI_2),
    ("GTIGN", "+RESP:GTIGN,090302,865083030002554,,1377,0,0.0,24,63.3,117.201525,31.833040,20170731080420,"
              "0460,0001,5504,582B,00,,0.1,20170731160423,0233"),
    ("GTIGF", "+RESP:GTIGF,090302,865083030002554,,115,0,0.0,24,63.3,117.201525,31.833040,20170731080617,"
              "0460,0001,5504,582B,00,,0.1,20170731160618,0238"),
    ("GTSTT", "+RESP:GTSTT,090302,865083030002554,,41,0,0.0,24,63.3,117.201525,31.833040,20170731080235,"
              "0460,0001,5504,582B,00,20170731160236,022F"),
    ("GTINF", "+RESP:GTINF,090302,865083030002554,,11,89860116830009013972,26,0,,0,,3.98,,1,,,20170731074323,"
              ",,,00,00,+0800,0,20170731154326,020C"),
    ("+ACK:GTHBD", "+ACK:GTHBD,090302,865083030004642,,20170718163021,252F"),
    ("+ACK:GTOUT", "+ACK:GTOUT,090200,135790246811220,,0004,20090214093254,11F0"),
    ("+BUFF:GTFRI", "+BUFF:GTFRI,090302,865083030004642,GV50,13501,31,1,1,40.6,15,50.7,117.246848,31.815552,"
                    "20170718071842,0460,0001,5504,34B5,00,591.8,00032:07:37,,,,220101,20,0,10,20170718151842,"
                    "24CD"),
    ("unknown type", "+RESP:GTXYZ,090302,865083030004642,,1,2,3,20170712154623,1854"),
    # A GTFRI whose latitude is out of range: it goes all the way through validation and raises.
    ("invalid (lat 95)", _FRI.replace("31.855243", "95.000000")),
]


_UTC = timezone.utc
# The vendor GTFRI above as a HEX frame: speed, azimuth, altitude, cell, send time, count,
# length, device type, protocol, firmware, external power, I/O, motion, satellites, total
# mileage, total hour meter and CSQ (mask 04AE17BF, i.e. what the ASCII line carries).
_HEX_FRI_VALUES = {
    "device_type": 9, "protocol": "0302", "firmware": "020E", "imei": "865083030004642", "external_power_mv": 13337,
    "inputs": 1, "outputs": 1, "motion": "22", "satellites": 15, "report_id_type": 0x10, "number": 1,
    "gps_accuracy": 1, "speed_kmh": 18.6, "azimuth": 272, "altitude_m": 31, "longitude": 117.201342,
    "latitude": 31.855243, "fix_time": datetime(2017, 7, 12, 7, 46, 22, tzinfo=_UTC), "mcc": "0460", "mnc": "0001",
    "lac": "5504", "cell_id": "29CF", "mileage_km": 347.8, "hour_meter_s": 78850, "csq_rssi": 23, "csq_ber": 0,
    "sent_at": datetime(2017, 7, 12, 15, 46, 23, tzinfo=_UTC), "count": "1854",
}
_HEX_FRI_MASK = sum(1 << b for b in (0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 12, 17, 18, 19, 21, 23, 26))
_HEX_HBD = encode_hex("+HBD", None, {"device_type": 9, "protocol": "0302", "firmware": "020E",
                                      "imei": "865083030004642", "count": "252F",
                                      "sent_at": datetime(2017, 7, 18, 16, 30, 21, tzinfo=_UTC)}, DEFAULT_MASKS["HBD"])
HEX_CASES: list[tuple[str, bytes]] = [
    ("HEX GTFRI", encode_hex("+RSP", "GTFRI", _HEX_FRI_VALUES, _HEX_FRI_MASK)),
    ("HEX +BSP GTFRI", encode_hex("+BSP", "GTFRI", _HEX_FRI_VALUES, _HEX_FRI_MASK)),
    ("HEX +HBD", _HEX_HBD),
]


def _parse_or_reject(line: str | bytes) -> Any:
    try:
        return parse_hex(line) if isinstance(line, bytes) else parse(line)
    except InvalidMessage as exc:
        return exc


def _loop(fn: Callable[[Any], Any], line: str | bytes, number: int) -> float:
    """Seconds per call over one loop of `number` calls."""
    timer = time.perf_counter
    rng = range(number)
    t0 = timer()
    for _ in rng:
        fn(line)
    return (timer() - t0) / number


def _split(line: str | bytes) -> list[Any]:
    return line.split(b"," if isinstance(line, bytes) else ",")  # type: ignore[arg-type]


def _cpu_model() -> str:
    try:
        for row in Path("/proc/cpuinfo").read_text().splitlines():
            if row.startswith("model name"):
                return row.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    import pydantic
    import pydantic_core

    try:
        import os
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = None
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "pydantic": pydantic.VERSION,
        "pydantic_core": pydantic_core.__version__,
        "cpu": _cpu_model(),
        "cores": cores,
        "platform": platform.platform(),
    }


def run(reps: int, number: int) -> list[dict[str, Any]]:
    # Setup: check every case does what its name says, and warm up.
    cases: list[tuple[str, str | bytes]] = [*CASES, *HEX_CASES]
    for name, line in cases:
        result = _parse_or_reject(line)
        if name.startswith("invalid") != isinstance(result, InvalidMessage):
            raise SystemExit(f"{name}: unexpected result {result!r}")
        _loop(_parse_or_reject, line, max(number // 10, 1))
    gc.collect()
    gc.freeze()
    rows = []
    for name, line in cases:
        parse_s: list[float] = []
        split_s: list[float] = []
        for _ in range(reps):
            split_s.append(_loop(_split, line, number))
            parse_s.append(_loop(_parse_or_reject, line, number))
        p = statistics.median(parse_s) * 1e6
        s = statistics.median(split_s) * 1e6
        rows.append({
            "case": name, "fields": len(line) if isinstance(line, bytes) else line.count(",") + 1,
            "parse_us": round(p, 3), "split_us": round(s, 3),
            "ratio": round(p / s, 1), "parse_min_us": round(min(parse_s) * 1e6, 3),
            "parse_max_us": round(max(parse_s) * 1e6, 3),
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7, help="timed loops per case; the median is reported")
    ap.add_argument("--number", type=int, default=20000, help="calls per timed loop")
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    args = ap.parse_args(argv)
    info = machine()
    rows = run(args.reps, args.number)
    fri = next(r for r in rows if r["case"] == "GTFRI")["parse_us"]
    hex_fri = next(r for r in rows if r["case"] == "HEX GTFRI")["parse_us"]
    if args.json:
        print(json.dumps({"machine": info, "reps": args.reps, "number": args.number, "goal_gtfri_us": GOAL_US,
                          "gtfri_within_goal": fri <= GOAL_US, "hex_gtfri_within_goal": hex_fri <= GOAL_US,
                          "results": rows}, indent=2))
        return 0
    print(f"# {info['date']}  Python {info['python']} ({info['implementation']})  pydantic {info['pydantic']}"
          f" / core {info['pydantic_core']}")
    print(f"# CPU: {info['cpu']} x{info['cores']}  {info['platform']}")
    print(f"# median of {args.reps} reps x {args.number} calls; gc on, frozen after setup\n")
    print(f"{'case':<18} {'fields':>6} {'parse µs':>9} {'(min-max)':>15} {'split µs':>9} {'ratio':>6}")
    for r in rows:
        spread = f"({r['parse_min_us']:.2f}-{r['parse_max_us']:.2f})"
        print(f"{r['case']:<18} {r['fields']:>6} {r['parse_us']:>9.2f} {spread:>15} {r['split_us']:>9.2f}"
              f" {r['ratio']:>5.1f}x")
    print()
    for label, value in (("GTFRI", fri), ("HEX GTFRI", hex_fri)):
        verdict = "within" if value <= GOAL_US else "OVER"
        print(f"{label} {value:.2f} µs: {verdict} the {GOAL_US:.0f} µs goal")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
