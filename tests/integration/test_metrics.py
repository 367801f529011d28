"""Prometheus `/metrics` (METRICS_PORT): scraped from a real gateway with a few trackers, parsed with
prometheus_client's own parser, and checked against what was sent and against `gateway_state.stats`."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import gevent
from gevent import socket as gsocket
from prometheus_client.parser import text_string_to_metric_families

from gv50_gevent.gateway.metrics import MetricsServer
from tests.support import free_port, wait_for

FRI = ("+RESP:GTFRI,090302,{imei},,13337,10,1,1,18.6,272,30.8,117.201342,31.855243,20170712074622,"
       "0460,0001,5504,29CF,00,347.8,00021:54:10,,,,220101,23,0,15,20170712154623,{count}")
HBD = "+ACK:GTHBD,090302,{imei},,20170718163021,{count}"
IMEIS = ("863000000000101", "863000000000102", "863000000000103")

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int, path: str = "/metrics") -> tuple[str, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
        return answer.headers["Content-Type"], answer.read().decode()


def samples(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_agree_with_the_statistics_and_the_traffic(start_gateway) -> None:
    port = free_port()
    gw = start_gateway(SACK_MODE="all", GATEWAY_ALIVE_INTERVAL_S="0.3", GATEWAY_ID="gw-metrics",
                       METRICS_PORT=str(port))
    trackers = [gw.connect() for _ in IMEIS]
    try:
        for n, (imei, device) in enumerate(zip(IMEIS, trackers)):
            for count in (f"{n}A01", f"{n}A02"):
                device.send_line(FRI.format(imei=imei, count=count))
                device.read_until(f"+SACK:{count}$".encode())
            device.send_line(FRI.format(imei=imei, count=f"{n}A02"))  # sent again: a duplicate
            device.read_until(f"+SACK:{n}A02$+SACK:{n}A02$".encode())
            device.send_line(HBD.format(imei=imei, count=f"{n}B01"))
            device.read_until(f"+SACK:GTHBD,090302,{n}B01$".encode())

        def agreed() -> tuple[Samples, dict[str, Any]] | None:
            # Quiet now: the figures in gateway_state and a scrape must come to the same numbers.
            doc = gw.db.gateway_state.find_one({"_id": "gateway:gw-metrics"}) or {}
            stats = doc.get("stats") or {}
            got = samples(scrape(port)[1])
            same = (stats.get("stored") == sum(v for (name, _), v in got.items()
                                               if name == "gv50_documents_stored_total")
                    and stats.get("frames_total", {}).get("out/sack") == got.get(
                        ("gv50_frames_total", (("direction", "out"), ("kind", "sack"), ("status", "ok")))))
            return (got, stats) if same and stats.get("frames_total", {}).get("out/sack") == 12 else None

        got, stats = wait_for(agreed, timeout=20, what="a scrape that agrees with gateway_state.stats")
    finally:
        for device in trackers:
            device.close()

    def value(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    # What was sent: three trackers, nine reports (three of them resent), three heartbeats.
    assert value("gv50_trackers_connected", transport="tcp") == 3 == stats["connections"]["tcp"]
    assert value("gv50_frames_total", direction="in", kind="report", status="ok") == 9
    assert value("gv50_frames_total", direction="in", kind="heartbeat", status="ok") == 3
    assert value("gv50_frames_total", direction="out", kind="sack", status="ok") == 12
    assert value("gv50_documents_stored_total", collection="positions") == 6 == stats["stored_in"]["positions"]
    assert value("gv50_duplicates_total") == 3 == stats["duplicates"]  # the three resent positions
    assert value("gv50_invalid_frames_total") == 0 == stats["invalid"]
    assert value("gv50_write_queue_documents") == stats["write_queue"]
    for key, n in stats["frames_total"].items():
        head, _, tail = key.partition("/")
        labels = {"direction": "out", "kind": tail, "status": "ok"} if head == "out" else \
            {"direction": "in", "kind": head, "status": tail}
        assert value("gv50_frames_total", **labels) == n, key
    # The histogram counts every report's SACK (not the heartbeat replies), as the percentiles do.
    assert value("gv50_sack_latency_seconds_count") == 9 == stats["sack_latency_ms"]["samples"]
    assert value("gv50_sack_latency_seconds_bucket", le="+Inf") == 9
    assert 0 < value("gv50_sack_latency_seconds_sum") < 9 * 5
    assert value("gv50_mongodb_write_seconds_count") >= stats["mongo_write_ms"]["samples"] > 0
    assert value("gv50_backpressure_seconds_total") == stats["backpressure_total_s"] == 0
    assert value("process_open_fds") > 3 and value("process_resident_memory_bytes") > 10_000_000

    content_type, _ = scrape(port)
    assert content_type.startswith("text/plain; version=")
    try:
        scrape(port, "/")
        raise AssertionError("/ answered")
    except urllib.error.HTTPError as exc:
        assert exc.code == 404


def gscrape(port: int, timeout: float) -> str:
    """A scrape over a gevent socket: the server under test runs in this process's gevent loop."""
    with gevent.Timeout(timeout), gsocket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return body.decode()


FLEET = {"in_sync": 7, "applying": 2, "waiting_offline": 1, "drifted": 0, "failed": 3}


def test_idle_connections_are_bounded_and_closed() -> None:
    stats: dict[str, Any] = {"write_queue": 0}
    server = MetricsServer("127.0.0.1", 0, lambda: stats, {}, connections=2, connection_s=1.0)
    port = server.listen()[1]
    idle = [gsocket.create_connection(("127.0.0.1", port)) for _ in range(6)]
    idle[0].sendall(b"GET /metr")  # and one that never finishes its request
    try:
        # More idle connections than the server takes at once came first; a scrape still gets through.
        assert not any(name == "gv50_rollout_trackers" for name, _ in samples(gscrape(port, timeout=20)))
        assert server.pool.size == 2
        for conn in idle:  # every idle one is closed by the server (recv gives b"", not a timeout)
            with gevent.Timeout(20):
                assert conn.recv(1) == b""
        stats["fleet"] = FLEET  # the rollout figures, once the stats carry them
        got = samples(gscrape(port, timeout=20))
    finally:
        for conn in idle:
            conn.close()
        server.stop()
    assert {dict(labels)["state"]: v for (name, labels), v in got.items() if name == "gv50_rollout_trackers"} == FLEET
