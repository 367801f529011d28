"""The TCP side: a gevent StreamServer, a bounded Pool of sessions, the reaper, who is connected
(one connection per IMEI) and the ordered shutdown.

Sessions see this object only as their `Presence` (admit, offline); the command room sees it as a
directory of links to trackers (`link(imei)`). The listening socket sets SO_REUSEPORT so
supervisord can run several processes on one port (the kernel spreads connections across them).
"""

from __future__ import annotations

import logging
import socket as pysocket
import time
from typing import Any, Callable, Protocol, TypeVar

import gevent
from gevent import socket
from gevent.pool import Pool
from gevent.server import StreamServer

from ..config import Settings
from ..protocol import Ack, Report
from ..storage.devices import Devices, Vehicles, utcnow
from ..storage.ingest import Ingest
from .registry import ConnectionRegistry
from .session import DeviceSession

log = logging.getLogger(__name__)
T = TypeVar("T")


class CommandHooks(Protocol):
    """What the command room needs to hear from the sessions (`commands.service.CommandService`)."""

    def device_online(self, link: Any) -> None: ...
    def device_offline(self, link: Any) -> None: ...
    def report(self, link: Any, report: Report) -> None: ...
    def ack(self, link: Any, ack: Ack) -> None: ...


class NoCommands:
    def device_online(self, link: Any) -> None: ...
    def device_offline(self, link: Any) -> None: ...
    def report(self, link: Any, report: Report) -> None: ...
    def ack(self, link: Any, ack: Ack) -> None: ...


