"""The TCP side: a gevent StreamServer, a bounded Pool of sessions, and the ordered shutdown.

`Gateway` is the one object sessions talk to: storage, the connection registry and the command
hooks hang off it. The listening socket sets SO_REUSEPORT so supervisord can run several
processes on one port (the kernel spreads connections across them).
"""

from __future__ import annotations

import logging
import socket as pysocket
import time
from datetime import datetime
from typing import Any, Callable, Protocol

import gevent
from gevent import socket
from gevent.pool import Pool
from gevent.server import StreamServer

from ..config import Settings
from ..protocol import Ack, Report
from ..storage.database import DB, EVENTS
from ..storage.devices import Devices, Vehicles, utcnow
from ..storage.writer import BatchWriter
from .registry import ConnectionRegistry
from .session import DeviceSession, off_stack

log = logging.getLogger(__name__)

# Protocol version `TTMMmm`: TT is the device type (spec 2.2). 39 appears in V4.01's own examples.
DEVICE_MODELS = {"09": "GV50", "39": "GV50"}


class CommandHooks(Protocol):
    """What the command room needs to hear from the sessions."""

    def device_online(self, session: DeviceSession) -> None: ...
    def device_offline(self, session: DeviceSession) -> None: ...
    def report(self, session: DeviceSession, report: Report) -> None: ...
    def ack(self, session: DeviceSession, ack: Ack) -> None: ...


class NoCommands:
    def device_online(self, session: DeviceSession) -> None: ...
    def device_offline(self, session: DeviceSession) -> None: ...
    def report(self, session: DeviceSession, report: Report) -> None: ...
    def ack(self, session: DeviceSession, ack: Ack) -> None: ...


def make_listener(host: str, port: int, reuse_port: bool, backlog: int = 2048) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port and hasattr(pysocket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, pysocket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    return sock


class Gateway:
    def __init__(self, settings: Settings, db: DB, writer: BatchWriter, devices: Devices, vehicles: Vehicles) -> None:
        self.settings = settings
        self.db = db
        self.writer = writer
        self.devices = devices
        self.vehicles = vehicles
        self.registry = ConnectionRegistry()
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
        session = DeviceSession(sock, address, self)
        self.sessions.add(session)
        try:
            session.run()
        finally:
            self.sessions.discard(session)

    # --- what sessions tell us ---

    def device_online(self, session: DeviceSession) -> None:
        imei = session.imei
        assert imei is not None
        old = self.registry.bind(imei, session)
        if old is not None:
            old.close(f"replaced by a new connection from {session.remote_addr}")
        before = off_stack(self.devices.connected, imei, session.id, session.remote_addr,
                           session.connected_at) or {}  # off the session's stack: see session._bind
        if isinstance(before.get("sack_enable"), bool):
            # An acknowledged set_server switched this tracker's SACK; it holds across reconnects.
            session.sack_enabled = before["sack_enable"]
        previous_addr = old.remote_addr if old is not None else before.get("remote_addr") if before.get("online") else None
        if previous_addr and previous_addr.rpartition(":")[0] != session.remote_host:
            # The same IMEI from another address while the first connection is live: a cloned or
            # spoofed IMEI, or a tracker that moved networks. Worth an operator's look either way.
            self._warn(imei, "imei_conflict", f"{imei} connected from {session.remote_addr} while live at "
                       f"{previous_addr} ({before.get('gateway_id') or self.settings.GATEWAY_ID})",
                       previous_addr=previous_addr, remote_addr=session.remote_addr)
        elif old is not None:
            log.info("%s reconnected from %s; closed its older connection", imei, session.remote_addr)
        self.commands.device_online(session)

    def _warn(self, imei: str, event_type: str, text: str, **fields: Any) -> None:
        log.warning(text)
        at = utcnow()
        self.writer.put(EVENTS, {"imei": imei, "type": event_type, "report": "GATEWAY", "level": "warning",
                                 "occurred_at": at, "received_at": at, "sent_at": at, "count": None,
                                 "buffered": False, "gateway_id": self.settings.GATEWAY_ID, "message": text, **fields})

    def device_offline(self, session: DeviceSession) -> None:
        imei = session.imei
        assert imei is not None
        if self.registry.unbind(imei, session):
            self.devices.disconnected(imei, session.id, utcnow())
        self.commands.device_offline(session)

    def device_report(self, session: DeviceSession, report: Report, received_at: datetime) -> None:
        fields: dict[str, Any] = {}
        if report.device_name:
            fields["device_name"] = report.device_name
        model = DEVICE_MODELS.get(report.protocol_version[:2])
        if model:
            fields["model"] = model
        if not report.buffered:
            # +BUFF is history: it may not overwrite the current vehicle state.
            ignition = report.ignition
            if ignition is not None:
                fields["ignition"] = ignition
            output1 = report.output1
            if output1 is not None:
                fields["output1"] = output1
        firmware = report.firmware
        if firmware:
            fields["firmware"] = firmware
        position = _last_position(report, received_at)
        self.devices.note_report(report, received_at, fields, position)
        self.commands.report(session, report)

    def device_ack(self, session: DeviceSession, ack: Ack) -> None:
        self.commands.ack(session, ack)

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


def _last_position(report: Report, received_at: datetime) -> dict[str, Any] | None:
    best = None
    for p in report.positions:
        if p.fix_time is not None and p.has_coordinates and (best is None or p.fix_time > best.fix_time):
            best = p
    if best is None:
        return None
    return {
        "fix_time": best.fix_time, "location": {"type": "Point", "coordinates": [best.longitude, best.latitude]},
        "speed_kmh": best.speed_kmh, "azimuth": best.azimuth, "altitude_m": best.altitude_m,
        "gps_accuracy": best.gps_accuracy, "valid": best.valid, "report": report.type, "count": report.count,
        "sent_at": report.sent_at, "received_at": received_at, "buffered": report.buffered,
    }
