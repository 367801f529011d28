"""Prometheus `/metrics`, off unless METRICS_PORT is set, served from the gateway's own gevent loop.

No second set of counters: a custom collector reads, at scrape time, the same figures that
`gateway_state.stats` holds (`Application.stats()`), and the latency histograms from the same
objects that give its percentiles. `FIGURES` maps each figure to a metric; a new figure (the read
budget, say) is one more line there. A figure missing from the stats is left out of the scrape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import gevent
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from ..storage.stats import MinuteLatency

log = logging.getLogger(__name__)

Figures = Callable[[], dict[str, Any]]
StartResponse = Callable[[str, list[tuple[str, str]]], Any]


@dataclass(frozen=True)
class Figure:
    """One key of `gateway_state.stats` as one metric. `label`: the figure is a dict whose keys become
    this label's values (`split` turns a key such as `report/ok` into several labels)."""
    key: str
    name: str  # without the `_total` a counter gets
    kind: Literal["counter", "gauge"]
    help: str
    label: str | None = None
    split: tuple[str, ...] = ()
    scale: float = 1.0
    only: tuple[str, ...] = ()  # of a dict figure, only these keys (the others are not of this metric)


FIGURES: tuple[Figure, ...] = (
    Figure("connections", "gv50_trackers_connected", "gauge", "Trackers connected now, by transport "
           "(tcp: connections; udp and http: trackers heard within UDP_OFFLINE_AFTER_S).", label="transport",
           only=("tcp", "udp", "http")),
    Figure("frames_total", "gv50_frames", "counter", "Frames since start: in by kind and status; out by kind "
           "(direction out, status ok).", split=("kind", "status")),
    Figure("stored_in", "gv50_documents_stored", "counter", "Documents stored since start, by collection "
           "(collection=positions: positions).", label="collection"),
    Figure("duplicates", "gv50_duplicates", "counter", "Documents not stored again because they already were "
           "(a resent frame, +BUFF after its +RESP)."),
    Figure("invalid", "gv50_invalid_frames", "counter", "Frames that did not parse (archived with the reason)."),
    Figure("warnings", "gv50_warnings", "counter", "Messages with a value outside its documented range (kept)."),
    Figure("hex_crc_mismatches", "gv50_hex_crc_mismatches", "counter", "HEX frames whose CRC did not match (kept)."),
    Figure("refused", "gv50_documents_refused", "counter", "Documents MongoDB refused as such (logged)."),
    Figure("failed_flushes", "gv50_write_retries", "counter", "Writes to MongoDB that failed and were retried."),
    Figure("write_queue", "gv50_write_queue_documents", "gauge", "Documents handed to the writer, not yet stored."),
    Figure("backpressure_total_s", "gv50_backpressure_seconds", "counter", "Seconds sessions waited for room in "
           "the write buffer, added up."),
    Figure("commands", "gv50_commands_open", "gauge", "Open commands in this gateway's registry, by status "
           "(new: inserted and not yet taken up).", label="status", only=("new", "pending", "sent")),
    Figure("command_transitions_total", "gv50_command_transitions", "counter", "Command status changes this "
           "gateway made since start, by the new status (sent, acknowledged, failed, expired, ...).", label="status"),
    # Each gateway counts the trackers it holds: summed over the gateways, the fleet. Left out when
    # the stats have no rollout counts.
    Figure("fleet", "gv50_rollout_trackers", "gauge", "Trackers of this gateway that a configuration profile "
           "applies to, by rollout state (in_sync, applying, waiting_offline, drifted, failed).", label="state",
           only=("in_sync", "applying", "waiting_offline", "drifted", "failed")),
)

# (figure object, metric name, help); from the same objects as `sack_latency_ms` / `mongo_write_ms`.
Histograms = Mapping[str, tuple[MinuteLatency, str]]


