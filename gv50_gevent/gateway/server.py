"""The TCP side: a gevent StreamServer, a bounded Pool of sessions, the reaper of silent ones, and
the ordered shutdown. Who may connect and who is connected is `trackers.Trackers`' job.

The listening socket sets SO_REUSEPORT so supervisord can run several processes on one port (the
kernel spreads connections across them).
"""

from __future__ import annotations

import logging
import socket as pysocket
import time
from typing import Any, Callable

import gevent
from gevent import socket
from gevent.pool import Pool
from gevent.server import StreamServer

from ..config import Settings
from ..storage.ingest import Ingest
from .session import DeviceSession
from .trackers import Trackers

log = logging.getLogger(__name__)


def make_listener(host: str, port: int, reuse_port: bool, backlog: int = 2048) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port and hasattr(pysocket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, pysocket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


class Gateway:
    def __init__(self, settings: Settings, ingest: Ingest, trackers: Trackers) -> None:
        self.settings = settings
        self.ingest = ingest
        self.trackers = trackers
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
        session = DeviceSession(sock, address, self.settings, self.ingest, self.trackers, self.trackers.commands)
        self.sessions.add(session)
        try:
            session.run()
        finally:
            self.sessions.discard(session)

    def stats(self) -> dict[str, Any]:
        return {"tcp": len(self.sessions), "refused": self.refused, **self.trackers.stats()}

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