def off_stack(func: Callable[..., T], *args: Any) -> T:
    """`func(*args)` run in a short-lived greenlet, its result or its exception handed back here.

    MongoDB calls run many frames deep. Made from a session's long-lived greenlet they would leave
    its stack grown for the whole connection; a short-lived greenlet takes that depth and gives it
    back (measured: 15.4 -> 12.4 KB of RSS per connection). Not `gevent.spawn(...).get()`: the
    hub prints the traceback of every greenlet that raises, so each tracker connecting while
    MongoDB is down would log one."""
    outcome: list[tuple[bool, Any]] = []

    def call() -> None:
        try:
            outcome.append((True, func(*args)))
        except Exception as exc:
            outcome.append((False, exc))

    gevent.spawn(call).join()
    if not outcome:
        raise gevent.GreenletExit  # the helper was killed (shutdown)
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def make_listener(host: str, port: int, reuse_port: bool, backlog: int = 2048) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port and hasattr(pysocket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, pysocket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


class Gateway:
    def __init__(self, settings: Settings, ingest: Ingest, devices: Devices, vehicles: Vehicles) -> None:
        self.settings = settings
        self.ingest = ingest
        self.devices = devices
        self.vehicles = vehicles
        self.registry: ConnectionRegistry[DeviceSession] = ConnectionRegistry()
        self.commands: CommandHooks = NoCommands()
        self.pool = Pool(settings.MAX_CONNECTIONS)
        self.sessions: set[DeviceSession] = set()
        self.refused = 0
        self._server: StreamServer | None = None
        self._reaper: gevent.Greenlet | None = None

    # --- listening ---

    def listen(self) -> tuple[str, int]:
        listener = make_listener(self.settings.GATEWAY_HOST, self.settings.GATEWAY_PORT, self.settings.REUSE_PORT)
        self._server = StreamServer(listener, self._handle, spawn=self._spawn)
        self._server.start()
        self._reaper = gevent.spawn(self._reap)
        address = listener.getsockname()[:2]
        log.info("listening for trackers on %s:%d (at most %d connections)", address[0], address[1],
                 self.settings.MAX_CONNECTIONS)
        return address

    def _spawn(self, func: Callable[..., Any], *args: Any) -> None:
        # gevent calls spawn(_handle_and_close_when_done, handle, close, (sock, addr)). Over the
        # limit the connection is closed at once: refused, not parked in the listen backlog.
        if self.pool.full():
            self.refused += 1
            if self.refused == 1 or self.refused % 1000 == 0:
                log.warning("MAX_CONNECTIONS=%d reached: refused %d connections so far",
                            self.settings.MAX_CONNECTIONS, self.refused)
            close, (sock, addr) = args[1], args[2]
            close(sock, addr)
            return
        self.pool.spawn(func, *args)

    def _reap(self) -> None:
        """Close idle sessions and slow-drip frames: one sweep instead of a timer per recv."""
        interval = max(0.05, min(5.0, self.settings.IDLE_TIMEOUT_S / 4, self.settings.FRAME_TIMEOUT_S / 4))
        while True:
            gevent.sleep(interval)
            now = time.monotonic()
            for session in list(self.sessions):
                reason = session.expired(now)
                if reason is not None:
                    session.close(reason)

    def _handle(self, sock: socket.socket, address: tuple[str, int]) -> None:
        session = DeviceSession(sock, address, self.settings, self.ingest, self, self.commands)
        self.sessions.add(session)
        try:
            session.run()
        finally:
            self.sessions.discard(session)

    def link(self, imei: str) -> DeviceSession | None:
        """The live connection of a tracker here, if any (for the command room)."""
        return self.registry.get(imei)

    # --- what sessions tell us (Presence) ---

    def admit(self, session: DeviceSession, imei: str) -> str | None:
        """May this IMEI be served on this connection? Returns why not, or None. MongoDB calls run
        off the session's stack (see `off_stack`)."""
        allowed, reason, password = off_stack(self.vehicles.admit, imei)
        if not allowed:
            return reason or "refused"
        session.password = password
        return None

    def online(self, session: DeviceSession) -> None:
        """The session is bound to its IMEI: it holds the tracker now."""
        imei = session.imei
        assert imei is not None
        old = self.registry.bind(imei, session)
        if old is not None:
            old.close(f"replaced by a new connection from {session.remote_addr}")
        before = off_stack(self.devices.connected, imei, session.id, session.remote_addr, session.connected_at) or {}
        if isinstance(before.get("sack_enable"), bool):
            # An acknowledged set_server switched this tracker's SACK; it holds across reconnects.
            session.core.sack_enabled = before["sack_enable"]
        previous_addr = old.remote_addr if old is not None else (before.get("remote_addr") if before.get("online")
                                                                 else None)
        if previous_addr and previous_addr.rpartition(":")[0] != session.remote_host:
            # The same IMEI from another address while the first connection is live: a cloned or
            # spoofed IMEI, or a tracker that moved networks. Worth an operator's look either way.
            text = (f"{imei} connected from {session.remote_addr} while live at {previous_addr} "
                    f"({before.get('gateway_id') or self.settings.GATEWAY_ID})")
            log.warning(text)
            self.ingest.warning(imei, "imei_conflict", text, previous_addr=previous_addr,
                                remote_addr=session.remote_addr)
        elif old is not None:
            log.info("%s reconnected from %s; closed its older connection", imei, session.remote_addr)
        self.commands.device_online(session)

    def offline(self, session: DeviceSession) -> None:
        imei = session.imei
        assert imei is not None
        if self.registry.unbind(imei, session):
            self.devices.disconnected(imei, session.id, utcnow())
        self.commands.device_offline(session)

    def stats(self) -> dict[str, Any]:
        return {"tcp": len(self.sessions), "refused": self.refused}

    # --- stopping ---

    def stop(self, grace_s: float) -> None:
        """Stop accepting, let sessions finish what they read within `grace_s`, then kill the rest."""
        if self._server is not None:
            self._server.close()
        if self._reaper is not None:
            self._reaper.kill()
        for session in list(self.sessions):
            session.stop_reading()
        self.pool.join(timeout=grace_s)
        if len(self.pool):
            log.warning("%d sessions did not finish within %.1fs; killing them", len(self.pool), grace_s)
            self.pool.kill(block=True, timeout=5)
