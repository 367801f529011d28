"""The per-connection protocol core, in the spirit of h11's `Connection`: fed bytes, it says what
happened. It does no I/O and knows no database.

It owns what the GV50 protocol decides for one connection:
- framing (ASCII and HEX) within the frame-length bound, and parsing;
- the IMEI binding rule: there is no login message, the first IMEI a connection sends binds it,
  once the caller has admitted it (`Admit` -> `admitted()` / `refused()`); a frame that names
  another IMEI afterwards is rejected;
- the replies: a heartbeat's `+SACK:GTHBD` at once, and a `+SACK:<count>$` that the caller sends
  only after everything the message produced is stored (HEX frames get the same ASCII SACK with
  the count as 4 hex digits, spec 1.5). With SACK on, every frame that has a count and comes on
  a bound connection is SACKed once archived, whether it parsed, is of a type we do not know, or
  did not decode (a resend would not improve it, and an unanswered message is resent forever):
  `_sack` decides it. Never SACKed: a frame whose IMEI is refused or is not the connection's, and
  a frame that ends the connection (too long, unframeable);
- what the archive records for a frame that is not a good message (its kind, status and reason),
  and what is left in the buffer when the connection ends.

Usage: `receive_data(bytes)`, then call `next_event()` until it returns `NEED_DATA`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

from .errors import FrameTooLong, ProtocolError
from .framing import Frame, Framer
from .hex import head_imei, hex_crc_ok, parse_hex, tail_count
from .messages import Message
from .parser import parse, trailing_count

ArchiveKind = Literal["report", "ack", "heartbeat", "command", "sack", "other"]
ArchiveStatus = Literal["ok", "unknown_type", "invalid", "rejected"]
ProtocolFormat = Literal["ascii", "hex"]


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


class LocalProtocolError(RuntimeError):
    """The caller used the core wrongly (a bug here, not something the tracker did)."""


@dataclass(frozen=True, slots=True)
class Admit:
    """The connection's first IMEI. Answer with `admitted()` or `refused(reason)` before asking
    for the next event; the frame that carried it comes back from that call. `known_type`: the
    frame is a message of a type we know (a connectionless transport lets only such a frame
    register a new IMEI)."""

    imei: str
    known_type: bool = True


@dataclass(frozen=True, slots=True)
class Received:
    """One frame from the tracker, as the archive records it, and what to do about it.

    `message` is set when the frame parsed (`ok`, or `unknown_type` for a type we do not know):
    store it. `reply` goes out at once; `sack` only after everything this frame produced is
    stored. `close`: the connection must end after this frame is archived (and why)."""

    raw: str
    kind: ArchiveKind
    status: ArchiveStatus
    imei: str | None
    message: Message | None = None
    error: str | None = None
    reply: bytes | None = None
    sack: bytes | None = None
    close: str | None = None
    device: dict[str, Any] | None = None  # device facts that changed with this frame (version, format)
    crc_ok: bool = True  # a HEX frame's CRC matched (kept either way; see `_frame`)


Event = Admit | Received | _NeedData


def guess_kind(line: str) -> ArchiveKind:
    """The archive kind of a text frame that did not parse."""
    if line.startswith(("+RESP:", "+BUFF:")):
        return "report"
    if line.startswith("+ACK:GTHBD"):
        return "heartbeat"
    if line.startswith("+ACK:"):
        return "ack"
    return "other"


def count_of(line: str) -> str | None:
    """The count number (last field) of a text frame that did not parse, if it looks like one."""
    return trailing_count(line.rsplit(",", 1)[-1].strip())


def imei_in(line: str) -> str | None:
    """The IMEI a text frame that did not parse names (field 2), for the archive, if it looks like one."""
    fields = line.split(",", 3)
    imei = fields[2].strip() if len(fields) > 3 else ""
    return imei if len(imei) == 15 and imei.isdigit() else None


def sack(count: str) -> bytes:
    return f"+SACK:{count}$".encode("ascii")


def heartbeat_reply(protocol_version: str | None, count: str | None) -> bytes:
    # Spec 1.4: the version may be left empty; echoing it costs nothing and helps a log reader. A HEX
    # heartbeat whose mask leaves out the count gets an empty one: there is nothing to echo.
    return f"+SACK:GTHBD,{protocol_version or ''},{count or ''}$".encode("ascii")


class Connection:
    # Ten thousand of these live at once.
    __slots__ = ("_framer", "imei", "protocol_version", "protocol_format", "sack_enabled", "_held", "closed",
                 "_answered")

    def __init__(self, max_frame_bytes: int = 4096, *, sack_enabled: bool = False,
                 protocol_version: str | None = None) -> None:
        self._framer = Framer(max_frame_bytes)
        self.imei: str | None = None
        # What the tracker last said its version was (its device record, when the caller knows it):
        # a HEX frame whose masks leave the version out gets this one, and None without it.
        self.protocol_version = protocol_version
        self.protocol_format: ProtocolFormat | None = None
        self.sack_enabled = sack_enabled
        self._held: tuple[str, Message, ProtocolFormat, bool] | None = None  # the frame awaiting admission
        self.closed: str | None = None
        # Heartbeats answered ahead of their turn, by line: the same line twice (a resend) is two answers.
        self._answered: dict[str, int] | None = None

    # --- bytes in ---

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed is not None:
            return  # what arrives after a fatal frame is not read: the connection is ending
        self._framer.feed(data)

    @property
    def pending(self) -> int:
        """Bytes held that do not make a whole frame yet."""
        return self._framer.pending

    def answer_ahead(self, data: bytes) -> tuple[list[bytes], int]:
        """Replies for this connection's ASCII heartbeats in `data`, bytes the caller read ahead of
        what it has fed (while it waits for storage). Each is answered once: when its frame comes
        through `next_event()` later, it has no `reply`. Returns the replies and how many bytes of
        `data` were looked at (a heartbeat cut at the end is looked at again with more bytes)."""
        replies: list[bytes] = []
        done = 0
        while (start := data.find(b"+ACK:GTHBD,", done)) >= 0:
            end = data.find(b"$", start)
            if end < 0:
                return replies, start
            line = data[start:end].decode("latin-1")
            done = end + 1
            try:
                message = parse(line)
            except ProtocolError:
                continue  # its turn will archive it as invalid
            if message.kind == "heartbeat" and self.imei is not None and message.imei == self.imei:
                answered = self._answered
                if answered is None:
                    answered = self._answered = {}
                if sum(answered.values()) < 64:  # bounded: past that, heartbeats just wait their turn
                    answered[line] = answered.get(line, 0) + 1
                    replies.append(heartbeat_reply(message.protocol_version, message.count))
        return replies, max(done, len(data) - len(b"+ACK:GTHBD,"))

    # --- events out ---

    def next_event(self) -> Event:
        if self._held is not None:
            raise LocalProtocolError("answer Admit with admitted() or refused() first")
        if self.closed is not None:
            return NEED_DATA
        try:
            frame = self._framer.next_frame()
        except ProtocolError as exc:
            return self._unframeable(exc)
        if frame is None:
            return NEED_DATA
        return self._frame(frame)

    def admitted(self) -> Received:
        """The IMEI of the `Admit` may be served: the connection is bound to it."""
        if self._held is None:
            raise LocalProtocolError("no Admit is waiting")
        raw, message, fmt, crc_ok = self._held
        self._held = None
        self.imei = message.imei
        return self._accept(raw, message, fmt, crc_ok)

    def refused(self, reason: str) -> Received:
        """The IMEI of the `Admit` may not be served: its frame is archived, the connection ends."""
        if self._held is None:
            raise LocalProtocolError("no Admit is waiting")
        raw, message, _, crc_ok = self._held
        self._held = None
        self.closed = f"refused: {reason}"
        return Received(raw, message.kind, "rejected", message.imei, error=reason, close=self.closed, crc_ok=crc_ok)

    def leftovers(self, why: str) -> list[Received]:
        """What was read but never handled, for the archive, when the connection ends: whole frames
        still buffered (they got no SACK, so the tracker sends them again) and a frame that never
        ended (slow drip, a peer gone mid-frame, an idle close)."""
        out: list[Received] = []
        framer = self._framer
        if self._held is not None:
            raw, message, _, crc_ok = self._held
            self._held = None
            out.append(Received(raw, message.kind, "rejected", message.imei,
                                error=f"not handled: the connection closed ({why})", crc_ok=crc_ok))
        while True:
            try:
                frame = framer.next_frame()
            except ProtocolError as exc:
                raw = _error_raw(exc)
                out.append(Received(raw, "other", "invalid", self.imei,
                                    error=f"{exc.reason}; connection closed: {why}"))
                return out
            if frame is None:
                break
            raw = frame.data.hex().upper() if frame.binary else frame.text
            out.append(Received(raw, "other" if frame.binary else guess_kind(raw), "rejected", self.imei,
                                error=f"not handled: the connection closed ({why})",
                                crc_ok=hex_crc_ok(frame.data) if frame.binary else True))
        if framer.pending:
            raw = framer.peek().decode("latin-1")
            out.append(Received(raw, guess_kind(raw), "invalid", self.imei,
                                error=f"incomplete frame when the connection closed: {why}"))
            framer.clear()
        return out

    # --- inside ---

    def _unframeable(self, exc: ProtocolError) -> Received:
        what = "oversize frame" if isinstance(exc, FrameTooLong) else "unframeable data"
        self.closed = f"{what}: {exc.reason}"
        # The archived first MAX_FRAME_BYTES stand for the rest: the cap bounds what it costs.
        self._framer.clear()
        return Received(_error_raw(exc), "other", "invalid", self.imei, error=self.closed, close=self.closed)

    def _frame(self, frame: Frame) -> Received | Admit:
        fmt: ProtocolFormat = "hex" if frame.binary else "ascii"
        crc_ok = True
        if frame.binary:
            raw = frame.data.hex().upper()
            # V4.01's own examples do not all carry the CRC that spec 1.7 computes: a mismatch is
            # counted, and the frame kept, until a real device shows which reading is right. Every
            # HEX frame is checked, whatever becomes of it.
            crc_ok = hex_crc_ok(frame.data)
            try:
                # A HEX frame may leave out the IMEI or the device type (its masks say): what this
                # connection already knows fills them in.
                message = parse_hex(frame.data, imei=self.imei, protocol_version=self.protocol_version)
            except ProtocolError as exc:
                # Stored raw with its reason, and SACKed when its mask says where the count is,
                # unless its head names another IMEI than the connection's (as for ASCII below).
                # A frame whose IMEI cannot be read (a device name in its place, or no unique ID:
                # the masks allow both) is SACKed: it came on this bound connection, from the
                # tracker that holds it, and unanswered it would be resent on every reconnect.
                named = head_imei(frame.data)
                ack = self._sack(tail_count(frame.data)) if named is None or named == self.imei else None
                return Received(raw, "other", "invalid", self.imei or named, error=f"HEX frame: {exc.reason}",
                                sack=ack, crc_ok=crc_ok)
        else:
            raw = frame.text
            try:
                message = parse(raw)
            except ProtocolError as exc:
                # It is stored (raw, with its reason): a resend would not improve it, so it is SACKed,
                # unless it names another IMEI than the connection's.
                named = imei_in(raw)
                ack = self._sack(count_of(raw)) if named is None or named == self.imei else None
                return Received(raw, guess_kind(raw), "invalid", self.imei or named, error=exc.reason, sack=ack)
        imei = message.imei
        if imei is not None and self.imei is None:
            self._held = (raw, message, fmt, crc_ok)
            return Admit(imei, message.kind != "other")
        if imei is not None and imei != self.imei:
            return Received(raw, message.kind, "rejected", imei,
                            error=f"IMEI {imei} on a connection bound to {self.imei}", crc_ok=crc_ok)
        if self.imei is None:
            return Received(raw, message.kind, "unknown_type" if message.kind == "other" else "invalid", None,
                            error="no IMEI yet on this connection", crc_ok=crc_ok)
        return self._accept(raw, message, fmt, crc_ok)

    def _sack(self, count: str | None) -> bytes | None:
        """The `+SACK` of a frame archived on this connection: with SACK on, once bound, when the
        frame has a count. The one place that decides it."""
        return sack(count) if self.sack_enabled and self.imei is not None and count is not None else None

    def _accept(self, raw: str, message: Message, fmt: ProtocolFormat, crc_ok: bool = True) -> Received:
        kind = message.kind
        device: dict[str, Any] | None = None
        version = message.protocol_version
        if version and version != self.protocol_version:
            self.protocol_version = version
            device = {"protocol_version": version}
        if fmt != self.protocol_format:
            self.protocol_format = fmt
            device = {**(device or {}), "config.protocol_format": fmt}
        count = message.count
        reply = ack = None
        if kind == "heartbeat":
            answered = self._answered
            if answered and raw in answered:  # answered when it was read ahead
                if answered[raw] > 1:
                    answered[raw] -= 1
                else:
                    del answered[raw]
            else:
                reply = heartbeat_reply(version or self.protocol_version, count)
        else:
            ack = self._sack(count)  # a heartbeat's own reply already echoes its count
        if kind == "other":
            return Received(raw, kind, "unknown_type", self.imei, message, f"unknown message type {message.type}",
                            sack=ack, device=device, crc_ok=crc_ok)
        return Received(raw, kind, "ok", self.imei, message, reply=reply, sack=ack, device=device, crc_ok=crc_ok)


def _error_raw(exc: ProtocolError) -> str:
    # An oversize text frame is archived as text; anything else unframeable is a HEX frame gone
    # wrong, archived as hex (messages.raw promises hex for binary).
    return exc.frame.decode("latin-1") if isinstance(exc, FrameTooLong) else exc.frame.hex().upper()
