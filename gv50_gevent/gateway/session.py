"""One TCP connection: a thin I/O shell around the protocol core. Read, feed, store, wait, send.

The session's greenlet is the only reader of its socket, and `send()` is the only way to write to
it (command workers use it from their own greenlets). A `+SACK` goes out only after everything
its frame produced is durable in MongoDB.

The idle and frame timers measure the tracker's silence. Time the session spends waiting for the
gateway itself (a full write buffer, MongoDB confirming a write, an outage, an election) is not
the tracker's: the timers stop while it lasts.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, Callable, Protocol, TypeVar

import gevent
from gevent.event import Event
from gevent.lock import Semaphore
from pymongo.errors import PyMongoError

from ..config import Settings
from ..logs import about
from ..protocol import Ack, Report
from ..protocol.connection import NEED_DATA, Admit, ArchiveKind, Connection, Received
from ..storage.writer import Batch

log = logging.getLogger(__name__)

RECV_BYTES = 65536
# Frames handled per turn before the session queues for write-buffer room again: under
# backpressure a 64 KB burst on one connection waits its turn behind the others in slices of
# this size, instead of making them all wait behind the whole of it.
FRAMES_PER_TURN = 16
# Once a session has waited this long for the gateway while handling one read, it keeps reading its
# socket (up to READ_AHEAD_BYTES) until it is done with that read, and answers the heartbeats it
# finds at once: a storm's replay can keep a session busy for minutes, and a tracker without its
# heartbeat reply reconnects and replays again. Without backpressure it never starts.
READ_AHEAD_AFTER_S = 0.2
READ_AHEAD_BYTES = 65536
# One receive buffer for the whole process instead of a fresh 64 KiB allocation per recv():
# greenlets never run in parallel, and each session copies what it read into its core before it
# can yield. It spares the allocator and keeps 10,000 idle sessions small.
_RECV_BUFFER = bytearray(RECV_BYTES)
_RECV_VIEW = memoryview(_RECV_BUFFER)
T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Sink(Protocol):
    """Where a session's frames go: storage (`storage.ingest.Ingest`)."""

    def record(self, events: Sequence[Received], remote_addr: str, received_at: datetime, *,
               device_state: bool = True, replies: bool = True) -> list[Batch]: ...
    def sent(self, frames: Sequence[bytes], kind: ArchiveKind, imei: str | None, remote_addr: str,
             at: datetime) -> list[Batch]: ...
    def sacked(self, seconds: float) -> None: ...


class Presence(Protocol):
    """Who may connect, and who is connected (`server.Gateway`)."""

    def admit(self, session: DeviceSession, imei: str) -> str | None: ...  # the reason, when refused
    def online(self, session: DeviceSession) -> None: ...
    def offline(self, session: DeviceSession) -> None: ...


class Durable(Protocol):
    """What a `+SACK` waits for: a storage batch, or what a frame did to a command. `done` is set
    once it is written."""

    @property
    def done(self) -> Event: ...


class MessageHooks(Protocol):
    """What the command room hears of a link's traffic (`source`: the address the frame came from;
    `received_at`: when its bytes were read). What they return is written before the frame's `+SACK`
    goes out."""

    def ack(self, link: Any, ack: Ack, source: str) -> Durable | None: ...
    def report(self, link: Any, report: Report, source: str, received_at: datetime) -> Durable | None: ...


class SessionClosed(ConnectionError):
    """The session ended while a caller wanted to use it (a ConnectionError: callers in other
    rooms catch it without knowing this class)."""


