"""Wiring and lifecycle: settings -> MongoDB (embedded or given) -> storage -> gateway -> commands.

`main()` is what `gv50-gateway` and `run_server.py` run after gevent's monkey-patching
(gv50_gevent/server_main.py). SIGTERM (supervisord's stop)
and SIGINT run one ordered shutdown: stop accepting, let sessions finish within the grace period,
flush pending writes, mark this gateway's devices offline, stop the embedded mongod, exit 0.
"""

from __future__ import annotations

import argparse
import errno
import gc
import logging
import resource
import signal
import sys
from typing import Any

import gevent
from gevent.event import Event
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from .commands.service import CommandService
from .config import Settings, SettingsError, load_settings
from .fleet.reconciler import Reconciler
from .gateway.liveness import Liveness
from .gateway.metrics import MetricsServer
from .gateway.http import HttpServer
from .gateway.server import Gateway
from .gateway.trackers import Trackers
from .gateway.udp import UdpServer
from .logs import setup_logging
from .storage.database import connect, ensure_indexes
from .storage.devices import Devices, Vehicles
from .storage.diagnose import MongoProblem, explain, require_replica_set
from .storage.ingest import Ingest
from .storage.mongod import EmbeddedMongod, MongodError
from .storage.writer import COLLECTIONS_PER_BATCH, BatchWriter

log = logging.getLogger("gv50_gevent")

GC_GEN0_THRESHOLD = 100_000
COMMAND_POOL_WARM = 16  # connections the command room keeps open (claims and ACKs in flight at once)
WATCH_POOL_SIZE = 2     # the change stream's wait, and the write of its resume token
CLAIM_POOL_SIZE = 32    # claims, ACK writes and the dispatcher's reads in flight at once, all kept open