class GatewayCollector(Collector):
    def __init__(self, figures: Figures, histograms: Histograms) -> None:
        self.figures = figures
        self.histograms = histograms

    def collect(self) -> Iterator[Metric]:
        stats = self.figures()
        for figure in FIGURES:
            if stats.get(figure.key) is not None:  # a figure this gateway does not have is left out
                yield family(figure, stats[figure.key])
        for name, (latency, help_) in self.histograms.items():
            buckets, _count, total = latency.histogram()
            yield HistogramMetricFamily(name, help_, buckets=[(_le(b), n) for b, n in buckets], sum_value=total)


def family(figure: Figure, value: Any) -> Metric:
    metric_type = CounterMetricFamily if figure.kind == "counter" else GaugeMetricFamily
    if not isinstance(value, dict):
        return metric_type(figure.name, figure.help, value=float(value) * figure.scale)
    if figure.split:
        labels = ["direction", *figure.split]
        metric = metric_type(figure.name, figure.help, labels=labels)
        for key, n in sorted(value.items()):
            head, _, tail = key.partition("/")
            # "out/<kind>": a frame sent; "<kind>/<status>": a frame received.
            values = ["out", tail, "ok"] if head == "out" else ["in", head, tail]
            metric.add_metric(values, float(n) * figure.scale)
        return metric
    metric = metric_type(figure.name, figure.help, labels=[figure.label or "key"])
    keys = figure.only or tuple(sorted(value))
    for key in keys:
        metric.add_metric([key], float(value.get(key, 0)) * figure.scale)
    return metric


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


# A scraper needs one connection for well under a second. More connections than this wait in the
# listen backlog (no file descriptor of ours); one that stays longer (idle, or sending slowly) is closed.
METRICS_CONNECTIONS = 4
METRICS_CONNECTION_S = 5.0


class _BoundedServer(WSGIServer):
    """Each connection has `connection_s` in all: an idle client cannot hold a file descriptor for ever."""

    connection_s = METRICS_CONNECTION_S

    def handle(self, sock: Any, address: Any) -> None:
        # Timeout is not an Exception, so pywsgi does not catch it; the server closes the socket after.
        with gevent.Timeout(self.connection_s, False):
            super().handle(sock, address)


class MetricsServer:
    """`/metrics` on METRICS_HOST:METRICS_PORT; 404 for any other path, 405 for anything but GET.
    At most `connections` at once, each for at most `connection_s` (keep-alive included)."""

    def __init__(self, host: str, port: int, figures: Figures, histograms: Histograms, *,
                 connections: int = METRICS_CONNECTIONS, connection_s: float = METRICS_CONNECTION_S) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(GatewayCollector(figures, histograms))
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, process_open_fds, ...
        self.host, self.port = host, port
        self.pool = Pool(connections)
        self.connection_s = connection_s
        self._server: _BoundedServer | None = None

    def listen(self) -> tuple[str, int]:
        self._server = _BoundedServer((self.host, self.port), self._app, spawn=self.pool, log=None, error_log=log)
        self._server.connection_s = self.connection_s
        self._server.start()
        address = self._server.address[:2]
        log.info("serving Prometheus metrics on http://%s:%d/metrics", address[0], address[1])
        return address

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(timeout=1)

    def _app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            return _answer(start_response, "404 Not Found", "text/plain; charset=utf-8", b"only /metrics is here\n")
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            return _answer(start_response, "405 Method Not Allowed", "text/plain; charset=utf-8", b"GET only\n")
        try:
            body = generate_latest(self.registry)
        except Exception:  # a bug in one figure: say so, and keep serving
            log.exception("could not gather the metrics")
            return _answer(start_response, "500 Internal Server Error", "text/plain; charset=utf-8",
                           b"could not gather the metrics; see the gateway's log\n")
        return _answer(start_response, "200 OK", CONTENT_TYPE_LATEST, body)


def _answer(start_response: StartResponse, status: str, content_type: str, body: bytes) -> list[bytes]:
    start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]