class DeviceSession:
    transport = "tcp"  # what a command sent on it went out over (the command room's `Link`)
    # Ten thousand of these live at once: slots keep each one a few hundred bytes smaller.
    __slots__ = (
        "sock", "settings", "sink", "presence", "hooks", "id", "remote_addr", "remote_host", "password",
        "connected_at", "closing", "last_read", "partial_since", "waiting_since", "core", "heartbeats",
        "_send_lock", "_sacks", "_waits", "_received_at", "_ahead", "_ahead_end", "_ahead_seen", "_in_recv",
        "_reader", "_waited", "_ahead_at",
    )

    def __init__(self, sock: socket.socket, address: tuple[str, int], settings: Settings, sink: Sink,
                 presence: Presence, hooks: MessageHooks) -> None:
        self.sock = sock
        self.settings = settings
        self.sink = sink
        self.presence = presence
        self.hooks = hooks
        self.id = uuid.uuid4().hex
        self.remote_addr = f"{address[0]}:{address[1]}"
        self.remote_host = address[0]
        self.password: str | None = None
        self.connected_at = utcnow()
        self.closing: str | None = None
        self.core = Connection(settings.MAX_FRAME_BYTES, sack_enabled=settings.SACK_MODE == "all")
        self.heartbeats = 0  # a connection with heartbeats is a long one (report mode 3)
        self._send_lock = Semaphore()
        self._sacks: list[bytes] = []
        self._waits: dict[int, Durable] = {}  # the SACKs wait for these; command writes always
        self.last_read = time.monotonic()
        self.partial_since: float | None = None
        self.waiting_since: float | None = None  # waiting for the gateway: the tracker's clocks stop
        self._received_at = self.connected_at
        self._ahead: bytearray | None = None  # read while waiting for the gateway, not fed yet
        self._ahead_end: str | None = None  # the read-ahead met the end of the connection
        self._ahead_seen = 0  # bytes of `_ahead` already looked at for heartbeats
        self._ahead_at = self.connected_at  # when the first bytes of `_ahead` were read
        self._in_recv = False
        self._reader: gevent.Greenlet | None = None  # reading ahead, while it handles one read
        self._waited = 0.0  # seconds waited for the gateway while handling this read

    @property
    def imei(self) -> str | None:
        return self.core.imei

    def about(self) -> dict[str, Any]:
        """The fields of a log line about this connection (see logs.about)."""
        return about(self.core.imei, self.remote_addr)

    def set_sack(self, enabled: bool) -> None:
        """SACK switched on or off for this tracker (an acknowledged set_server)."""
        self.core.sack_enabled = enabled

    # --- the read loop ---

    def run(self) -> None:
        try:
            self._read_loop()
        except SessionClosed:
            pass  # a reply could not be sent: `_close_for()` has logged why, nothing failed here
        except PyMongoError as exc:
            # MongoDB is down and this connection cannot go on without it (admitting the IMEI, marking
            # it online). Nothing unstored was SACKed: the tracker replays it on its next connection.
            self.closing = self.closing or "MongoDB unavailable"
            log.warning("closing %s (%s): MongoDB unavailable: %s", self.remote_addr, self.imei, exc,
                        extra=self.about())
        except Exception:
            log.exception("session %s (%s) failed", self.remote_addr, self.imei, extra=self.about())
        finally:
            self._finish()

    def _read_loop(self) -> None:
        # No socket timeout: gevent would arm and disarm a timer around every recv. The gateway's
        # reaper checks `last_read` and `partial_since` instead (see `expired()`).
        core = self.core
        while self.closing is None:
            ahead = self._ahead
            if ahead:
                self._ahead, self._ahead_seen = None, 0
                core.receive_data(ahead)
                read_at = self._ahead_at  # when it was read, not now that it is handled
            elif self._ahead_end is not None:
                self.closing = self.closing or self._ahead_end
                return
            else:
                try:
                    n = self.sock.recv_into(_RECV_BUFFER)
                except OSError as exc:
                    if self.closing is None:
                        self.closing = f"socket error: {exc}"
                    return
                if not n:
                    self.closing = self.closing or "closed by peer"
                    return
                core.receive_data(_RECV_VIEW[:n])  # copied before anything can switch greenlets
                read_at = utcnow()  # one clock read per read, not per message
            self.last_read = time.monotonic()
            self._received_at = read_at
            if self._serve():
                self.partial_since = self.last_read if core.pending else None
            elif self.partial_since is None:
                self.partial_since = self.last_read  # a slowloris trickles bytes into one frame
            self._acknowledge()
            self._stop_reading_ahead()

    def _serve(self) -> int:
        """Handle the frames read so far, a turn at a time; returns how many were complete."""
        core = self.core
        handled = 0
        while self.closing is None:
            turn: list[Received] = []
            close: str | None = None
            while len(turn) < FRAMES_PER_TURN:
                event = core.next_event()
                if event is NEED_DATA:
                    break
                if isinstance(event, Admit):
                    event = self._for_gateway(self._admit, event.imei)  # MongoDB may be slow to answer
                assert isinstance(event, Received)
                turn.append(event)
                if event.kind == "heartbeat" and event.status == "ok":
                    self.heartbeats += 1
                if event.reply is not None:
                    # A heartbeat is answered now, not after the turn's room in the write buffer:
                    # other trackers' data must never hold it back (a tracker without its reply
                    # reconnects and replays, which makes a storm worse).
                    try:
                        self.send(event.reply, "sack")
                    except SessionClosed:
                        self.sink.record(turn, self.remote_addr, self._received_at)  # what was handled is kept
                        raise
                if event.close is not None:
                    close = event.close
                    break
            if not turn:
                return handled
            handled += len(turn)
            batches = self._for_gateway(self.sink.record, turn, self.remote_addr, self._received_at)
            for event in turn:
                message = event.message
                if message is not None and event.status == "ok":
                    settled = None
                    if message.kind == "ack":
                        settled = self.hooks.ack(self, message, self.remote_addr)  # type: ignore[arg-type]
                    elif message.kind == "report":
                        settled = self.hooks.report(self, message, self.remote_addr,  # type: ignore[arg-type]
                                                    self._received_at)
                    if settled is not None:
                        self._waits[id(settled)] = settled
                if event.sack is not None:
                    self._sacks.append(event.sack)
                    for batch in batches:
                        self._waits[id(batch)] = batch
            if close is not None:
                self._close_for(close)
        return handled

    def _admit(self, imei: str) -> Received:
        reason = self.presence.admit(self, imei)
        if reason is not None:
            log.warning("refused %s from %s: %s", imei, self.remote_addr, reason, extra=about(imei, self.remote_addr))
            return self.core.refused(reason)
        received = self.core.admitted()
        log.info("connected %s from %s", imei, self.remote_addr, extra=self.about())
        self.presence.online(self)
        return received

    def _for_gateway(self, func: Callable[..., T], *args: Any) -> T:
        """Run a call that may wait for the gateway (write-buffer room, MongoDB); the time it takes
        does not count against the tracker's idle and frame timers."""
        if self._reader is None and self._waited >= READ_AHEAD_AFTER_S:
            self._reader = gevent.spawn(self._read_ahead)
        self.waiting_since = start = time.monotonic()
        try:
            return func(*args)
        finally:
            self.waiting_since = None
            waited = time.monotonic() - start
            self._waited += waited
            self.last_read += waited
            if self.partial_since is not None:
                self.partial_since += waited

    def _read_ahead(self) -> None:
        """Read on while the session is busy with a read, and answer heartbeats at once."""
        if self._ahead is None:
            self._ahead = bytearray()
        buf = self._ahead
        while self._reader is not None and self.closing is None and self._ahead_end is None \
                and len(buf) < READ_AHEAD_BYTES:
            self._in_recv = True
            try:
                data = self.sock.recv(READ_AHEAD_BYTES - len(buf))
            except OSError as exc:
                self._ahead_end = f"socket error: {exc}"
                return
            finally:
                self._in_recv = False
            if not data:
                self._ahead_end = "closed by peer"
                return
            if not buf:
                self._ahead_at = utcnow()
            buf += data
            replies, seen = self.core.answer_ahead(bytes(buf[self._ahead_seen:]))
            self._ahead_seen += seen
            for reply in replies:
                try:
                    self.send(reply, "sack")
                except SessionClosed:
                    return

    def _stop_reading_ahead(self) -> None:
        self._waited = 0.0
        reader, self._reader = self._reader, None
        if reader is None:
            return
        if self._in_recv:
            reader.kill()  # blocked in recv: nothing is half done
        else:
            reader.join()  # sending a heartbeat's reply: a write is never cut in half

    def expired(self, now: float) -> str | None:
        """Why this session should be closed now (idle, or a frame that never ends), or None."""
        if self.waiting_since is not None:
            now = self.waiting_since  # the tracker's clocks stand still while the gateway is busy
        idle = self.settings.IDLE_TIMEOUT_S
        if now - self.last_read > idle:
            return f"idle for {idle:.0f}s"
        frame_timeout = self.settings.FRAME_TIMEOUT_S
        if self.partial_since is not None and now - self.partial_since > frame_timeout:
            return f"frame not completed within {frame_timeout:.0f}s"  # `_finish()` archives its bytes
        return None

    # --- acknowledgements: after the data is durable ---

    def _acknowledge(self) -> None:
        # What a frame did to a command is written before the session reads on, SACK or not: that
        # bounds the command room's queue, and its time is the gateway's, not the tracker's.
        for batch in self._waits.values():
            self._for_gateway(batch.done.wait)
        if not self._sacks:
            self._waits = {}
            return
        sacks, self._sacks, self._waits = self._sacks, [], {}
        self.send(b"".join(sacks), "sack", archive_each=sacks)
        self.sink.sacked((utcnow() - self._received_at).total_seconds())

    # --- writing to the device ---

    def send(self, data: bytes, kind: ArchiveKind, archive_each: list[bytes] | None = None) -> None:
        """Write to the device (the only way to). Raises SessionClosed if the connection is gone."""
        if self.closing is not None:
            raise SessionClosed(self.closing)
        with self._send_lock:
            try:
                with gevent.Timeout(self.settings.SEND_TIMEOUT_S):
                    self.sock.sendall(data)
            except gevent.Timeout:
                self._close_for("send timed out (peer not reading)")
                raise SessionClosed(self.closing) from None
            except OSError as exc:
                self._close_for(f"send failed: {exc}")
                raise SessionClosed(self.closing) from None
        self.sink.sent(archive_each or [data], kind, self.imei, self.remote_addr, utcnow())

    # --- closing ---

    def close(self, reason: str) -> None:
        """Ask the session to end (from any greenlet): the reader wakes up and finishes."""
        self._close_for(reason)

    def _close_for(self, reason: str) -> None:
        if self.closing is None:
            self.closing = reason
            log.info("closing %s (%s): %s", self.remote_addr, self.imei, reason, extra=self.about())
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def stop_reading(self) -> None:
        """Graceful shutdown: the device gets the SACKs for what was already read, then EOF."""
        try:
            self.sock.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def _finish(self) -> None:
        self._stop_reading_ahead()
        if self._ahead:
            self.core.receive_data(self._ahead)  # read but not handled: archived below
        why = self.closing or "session error"
        leftovers = self.core.leftovers(why)
        if leftovers:
            self.sink.record(leftovers, self.remote_addr, utcnow())
        if self.imei is not None:
            seconds = (utcnow() - self.connected_at).total_seconds()
            log.info("disconnected %s from %s after %.0fs: %s", self.imei, self.remote_addr, seconds, why,
                     extra=self.about())
            try:
                self.presence.offline(self)
            except PyMongoError as exc:
                log.warning("%s: could not mark the device offline (MongoDB unavailable): %s", self.imei, exc,
                            extra=self.about())
