"""Trackers without a connection: a UDP datagram or an HTTP GET request is one packet of frames.

Each packet goes through a fresh protocol core (a packet carries whole frames) and the same
storage as TCP. `PacketPeer` is what the gateway remembers of such a tracker between packets: its
last address, when it was last heard, and the SACK switch; it is also the command room's link to
it (UDP only: a command goes to the last address while that address is fresh).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Protocol

from ..protocol.connection import NEED_DATA, Admit, Connection, Received
from .session import Durable, MessageHooks, Sink

log = logging.getLogger(__name__)

Transport = str  # "udp" | "http"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class PacketPeer:
    """A connectionless tracker as the gateway knows it; a command `Link` for UDP."""

    __slots__ = ("id", "imei", "password", "connected_at", "address", "remote_addr", "transport", "last_seen",
                 "sack_enabled", "trusted", "_send", "_sink", "_fresh_s")

    def __init__(self, imei: str, address: tuple[str, int], transport: Transport, sack_enabled: bool,
                 send: Callable[[bytes, tuple[str, int]], None] | None, sink: Sink, fresh_s: float,
                 trusted: bool = True) -> None:
        self.id = uuid.uuid4().hex
        self.imei = imei
        self.password: str | None = None
        self.connected_at = utcnow()
        self.address = address
        self.remote_addr = f"{address[0]}:{address[1]}"
        self.transport = transport
        self.last_seen = time.monotonic()
        self.sack_enabled = sack_enabled
        # False: a packet that claims an IMEI live on TCP. Its frames are stored, but it speaks for
        # neither the device's state nor its commands.
        self.trusted = trusted
        self._send = send
        self._sink = sink
        self._fresh_s = fresh_s

    def heard(self, address: tuple[str, int]) -> bool:
        """A packet arrived from `address`; True when the address changed."""
        self.last_seen = time.monotonic()
        if address == self.address:
            return False
        self.address, self.remote_addr = address, f"{address[0]}:{address[1]}"
        return True

    @property
    def closing(self) -> str | None:
        """Why a command cannot go out now (the command room waits for the next packet), or None."""
        if self._send is None:
            return f"{self.transport}: the tracker cannot be reached between its requests"
        if time.monotonic() - self.last_seen > self._fresh_s:
            return f"address {self.remote_addr} not heard from for {self._fresh_s:.0f}s"
        return None

    def send(self, data: bytes, kind: str) -> None:
        reason = self.closing
        if reason is not None or self._send is None:
            raise ConnectionError(reason)
        try:
            self._send(data, self.address)
        except OSError as exc:
            raise ConnectionError(f"send to {self.remote_addr} failed: {exc}") from None
        self._sink.sent([data], kind, self.imei, self.remote_addr, utcnow())  # type: ignore[arg-type]

    def set_sack(self, enabled: bool) -> None:
        self.sack_enabled = enabled


class PacketPresence(Protocol):
    """Who may send, and who is heard (`server.Gateway`)."""

    def check(self, imei: str, source: str | None = None,
              known_type: bool = True) -> tuple[str | None, str | None]: ...  # (why refused, command password)
    def heard(self, imei: str, address: tuple[str, int], transport: Transport, password: str | None,
              send: Callable[[bytes, tuple[str, int]], None] | None) -> PacketPeer: ...


@dataclass
class Outcome:
    """What a packet produced: replies to send at once, SACKs to send once `batches` are durable."""

    events: list[Received] = field(default_factory=list)
    replies: list[bytes] = field(default_factory=list)
    sacks: list[bytes] = field(default_factory=list)
    batches: list = field(default_factory=list)  # list[Batch]
    settling: list[Durable] = field(default_factory=list)  # what the packet did to commands, being written
    peer: PacketPeer | None = None

    @property
    def refused(self) -> str | None:
        return next((e.error for e in self.events if e.status == "rejected" and e.close), None)

    @property
    def invalid(self) -> str | None:
        return next((e.error for e in self.events if e.status in ("invalid", "rejected")), None)


def handle_packet(data: bytes, address: tuple[str, int], transport: Transport, *, max_frame_bytes: int,
                  sack_default: bool, presence: PacketPresence, sink: Sink, hooks: MessageHooks,
                  send: Callable[[bytes, tuple[str, int]], None] | None) -> Outcome:
    """Feed one packet through a fresh core, store what it carried, and say what to answer."""
    remote_addr = f"{address[0]}:{address[1]}"
    received_at = utcnow()  # the packet was read just now: its frames' time, whatever handling takes
    core = Connection(max_frame_bytes, sack_enabled=sack_default)
    core.receive_data(data)
    out = Outcome()
    while True:
        event = core.next_event()
        if event is NEED_DATA:
            break
        if isinstance(event, Admit):
            reason, password = presence.check(event.imei, address[0], event.known_type)
            if reason is not None:
                event = core.refused(reason)
            else:
                out.peer = presence.heard(event.imei, address, transport, password, send)
                core.sack_enabled = out.peer.sack_enabled
                event = core.admitted()
        assert isinstance(event, Received)
        out.events.append(event)
        if event.reply is not None:
            out.replies.append(event.reply)
        if event.sack is not None:
            out.sacks.append(event.sack)
        if event.close is not None:
            break
    out.events += core.leftovers(f"end of the {transport} packet")
    trusted = out.peer is None or out.peer.trusted
    out.batches = sink.record(out.events, remote_addr, received_at, device_state=trusted, replies=send is not None)
    if out.peer is not None:
        # Every ACK goes to the command room, trusted or not: it alone knows whether it claims a
        # command, and records who tried (`ack_rejected`). The link rule keeps it from counting.
        for event in out.events:
            message = event.message
            if message is not None and event.status == "ok":
                settled = None
                if message.kind == "ack":
                    settled = hooks.ack(out.peer, message, remote_addr)  # type: ignore[arg-type]
                elif message.kind == "report":
                    settled = hooks.report(out.peer, message, remote_addr, received_at)  # type: ignore[arg-type]
                if settled is not None:
                    out.settling.append(settled)
    return out