class Application:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.mongod: EmbeddedMongod | None = None
        self.clients: list[MongoClient[dict[str, Any]]] = []
        self.gateway: Gateway | None = None
        self.writer: BatchWriter | None = None
        self.ingest: Ingest | None = None
        self.trackers: Trackers | None = None
        self.udp: UdpServer | None = None
        self.http: HttpServer | None = None
        self.devices: Devices | None = None
        self.commands: Any = None
        self.fleet: Reconciler | None = None
        self.liveness: Liveness | None = None
        self.metrics: MetricsServer | None = None
        self._stopped = Event()

    def start(self) -> tuple[str, int]:
        s = self.settings
        uri = s.MONGODB_URI
        if not uri:
            self.mongod = EmbeddedMongod(s.MONGOD_DATA_DIR, s.MONGOD_PORT, s.MONGOD_BIN, s.MONGOD_CACHE_GB)
            uri = self.mongod.start()
            log.info("MONGODB_URI is unset: using the embedded MongoDB at %s", uri)
        # One client (and connection pool) per path: when 10,000 trackers reconnect at once, their
        # admission and `devices` writes queue for connections, and the batch writer (which every
        # SACK waits for) and the command path must not queue behind them. Measured: during a
        # 1,000-tracker connect burst, inserts sharing the pool took up to 600 ms.
        wc = s.WRITE_CONCERN
        if wc != "majority":
            log.warning("WRITE_CONCERN=%s: a SACK no longer means the data survives a replica-set failover; "
                        "reports SACKed in the seconds before a failover can be lost", wc)
        client, db = connect(uri, s.MONGODB_DB, s.MONGODB_POOL_SIZE, write_concern=wc)
        self.clients.append(client)
        try:
            require_replica_set(client, uri)
        except PyMongoError as exc:
            raise MongoProblem(explain(uri, exc, embedded=self.mongod is not None)) from None
        ensure_indexes(db, s.RAW_RETENTION_DAYS)
        write_client, write_db = connect(uri, s.MONGODB_DB, s.WRITERS * COLLECTIONS_PER_BATCH, "gv50_gevent-writer",
                                          write_concern=wc)
        self.clients.append(write_client)
        self.writer = BatchWriter(write_db, batch_size=s.WRITE_BATCH, interval_s=s.WRITE_INTERVAL_MS / 1000,
                                  buffer_limit=s.WRITE_BUFFER, writers=s.WRITERS, gateway_id=s.GATEWAY_ID)
        self.writer.start()
        self.devices = Devices(db, s.GATEWAY_ID, s.LAST_SEEN_INTERVAL_S, s.TELEMETRY_INTERVAL_S)
        self.devices.start()
        self.ingest = Ingest(self.writer, self.devices, s.GATEWAY_ID)
        self.trackers = Trackers(s, self.ingest, self.devices, Vehicles(db, s.AUTO_REGISTER))
        self.gateway = Gateway(s, self.ingest, self.trackers)
        self.liveness = Liveness(db, s.GATEWAY_ID, s.GATEWAY_ALIVE_INTERVAL_S, s.GATEWAY_DEAD_AFTER_S, self.stats)
        self.liveness.start()
        # The command room's writes (claims, ACKs) on connections opened beforehand: opening one
        # takes several round trips, each waiting its turn in a busy gateway, and a burst of claims
        # that had to open its own waited seconds (measured under ingest). The change stream has a
        # client of its own, so that it never waits for a connection behind those claims.
        command_client, command_db = connect(uri, s.MONGODB_DB, s.MONGODB_POOL_SIZE, "gv50_gevent-commands",
                                              write_concern=wc, min_pool_size=COMMAND_POOL_WARM)
        self.clients.append(command_client)
        watch_client, watch_db = connect(uri, s.MONGODB_DB, WATCH_POOL_SIZE, "gv50_gevent-commands-watch",
                                         write_concern=wc, min_pool_size=WATCH_POOL_SIZE)
        self.clients.append(watch_client)
        # The claims, the one durable write between an operator's insert and the bytes on the
        # wire, on a client of their own as well, with what a device's next command waits for:
        # the dispatcher's reads and the ACK writes. Measured under 5,000 reports a second: the
        # command room's writes and the fleet's work kept all 50 connections of the command
        # client in use, and a claim waited 0.4-3 s (p50) for one (docs/benchmarks.md, 2026-12-08).
        claim_client, claim_db = connect(uri, s.MONGODB_DB, CLAIM_POOL_SIZE, "gv50_gevent-commands-claim",
                                         write_concern=wc, min_pool_size=CLAIM_POOL_SIZE)
        self.clients.append(claim_client)
        self._start_commands(command_db, watch_db, claim_db)
        self.trackers.start()
        try:
            address = self.gateway.listen()
        except OSError as exc:
            raise PortProblem(port_problem(exc, s.GATEWAY_HOST, s.GATEWAY_PORT)) from None
        if s.UDP_ENABLED:
            self.udp = UdpServer(s, self.ingest, self.trackers)
            try:
                self.udp.listen()
            except OSError as exc:
                raise PortProblem(port_problem(exc, s.GATEWAY_HOST, s.GATEWAY_PORT, "GATEWAY_PORT (UDP)")) from None
        if s.HTTP_PORT is not None:
            self.http = HttpServer(s, self.ingest, self.trackers)
            try:
                self.http.listen()
            except OSError as exc:
                raise PortProblem(port_problem(exc, s.GATEWAY_HOST, s.HTTP_PORT, "HTTP_PORT")) from None
        if s.METRICS_PORT is not None:
            self._serve_metrics(s.METRICS_HOST or s.GATEWAY_HOST, s.METRICS_PORT)
        # Everything allocated so far lives for the whole run: keep the collector off it. Each
        # message allocates dozens of short-lived objects (models, dicts, datetimes) that die by
        # reference counting; with the default gen-0 threshold of 700 the collector would run
        # every few dozen messages and show up as a quarter of the gateway's CPU.
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_GEN0_THRESHOLD, 50, 100)
        log.info("gateway %s ready (SACK_MODE=%s, AUTO_REGISTER=%s, WRITE_CONCERN=%s)", s.GATEWAY_ID, s.SACK_MODE,
                 s.AUTO_REGISTER, wc)
        return address

    def _start_commands(self, db: Any, watch_db: Any, claim_db: Any) -> None:
        assert self.trackers is not None and self.devices is not None
        self.commands = CommandService(self.settings, db, self.trackers, self.devices, watch_db=watch_db,
                                       claim_db=claim_db)
        self.trackers.commands = self.commands
        # Fleet configuration: told of connections and rollout commands by the command room, and
        # of stored settings dumps by the configuration shadow.
        self.fleet = Reconciler(self.settings, db, self.trackers)
        self.commands.observer = self.fleet
        self.devices.config.on_stored = self.fleet.settings_stored
        self.commands.start()
        self.fleet.start()

    def _serve_metrics(self, host: str, port: int) -> None:
        assert self.ingest is not None and self.writer is not None
        self.metrics = MetricsServer(host, port, self.stats, {
            "gv50_sack_latency_seconds": (self.ingest.sack_latency, "From reading a frame to sending its SACK."),
            "gv50_mongodb_write_seconds": (self.writer.write_latency, "One batch insert, from sent to confirmed "
                                                                      "(the write concern met)."),
        })
        try:
            self.metrics.listen()
        except OSError as exc:
            raise PortProblem(port_problem(exc, host, port, "METRICS_PORT")) from None

    def stats(self) -> dict[str, Any]:
        """The figures `gateway_state.stats` holds (see README, `gv50ctl status`)."""
        assert self.gateway is not None and self.writer is not None and self.ingest is not None
        figures: dict[str, Any] = {"connections": self.gateway.stats(), **self.ingest.stats(), **self.writer.stats()}
        if self.commands is not None:
            figures["commands"] = self.commands.figures()
            figures["command_transitions_total"] = self.commands.transitions_total()
            steps = self.commands.step_latencies()
            if steps:
                figures["command_steps_ms"] = steps
        if self.fleet is not None:
            figures["fleet"] = self.fleet.state_counts()
        return figures

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        s = self.settings
        log.info("shutting down: grace period %.1fs", s.SHUTDOWN_GRACE_S)
        try:
            # Each step runs even if an earlier one failed (MongoDB may be down as we stop).
            if self.gateway is not None:
                self._step("stopping sessions", self.gateway.stop, s.SHUTDOWN_GRACE_S)
            for server in (self.udp, self.http, self.metrics):
                if server is not None:
                    self._step("stopping a listener", server.stop)
            if self.trackers is not None:
                self._step("stopping the presence sweep", self.trackers.stop)
            if self.fleet is not None:
                self._step("stopping the fleet reconciler", self.fleet.stop)
            if self.commands is not None:
                self._step("stopping commands", self.commands.stop)
            if self.writer is not None:
                self._step("flushing writes", self.writer.stop, 20)
            if self.devices is not None:
                self._step("flushing device state", self.devices.stop)
                marked = self._step("marking devices offline", self.devices.mark_gateway_offline)
                log.info("marked %s devices of %s offline", marked, s.GATEWAY_ID)
            if self.liveness is not None:
                self._step("removing the liveness record", self.liveness.stop)
            for client in self.clients:
                self._step("closing a MongoDB client", client.close)
            if self.mongod is not None:
                self._step("stopping the embedded mongod", self.mongod.stop)
        finally:
            self._stopped.set()
            log.info("stopped")

    @staticmethod
    def _step(what: str, func: Any, *args: Any) -> Any:
        try:
            return func(*args)
        except Exception as exc:
            log.error("shutdown: %s failed: %s", what, exc)
            return None

    def wait(self) -> None:
        self._stopped.wait()


