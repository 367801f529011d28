"""Trackers that hold no connection: report mode 1/2 (a short TCP connection per report), mode 4/6
(UDP datagrams) and mode 8 (HTTP GET). Each sends GTFRI reports at a paced rate for the whole
fleet and counts what the gateway answered.

    python -m gv50_gevent.simulator.connectionless --mode short --devices 10000 --rate 1000 --duration 30

Sockets come from `gevent.socket`; run it as a module (it monkey-patches first) or from a
monkey-patched process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent import socket as gsocket
from gevent.pool import Pool

from .hexmode import hex_frame
from .tracker import PROTOCOL_VERSION, device_time

MODES = ("short", "udp", "http")


def fri_line(imei: str, count: int, now: float) -> str:
    """A GTFRI as a GV50 writes it, position moving a little with the count."""
    lon = 117.201342 + (count % 1000) * 1e-5
    stamp = device_time(now)
    return (f"+RESP:GTFRI,{PROTOCOL_VERSION},{imei},,13337,10,1,1,18.6,272,30.8,{lon:.6f},31.855243,{stamp},"
            f"0460,0001,5504,29CF,00,347.8,00021:54:10,,,,220101,23,0,15,{stamp},{count & 0xFFFF:04X}$")


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0  # SACKed (short, udp with --sack) or 200 (http)
    failed: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, what: str) -> None:
        self.failed += 1
        self.errors[what] = self.errors.get(what, 0) + 1

    def report(self, window_s: float) -> dict[str, Any]:
        lat = sorted(self.latencies)

        def at(q: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 2) if lat else None

        return {"sent": self.sent, "answered": self.answered, "failed": self.failed, "window_s": round(window_s, 2),
                "rate": round(self.sent / window_s, 1) if window_s else 0.0, "errors": self.errors,
                "latency_ms": {"p50": at(0.5), "p99": at(0.99), "max": at(1.0), "n": len(lat)}}


def short_connection(host: str, port: int, line: bytes, sack: bool, tally: Tally, timeout: float) -> None:
    """Mode 1: connect, send one report, half-close, wait for the SACK (if on) and the close."""
    started = time.monotonic()
    try:
        sock = gsocket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        tally.error(f"connect: {exc.__class__.__name__}")
        return
    try:
        sock.sendall(line)
        sock.shutdown(gsocket.SHUT_WR)
        got = b""
        while True:
            chunk = sock.recv(256)
            if not chunk:
                break
            got += chunk
        if sack and b"+SACK:" not in got:
            tally.error("no SACK before the close")
            return
        tally.answered += 1
        tally.latencies.append(time.monotonic() - started)
    except OSError as exc:
        tally.error(f"io: {exc.__class__.__name__}")
    finally:
        sock.close()


def http_get(host: str, port: int, line: str, tally: Tally, timeout: float) -> None:
    started = time.monotonic()
    request = (f"GET /report/{line[1:]} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: Queclink_GV50\r\n"
               f"Connection: close\r\n\r\n").encode("latin-1")
    try:
        with gsocket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(request)
            got = b""
            while chunk := sock.recv(4096):
                got += chunk
    except OSError as exc:
        tally.error(f"io: {exc.__class__.__name__}")
        return
    if got.startswith(b"HTTP/1.1 200"):
        tally.answered += 1
        tally.latencies.append(time.monotonic() - started)
    else:
        tally.error(got.split(b"\r\n", 1)[0].decode("latin-1", "replace")[:40])


class UdpFleet:
    """All UDP trackers of the run, each with its own local port (its source address)."""

    def __init__(self, host: str, port: int, devices: int) -> None:
        self.target = (host, port)
        self.socks = [gsocket.socket(gsocket.AF_INET, gsocket.SOCK_DGRAM) for _ in range(devices)]
        for sock in self.socks:
            sock.bind(("127.0.0.1" if host.startswith("127.") else "0.0.0.0", 0))
        self.sent_at: dict[tuple[int, str], float] = {}

    def send(self, index: int, line: str, tally: Tally, data: bytes) -> None:
        count = line[-5:-1]
        self.sent_at[(index, count)] = time.monotonic()
        self.socks[index].sendto(data, self.target)

    def listen(self, index: int, tally: Tally) -> None:
        sock = self.socks[index]
        while True:
            data = sock.recv(2048)
            for frame in data.split(b"$"):
                if frame.startswith(b"+SACK:") and not frame.startswith(b"+SACK:GTHBD"):
                    started = self.sent_at.pop((index, frame[6:].decode()), None)
                    tally.answered += 1
                    if started is not None:
                        tally.latencies.append(time.monotonic() - started)


def run(mode: str, host: str, port: int, devices: int, rate: float, duration: float, imei_base: int,
        sack: bool, drain: float = 5.0, concurrency: int = 2000, timeout: float = 30.0,
        hex_mode: bool = False) -> dict[str, Any]:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}")
    if hex_mode and mode == "http":
        raise ValueError("HTTP GET mode is ASCII only (V4.01 report mode 8)")
    tally = Tally()
    pool = Pool(concurrency)
    udp = UdpFleet(host, port, devices) if mode == "udp" else None
    listeners = [gevent.spawn(udp.listen, i, tally) for i in range(devices)] if udp is not None else []
    counts = [0] * devices
    interval = 1.0 / rate
    started = time.monotonic()
    deadline = started + duration
    n = 0
    while True:
        due = started + n * interval
        now = time.monotonic()
        if due >= deadline:
            break
        if due > now:
            gevent.sleep(due - now)
        index = n % devices
        counts[index] += 1
        line = fri_line(str(imei_base + index), counts[index], time.time())
        tally.sent += 1
        data = (hex_frame(line) or line.encode("ascii")) if hex_mode else line.encode("ascii")
        if mode == "short":
            pool.spawn(short_connection, host, port, data, sack, tally, timeout)
        elif mode == "http":
            pool.spawn(http_get, host, port, line, tally, timeout)
        else:
            assert udp is not None
            udp.send(index, line, tally, data)
        n += 1
    window = time.monotonic() - started
    pool.join(timeout=timeout)
    if listeners:
        gevent.sleep(drain)
        gevent.killall(listeners)
    report = tally.report(window)
    report.update(mode=mode, devices=devices, offered_rate=rate)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m gv50_gevent.simulator.connectionless", description=__doc__)
    p.add_argument("--mode", choices=MODES, default="short", help="short TCP connections, UDP or HTTP GET")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5004, help="the gateway's port (HTTP_PORT for --mode http)")
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--rate", type=float, default=100.0, help="reports per second, whole fleet")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--imei-base", type=int, default=862000000000000)
    p.add_argument("--sack", action="store_true", help="expect +SACK (the gateway runs with SACK_MODE=all)")
    p.add_argument("--concurrency", type=int, default=2000, help="connections or requests open at once")
    p.add_argument("--hex", action="store_true", help="send HEX frames (short and udp; HTTP GET is ASCII only)")
    args = p.parse_args(argv)
    report = run(args.mode, args.host, args.port, args.devices, args.rate, args.duration, args.imei_base, args.sack,
                 concurrency=args.concurrency, hex_mode=args.hex)
    print(json.dumps(report), flush=True)
    return 0 if report["answered"] else 1


if __name__ == "__main__":
    from gevent import monkey

    monkey.patch_all()
    sys.exit(main())
