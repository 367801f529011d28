"""One DeviceSession per TCP connection: read, frame, parse, store, acknowledge.

The session's greenlet is the only reader of its socket, and `send()` is the only way to write
to it (commands use it from other greenlets). A `+SACK` goes out only after everything the
message produced is durable in MongoDB.
"""

from __future__ import annotations

import logging
import socket
import time
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import gevent
from gevent.lock import Semaphore
from pymongo.errors import PyMongoError

from ..protocol import Frame, FrameTooLong, Framer, Message, ProtocolError, Report, parse
from ..storage.documents import ArchiveKind, ArchiveStatus, archive_doc, event_doc, position_docs
from ..storage.database import EVENTS, MESSAGES, POSITIONS
from ..storage.writer import Batch

if TYPE_CHECKING:
    from .server import Gateway

log = logging.getLogger(__name__)

RECV_BYTES = 65536
# One receive buffer for the whole process instead of a fresh 64 KiB allocation per recv():
# greenlets never run in parallel, and each session copies what it read into its own framer
# before it can yield. It spares the allocator and keeps 10,000 idle sessions small.
_RECV_BUFFER = bytearray(RECV_BYTES)
_RECV_VIEW = memoryview(_RECV_BUFFER)
_HEX4 = frozenset("0123456789ABCDEFabcdef")
T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _count_of(line: str) -> str | None:
    """The count number (last field) of a frame we could not parse, if it looks like one."""
    last = line.rsplit(",", 1)[-1].strip()
    return last.upper() if len(last) == 4 and set(last) <= _HEX4 else None


def off_stack(func: Callable[..., T], *args: Any) -> T:
    """`func(*args)` run in a short-lived greenlet, its result or its exception handed back here.
    Not `gevent.spawn(...).get()`: the hub prints the traceback of every greenlet that raises, so
    each tracker connecting while MongoDB is down would log one."""
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


def _guess_kind(line: str) -> ArchiveKind:
    if line.startswith(("+RESP:", "+BUFF:")):
        return "report"
    if line.startswith("+ACK:GTHBD"):
        return "heartbeat"
    if line.startswith("+ACK:"):
        return "ack"
    return "other"


class SessionClosed(Exception):
    """The session ended while a caller wanted to use it."""