class PortProblem(RuntimeError):
    """The tracker port cannot be opened; the message says which and what to do."""


def port_problem(exc: OSError, host: str, port: int, setting: str = "GATEWAY_PORT") -> str:
    """One plain line for a listener that cannot open: which port, which setting, what to do."""
    if exc.errno == errno.EADDRINUSE:
        shared = " (several gateways share one port only when each has REUSE_PORT=true)" \
            if setting == "GATEWAY_PORT" else ""
        return f"port {port} on {host} ({setting}) is in use by another program: stop it, or set {setting} to a " \
               f"free port{shared}"
    if exc.errno == errno.EACCES:
        return (f"port {port} ({setting}) needs extra rights (ports below 1024): use a port above 1023, or "
                f"give the process the right to bind it")
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"GATEWAY_HOST={host} is not an address of this machine: use 0.0.0.0 (all) or one of its addresses"
    return f"cannot listen on {host}:{port} (GATEWAY_HOST, {setting}): {exc.strerror or exc}"


def raise_fd_limit(wanted: int) -> None:
    """Every tracker is a socket: raise the soft descriptor limit toward the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        log.warning("file descriptor limit %d is below MAX_CONNECTIONS + 100 = %d", target, wanted)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gv50-gateway",
        description="Start the gv50_gevent gateway: trackers connect to GATEWAY_PORT, their reports go to MongoDB, "
                    "and the commands in MongoDB go to the trackers. Settings come from the environment and an "
                    "env file (the environment wins); see config/.env.example for every setting. Stop it with "
                    "Ctrl-C or SIGTERM.",
        epilog="Without MONGODB_URI the gateway starts its own MongoDB under MONGOD_DATA_DIR, on MONGOD_PORT.")
    parser.add_argument("--env-file", metavar="PATH", default=None,
                        help="read settings from this file instead of .env in the current folder "
                             "(default: .env, if there is one)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.env_file)
    except SettingsError as exc:
        print(f"gv50-gateway cannot start: {exc}".replace("\n", "\ngv50-gateway cannot start: "), file=sys.stderr)
        return 2
    setup_logging(settings.LOG_LEVEL, settings.LOG_FORMAT, settings.GATEWAY_ID)
    log.info("settings: %s", settings.safe_dump())
    raise_fd_limit(settings.MAX_CONNECTIONS + 100)
    app = Application(settings)
    stopping: list[gevent.Greenlet] = []

    def request_stop(signum: int) -> None:
        log.info("signal %d received", signum)
        if not stopping:
            stopping.append(gevent.spawn(app.stop))

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, request_stop, signum)
    try:
        app.start()
    except (MongodError, MongoProblem, PortProblem, OSError, PyMongoError) as exc:
        log.error("cannot start: %s", exc)
        app.stop()
        return 1
    app.wait()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
