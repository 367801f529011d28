"""UDP (report modes 4 and 6): each datagram is a packet of frames, ASCII or HEX, served like TCP.

Replies (the heartbeat's `+SACK:GTHBD`, and `+SACK:<count>$` once stored with SACK_MODE=all) go
back to the datagram's source. A UDP source address costs nothing to forge, so the gateway never
answers a datagram with more bytes than it carried: it cannot be used to amplify an attack.
"""

from __future__ import annotations

import logging
import socket as pysocket

from gevent import socket
from gevent.pool import Pool
from gevent.server import DatagramServer
from pymongo.errors import PyMongoError

from ..config import Settings
from ..storage.ingest import Ingest
from .packet import handle_packet, utcnow
from .trackers import Trackers

log = logging.getLogger(__name__)
RECEIVE_BUFFER = 4 << 20


class UdpServer:
    def __init__(self, settings: Settings, ingest: Ingest, trackers: Trackers) -> None:
        self.settings = settings
        self.ingest = ingest
        self.trackers = trackers
        self.datagrams = 0
        self._server: DatagramServer | None = None

    def listen(self) -> tuple[str, int]:
        s = self.settings
        sock = socket.socket(socket.AF_INET6 if ":" in s.GATEWAY_HOST else socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if s.REUSE_PORT and hasattr(pysocket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, pysocket.SO_REUSEPORT, 1)
        # A burst of datagrams (a reconnect storm, or a flood) waits in the socket's buffer; a bigger
        # one drops fewer of them (the kernel caps it at net.core.rmem_max).
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.bind((s.GATEWAY_HOST, s.GATEWAY_PORT))
        self._server = DatagramServer(sock, self._handle, spawn=Pool(s.UDP_WORKERS))
        self._server.start()
        address = sock.getsockname()[:2]
        log.info("listening for UDP trackers on %s:%d", address[0], address[1])
        return address

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(timeout=self.settings.SHUTDOWN_GRACE_S)

    def _send(self, data: bytes, address: tuple[str, int]) -> None:
        assert self._server is not None
        self._server.sendto(data, address)

    def _handle(self, data: bytes, address: tuple[str, int]) -> None:
        self.datagrams += 1
        try:
            out = handle_packet(data, address, "udp", max_frame_bytes=self.settings.MAX_FRAME_BYTES,
                                sack_default=self.settings.SACK_MODE == "all", presence=self.trackers,
                                sink=self.ingest, hooks=self.trackers.commands, send=self._send)
        except PyMongoError as exc:
            # Admission needs MongoDB; without it nothing is SACKed and the tracker sends again.
            log.warning("UDP datagram from %s:%d dropped: MongoDB unavailable: %s", address[0], address[1], exc)
            return
        imei = out.peer.imei if out.peer is not None else None
        budget = len(data)
        budget -= self._reply(out.replies, address, budget, imei)
        for settled in out.settling:  # what it did to a command is written first, SACK or not
            settled.done.wait()
        if out.sacks:
            for batch in out.batches:
                batch.done.wait()
            self._reply(out.sacks, address, budget, imei)

    def _reply(self, frames: list[bytes], address: tuple[str, int], budget: int, imei: str | None) -> int:
        """Send what fits in `budget` bytes; returns the bytes sent."""
        sent = []
        for frame in frames:
            if len(frame) > budget:
                log.info("not answering %s:%d with more bytes than it sent", address[0], address[1])
                break
            try:
                self._send(frame, address)
            except OSError as exc:
                log.info("UDP reply to %s:%d failed: %s", address[0], address[1], exc)
                break
            budget -= len(frame)
            sent.append(frame)
        if sent:
            self.ingest.sent(sent, "sack", imei, f"{address[0]}:{address[1]}", utcnow())
        return sum(map(len, sent))