class DeviceSession:
    # Ten thousand of these live at once: slots keep each one a few hundred bytes smaller.
    __slots__ = (
        "sock", "gateway", "settings", "id", "remote_addr", "remote_host", "imei", "password", "protocol_version",
        "sack_enabled", "connected_at", "closing", "last_read", "partial_since", "_framer", "_send_lock",
        "_sacks", "_waits", "_received_at",
    )

    def __init__(self, sock: socket.socket, address: tuple[str, int], gateway: Gateway) -> None:
        self.sock = sock
        self.gateway = gateway
        self.settings = gateway.settings
        self.id = uuid.uuid4().hex
        self.remote_addr = f"{address[0]}:{address[1]}"
        self.remote_host = address[0]
        self.imei: str | None = None
        self.password: str | None = None
        self.protocol_version: str | None = None
        self.sack_enabled = self.settings.SACK_MODE == "all"
        self.connected_at = utcnow()
        self.closing: str | None = None
        self._framer = Framer(self.settings.MAX_FRAME_BYTES)
        self._send_lock = Semaphore()
        self._sacks: list[bytes] = []
        self._waits: dict[int, Batch] = {}
        self.last_read = time.monotonic()
        self.partial_since: float | None = None
        self._received_at = self.connected_at

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
            log.warning("closing %s (%s): MongoDB unavailable: %s", self.remote_addr, self.imei, exc)
        except Exception:
            log.exception("session %s (%s) failed", self.remote_addr, self.imei)
        finally:
            self._finish()

    def _read_loop(self) -> None:
        # No socket timeout: gevent would arm and disarm a timer around every recv. The gateway's
        # reaper checks `last_read` and `partial_since` instead (see `expired()`).
        while self.closing is None:
            try:
                n = self.sock.recv_into(_RECV_BUFFER)
            except OSError as exc:
                if self.closing is None:
                    self.closing = f"socket error: {exc}"
                return
            if not n:
                self.closing = self.closing or "closed by peer"
                return
            self.last_read = time.monotonic()
            # The buffer is shared by all sessions: copy out before anything can switch greenlets.
            self._framer.feed(_RECV_VIEW[:n])
            self._received_at = utcnow()  # one clock read per read, not per message
            if self._drain():
                self.partial_since = self.last_read if self._framer.pending else None
            elif self.partial_since is None:
                self.partial_since = self.last_read  # a slowloris trickles bytes into one frame
            self._acknowledge()

    def expired(self, now: float) -> str | None:
        """Why this session should be closed now (idle, or a frame that never ends), or None."""
        idle = self.settings.IDLE_TIMEOUT_S
        if now - self.last_read > idle:
            return f"idle for {idle:.0f}s"
        frame_timeout = self.settings.FRAME_TIMEOUT_S
        if self.partial_since is not None and now - self.partial_since > frame_timeout:
            return f"frame not completed within {frame_timeout:.0f}s"  # `_finish()` archives its bytes
        return None

    def _drain(self) -> int:
        completed = 0
        while self.closing is None:
            try:
                frame = self._framer.next_frame()
            except ProtocolError as exc:
                oversize = isinstance(exc, FrameTooLong)
                what = "oversize frame" if oversize else "unframeable data"
                # Anything but an oversize text frame is a HEX frame gone wrong: archive it as hex.
                raw = exc.frame.decode("latin-1") if oversize else exc.frame.hex()
                self._archive(raw, "other", "invalid", f"{what}: {exc.reason}")
                self._close_for(f"{what}: {exc.reason}")
                # The archived first MAX_FRAME_BYTES stand for the rest: the cap bounds what it costs.
                self._framer = Framer(self.settings.MAX_FRAME_BYTES)
                break
            if frame is None:
                break
            completed += 1
            self._handle(frame)
        return completed

    def _handle(self, frame: Frame) -> None:
        if frame.binary:
            # HEX mode (spec 1.7) is not decoded yet; archive it so nothing is lost and carry on.
            self._archive(frame.data.hex(), "other", "unknown_type",
                          "HEX frame not decoded; set Protocol Format 0 (ASCII) with AT+GTSRI")
            return
        line = frame.text
        try:
            message = parse(line)
        except ProtocolError as exc:
            log.info("invalid frame from %s: %s", self.remote_addr, exc)
            batch = self._archive(line, _guess_kind(line), "invalid", exc.reason)
            count = _count_of(line)
            if self.imei is not None and count is not None:
                self._queue_sack(count, [batch])  # it is stored (raw): a resend would not improve it
            return
        imei = message.imei
        if imei is not None and self.imei is None and not self._bind(imei, message):
            return
        if imei is not None and imei != self.imei:
            self._archive(line, message.kind, "rejected", f"IMEI {imei} on a connection bound to {self.imei}", imei=imei)
            return
        if self.imei is None:
            self._archive(line, message.kind, "unknown_type" if message.kind == "other" else "invalid",
                          "no IMEI yet on this connection")
            return
        self._store(message)

    def _bind(self, imei: str, message: Message) -> bool:
        """Bind the connection to the IMEI of its first frame (there is no login message)."""
        # MongoDB calls run many frames deep. Made from this long-lived greenlet they would leave
        # its stack and frame memory grown for the whole connection; a short-lived greenlet
        # takes that depth and gives it back (measured: 15.4 -> 12.4 KB of RSS per connection).
        allowed, reason, password = off_stack(self.gateway.vehicles.admit, imei)
        if not allowed:
            log.warning("refused %s from %s: %s", imei, self.remote_addr, reason)
            self._archive(message.raw, message.kind, "rejected", reason, imei=imei)
            self._close_for(f"refused: {reason}")
            return False
        self.imei = imei
        self.password = password
        self.gateway.device_online(self)
        return True

    def _store(self, message: Message) -> None:
        # Dispatch on the `kind` class attribute: isinstance() on pydantic models goes through
        # ABCMeta and costs about a microsecond a call, several times per message.
        kind = message.kind
        received_at = self._received_at
        unknown = kind == "other"
        batches = [self._archive(message.raw, kind, "unknown_type" if unknown else "ok",
                                 f"unknown message type {message.type}" if unknown else None, at=received_at)]
        if kind == "report":
            report: Report = message  # type: ignore[assignment]
            writer = self.gateway.writer
            for doc in position_docs(report, received_at):
                batches.append(writer.put(POSITIONS, doc))
            event = event_doc(report, received_at)
            if event is not None:
                batches.append(writer.put(EVENTS, event))
            self.gateway.device_report(self, report, received_at)
        elif kind == "heartbeat":
            self.send(f"+SACK:GTHBD,{message.protocol_version},{message.count}$".encode(), "sack")
        elif kind == "ack":
            self.gateway.device_ack(self, message)  # type: ignore[arg-type]
        fields: dict[str, Any] = {}
        version = message.protocol_version
        if version and version != self.protocol_version:
            self.protocol_version = fields["protocol_version"] = version
        if fields or kind != "report":  # a report already noted its own state
            self.gateway.devices.note(self.imei, received_at, fields)  # type: ignore[arg-type]
        count = message.count
        # A heartbeat already had its own reply, which echoes its count.
        if self.sack_enabled and count is not None and kind != "heartbeat":
            self._queue_sack(count, batches)

    # --- acknowledgements: after the data is durable ---

    def _queue_sack(self, count: str, batches: list[Batch]) -> None:
        self._sacks.append(f"+SACK:{count}$".encode())
        for batch in batches:
            self._waits[id(batch)] = batch

    def _acknowledge(self) -> None:
        if not self._sacks:
            return
        for batch in self._waits.values():
            batch.done.wait()
        sacks, self._sacks, self._waits = self._sacks, [], {}
        self.send(b"".join(sacks), "sack", archive_each=sacks)

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
        at = utcnow()
        for frame in archive_each or [data]:
            self._archive(frame.decode("latin-1").rstrip("$"), kind, "ok", direction="out", at=at)

    # --- the archive ---

    def _archive(self, raw: str, kind: ArchiveKind, status: ArchiveStatus, error: str | None = None, *,
                 imei: str | None = None, direction: str = "in", at: datetime | None = None) -> Batch:
        doc = archive_doc(imei=imei or self.imei, direction=direction, raw=raw, at=at or utcnow(), kind=kind,  # type: ignore[arg-type]
                          status=status, error=error, remote_addr=self.remote_addr, gateway_id=self.settings.GATEWAY_ID)
        return self.gateway.writer.put(MESSAGES, doc)

    def _archive_leftovers(self) -> None:
        """Keep what was read but never handled: frames still buffered when the session closed in
        the middle of a read (no SACK went out for them, so a tracker sends them again), and a
        frame that never ended (slow drip, a peer gone mid-frame, an idle close)."""
        why = self.closing or "session error"
        while True:
            try:
                frame = self._framer.next_frame()
            except ProtocolError as exc:
                raw = exc.frame.decode("latin-1") if isinstance(exc, FrameTooLong) else exc.frame.hex()
                self._archive(raw, "other", "invalid", f"{exc.reason}; connection closed: {why}")
                return
            if frame is None:
                break
            raw = frame.data.hex() if frame.binary else frame.text
            self._archive(raw, "other" if frame.binary else _guess_kind(raw), "rejected",
                          f"not handled: the connection closed ({why})")
        if self._framer.pending:
            raw = self._framer.peek().decode("latin-1")
            self._archive(raw, _guess_kind(raw), "invalid", f"incomplete frame when the connection closed: {why}")

    # --- closing ---

    def close(self, reason: str) -> None:
        """Ask the session to end (from any greenlet): the reader wakes up and finishes."""
        self._close_for(reason)

    def _close_for(self, reason: str) -> None:
        if self.closing is None:
            self.closing = reason
            log.info("closing %s (%s): %s", self.remote_addr, self.imei, reason)
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
        self._archive_leftovers()
        if self.imei is not None:
            try:
                self.gateway.device_offline(self)
            except PyMongoError as exc:
                log.warning("%s: could not mark the device offline (MongoDB unavailable): %s", self.imei, exc)
