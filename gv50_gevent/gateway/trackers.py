"""Who may send to us, and who is connected, over every transport: one room, one job.

- Admission: may this IMEI be served (`vehicles`, AUTO_REGISTER)? The answer is remembered for
  ADMISSION_CACHE_S, so trackers that reconnect for every report (short TCP connections), send
  datagrams or HTTP requests cost no MongoDB round trip each time. Over UDP and HTTP a new IMEI
  is registered only for a real message, at most UDP_NEW_IMEI_PER_MIN per source network (/24,
  /64) and UDP_NEW_IMEI_TOTAL_PER_MIN from all sources together.
- Presence: one holder per IMEI in this process (a TCP session, or a UDP tracker's `PacketPeer`);
  `devices.online` and friends. A tracker that keeps a TCP connection is online while it holds it.
  A tracker that does not (UDP, short TCP connections, HTTP) is online while it keeps sending and
  goes offline after UDP_OFFLINE_AFTER_S of silence, so its state does not flap with every report.
  A datagram or request for a tracker live on TCP, here or at another gateway on the same port
  (`devices` and the liveness records say), is untrusted.
- The command room finds a tracker's live link here (`link(imei)`).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

import gevent
from pymongo.errors import PyMongoError

from ..config import Settings
from ..logs import about
from ..protocol import Ack, Report
from ..storage.devices import NOT_REGISTERED, Devices, HeldOnTcp, Vehicles, utcnow
from ..storage.ingest import Ingest
from .packet import PacketPeer, Transport
from .registry import ConnectionRegistry
from .session import DeviceSession, Durable

log = logging.getLogger(__name__)
T = TypeVar("T")

# Without a connection, the transport a tracker is known by (`devices.transport`).
CONNECTIONLESS = ("udp", "tcp_short", "http")
CONFLICT_EVERY_S = 60.0  # one imei_conflict event per IMEI per minute at most
# A connection the tracker itself closes this soon, without a heartbeat, is a short one (report
# modes 1 and 2 connect for each report and close). A long connection lives for hours.
SHORT_CONNECTION_S = 60.0
# Source addresses the new-IMEI limit remembers at most (UDP_NEW_IMEI_PER_MIN).
MAX_REGISTERING_SOURCES = 10_000
# A tracker found live on TCP at another gateway is taken as such this long without asking again:
# a flood of forged datagrams for its IMEI costs no MongoDB round trip each.
HELD_ELSEWHERE_S = 5.0


class CommandHooks(Protocol):
    """What the command room needs to hear of the trackers (`commands.service.CommandService`)."""

    def device_online(self, link: Any) -> None: ...
    def device_offline(self, link: Any) -> None: ...
    def report(self, link: Any, report: Report, source: str, received_at: datetime) -> Durable | None: ...
    def ack(self, link: Any, ack: Ack, source: str) -> Durable | None: ...


class NoCommands:
    def device_online(self, link: Any) -> None: ...
    def device_offline(self, link: Any) -> None: ...
    def report(self, link: Any, report: Report, source: str, received_at: datetime) -> Durable | None: ...
    def ack(self, link: Any, ack: Ack, source: str) -> Durable | None: ...


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


class Trackers:
    def __init__(self, settings: Settings, ingest: Ingest, devices: Devices, vehicles: Vehicles) -> None:
        self.settings = settings
        self.ingest = ingest
        self.devices = devices
        self.vehicles = vehicles
        self.commands: CommandHooks = NoCommands()
        self.registry: ConnectionRegistry[DeviceSession | PacketPeer] = ConnectionRegistry()
        self.peers: dict[str, PacketPeer] = {}  # UDP and HTTP trackers heard lately
        self._admitted: dict[str, tuple[float, str | None, str | None]] = {}  # imei -> (at, refused, password)
        self._short: dict[str, tuple[float, bool]] = {}  # imei -> (closed at, SACK) of a short TCP connection
        self._conflicts: dict[str, float] = {}
        self._elsewhere: dict[str, tuple[float, str, str]] = {}  # imei -> (at, address, gateway) live on TCP there
        self.new_imeis = NewImeiLimit(settings.UDP_NEW_IMEI_PER_MIN, total_per_minute=settings.new_imei_total_per_min)
        self.new_imei_refused = 0  # frames over UDP or HTTP refused for registering a new IMEI
        self.conflicts = 0  # packets that claimed an IMEI live on TCP here
        self._sweeper: gevent.Greenlet | None = None

    def start(self) -> None:
        self._sweeper = gevent.spawn(self._sweep_forever)

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.kill()

    def link(self, imei: str) -> DeviceSession | PacketPeer | None:
        """The tracker's live link here, if any (for the command room)."""
        return self.registry.get(imei)

    # --- admission ---

    def check(self, imei: str, source: str | None = None, known_type: bool = True) -> tuple[str | None, str | None]:
        """(why this IMEI is refused or None, its command password). Remembered for a while: an
        operator's change to `vehicles` takes effect within ADMISSION_CACHE_S.

        `source`: the address (IP) of a datagram or HTTP request, None for TCP. Over those, an
        unknown IMEI is registered (AUTO_REGISTER) only for a frame of a known type, and only
        UDP_NEW_IMEI_PER_MIN per source network and UDP_NEW_IMEI_TOTAL_PER_MIN in all (`NewImeiLimit`):
        random IMEIs in forged datagrams must not fill
        `vehicles` and `devices`. What is refused for that is not remembered: it depends on the
        source and the moment."""
        now = time.monotonic()
        known = self._admitted.get(imei)
        if known is not None and now - known[0] < self.settings.ADMISSION_CACHE_S:
            return known[1], known[2]
        if source is not None and self.settings.AUTO_REGISTER:
            allowed, reason, password = off_stack(self.vehicles.admit, imei, False)
            if not allowed and reason == NOT_REGISTERED:
                why = self._may_register(imei, source, known_type)
                if why is not None:
                    return why, None
                allowed, reason, password = off_stack(self.vehicles.admit, imei)
        else:
            allowed, reason, password = off_stack(self.vehicles.admit, imei)
        refused = None if allowed else (reason or "refused")
        if len(self._admitted) > 200_000:  # bounded: older answers are asked again
            self._admitted.clear()
        self._admitted[imei] = (now, refused, password)
        return refused, password

    def _may_register(self, imei: str, source: str, known_type: bool) -> str | None:
        """Why a datagram or request from `source` may not register `imei`, or None."""
        limit = self.settings.UDP_NEW_IMEI_PER_MIN
        why: str | None = None
        if not known_type:
            why = f"unknown IMEI {imei}: only a message of a known type registers a new tracker over UDP or HTTP"
        elif limit == 0:
            why = f"unknown IMEI {imei}: new trackers are not registered over UDP or HTTP (UDP_NEW_IMEI_PER_MIN=0)"
        else:
            why = self.new_imeis.take(source)
            if why is None:
                log.info("registering new IMEI %s, first heard from %s", imei, source, extra=about(imei, source))
                return None
        self.new_imei_refused += 1
        return why

    # --- TCP sessions (session.Presence) ---

    def admit(self, session: DeviceSession, imei: str) -> str | None:
        refused, password = self.check(imei)
        session.password = password
        return refused

    def online(self, session: DeviceSession) -> None:
        """The session is bound to its IMEI: it holds the tracker now."""
        imei = session.imei
        assert imei is not None
        old = self.registry.bind(imei, session)
        if old is not None and isinstance(old, DeviceSession):
            old.close(f"replaced by a new connection from {session.remote_addr}")
        short = self._short.pop(imei, None)
        if short is not None and old is None and time.monotonic() - short[0] < self.settings.UDP_OFFLINE_AFTER_S / 2:
            # A short-connection tracker (report modes 1, 2) back within its freshness window: it is
            # still online in `devices`, so this costs no MongoDB round trip, only a coalesced note.
            session.core.sack_enabled = short[1]
            self.devices.note(imei, session.connected_at, {
                "online": True, "gateway_id": self.settings.GATEWAY_ID, "session_id": session.id,
                "remote_addr": session.remote_addr})
            self.commands.device_online(session)
            return
        before = off_stack(self.devices.connected, imei, session.id, session.remote_addr, session.connected_at,
                           "tcp") or {}
        if isinstance(before.get("sack_enable"), bool):
            # An acknowledged set_server switched this tracker's SACK; it holds across reconnects.
            session.core.sack_enabled = before["sack_enable"]
        if session.core.protocol_version is None and isinstance(before.get("protocol_version"), str):
            # A HEX mask may leave the version out of every frame: the device record's is the one
            # its heartbeat replies echo (and what later frames without one are read with).
            session.core.protocol_version = before["protocol_version"]
        previous_addr = old.remote_addr if old is not None else (before.get("remote_addr") if before.get("online")
                                                                 else None)
        if previous_addr and previous_addr.rpartition(":")[0] != session.remote_host \
                and before.get("transport") not in CONNECTIONLESS:
            # The same IMEI from another address while the first connection is live: a cloned or
            # spoofed IMEI, or a tracker that moved networks. Worth an operator's look either way.
            self._conflict(imei, f"{imei} connected from {session.remote_addr} while live at {previous_addr} "
                                 f"({before.get('gateway_id') or self.settings.GATEWAY_ID})",
                           previous_addr, session.remote_addr)
        elif old is not None:
            log.info("%s reconnected from %s; closed its older connection", imei, session.remote_addr,
                     extra=session.about())
        self.commands.device_online(session)

    def offline(self, session: DeviceSession) -> None:
        imei = session.imei
        assert imei is not None
        if self.registry.unbind(imei, session):
            lived = (utcnow() - session.connected_at).total_seconds()
            if session.closing == "closed by peer" and not session.heartbeats and lived < SHORT_CONNECTION_S:
                # Closed by the tracker soon and without a heartbeat: report mode 1 or 2, which
                # connects for each report. It stays online until it falls silent (UDP_OFFLINE_AFTER_S).
                self._short[imei] = (time.monotonic(), session.core.sack_enabled)
                self.devices.note(imei, utcnow(), {"transport": "tcp_short"})
            else:
                self.devices.disconnected(imei, session.id, utcnow())
        self.commands.device_offline(session)

    # --- UDP and HTTP (packet.PacketPresence) ---

    def heard(self, imei: str, address: tuple[str, int], transport: Transport, password: str | None,
              send: Callable[[bytes, tuple[str, int]], None] | None) -> PacketPeer:
        """A packet from an admitted tracker: who it is, and how to reach it."""
        settings = self.settings
        sack_default = transport == "udp" and settings.SACK_MODE == "all"
        holder = self.registry.get(imei)
        remote_addr = f"{address[0]}:{address[1]}"
        if isinstance(holder, DeviceSession) and holder.closing is None:
            return self._untrusted(imei, address, transport, holder.remote_addr, settings.GATEWAY_ID)
        peer = self.peers.get(imei)
        now = time.monotonic()
        if peer is None or peer.transport != transport or now - peer.last_seen > settings.UDP_OFFLINE_AFTER_S / 2:
            # A new peer. Live on TCP at another gateway (several share the port: REUSE_PORT), it is
            # as untrusted as one live on TCP here: `devices` and the liveness records say so.
            elsewhere = self._elsewhere.get(imei)
            if elsewhere is not None and now - elsewhere[0] < HELD_ELSEWHERE_S:
                return self._untrusted(imei, address, transport, elsewhere[1], elsewhere[2])
            peer = PacketPeer(imei, address, transport, sack_default, send if transport == "udp" else None,
                              self.ingest, settings.UDP_ADDRESS_TTL_S)
            taken = off_stack(self._take, imei, peer, remote_addr, transport)
            if isinstance(taken, tuple):
                if len(self._elsewhere) > 100_000:  # bounded: older answers are asked again
                    self._elsewhere.clear()
                self._elsewhere[imei] = (now, *taken)
                return self._untrusted(imei, address, transport, *taken)
            before = taken or {}
            if transport == "udp" and isinstance(before.get("sack_enable"), bool):
                peer.sack_enabled = before["sack_enable"]
            self.peers[imei] = peer
            log.info("heard %s over %s from %s", imei, transport, remote_addr, extra=about(imei, remote_addr))
        elif peer.heard(address):
            # From a new address: the tracker may have moved to TCP at another gateway since (this
            # one is then a forger, or a clone), so the device is taken again, on the same terms.
            taken = off_stack(self._take, imei, peer, peer.remote_addr, transport)
            if isinstance(taken, tuple):
                del self.peers[imei]
                self.registry.unbind(imei, peer)
                self.commands.device_offline(peer)
                return self._untrusted(imei, address, transport, *taken)
        peer.password = password
        if transport == "udp":
            if self.registry.get(imei) is not peer:
                self.registry.bind(imei, peer)
            self.commands.device_online(peer)
        return peer

    def _untrusted(self, imei: str, address: tuple[str, int], transport: Transport, holder_addr: str,
                   holder_gateway: str) -> PacketPeer:
        """A datagram or request that claims an IMEI live on TCP (here or at another gateway): a
        clone or a forgery (a UDP source address costs nothing to forge). Its frames are archived
        and counted, flagged by the event, but it changes no device state, and its ACKs no command
        (the link rule); it is never the tracker's link."""
        self.conflicts += 1
        remote_addr = f"{address[0]}:{address[1]}"
        what = "a UDP datagram" if transport == "udp" else "an HTTP request"
        self._conflict(imei, f"{imei} sent {what} from {remote_addr} while connected over TCP from {holder_addr} "
                             f"({holder_gateway})", holder_addr, remote_addr)
        sack_default = transport == "udp" and self.settings.SACK_MODE == "all"
        return PacketPeer(imei, address, transport, sack_default, None, self.ingest, 0, trusted=False)

    def _take(self, imei: str, peer: PacketPeer, remote_addr: str,
              transport: Transport) -> dict[str, Any] | None | tuple[str, str]:
        """Mark a new UDP or HTTP peer online (`Devices.connected`, conditional), or, when a TCP
        connection at another gateway that is alive holds the device, (its address, its gateway)."""
        replacing: str | None = None
        holder: dict[str, Any] | None = None
        for _ in range(3):
            try:
                return self.devices.connected(imei, peer.id, remote_addr, peer.connected_at, transport, replacing)
            except HeldOnTcp:
                alive_since = utcnow() - timedelta(seconds=self.settings.GATEWAY_DEAD_AFTER_S)
                holder = self.devices.tcp_holder(imei, alive_since)
                if holder is not None and holder["alive"]:
                    break
                # Gone offline meanwhile (None), or its gateway stopped beating: its record is stale.
                replacing = holder.get("session_id") if holder is not None else None
        holder = holder or {}
        return str(holder.get("remote_addr") or "?"), str(holder.get("gateway_id") or "another gateway")

    # --- housekeeping ---

    def _conflict(self, imei: str, text: str, previous_addr: str, remote_addr: str) -> None:
        now = time.monotonic()
        if now - self._conflicts.get(imei, -CONFLICT_EVERY_S) < CONFLICT_EVERY_S:
            return
        self._conflicts[imei] = now
        log.warning(text, extra=about(imei, remote_addr))
        self.ingest.warning(imei, "imei_conflict", text, previous_addr=previous_addr, remote_addr=remote_addr)

    def _sweep_forever(self) -> None:
        interval = max(0.5, min(10.0, self.settings.UDP_OFFLINE_AFTER_S / 4))
        while True:
            gevent.sleep(interval)
            try:
                self.sweep()
            except PyMongoError as exc:
                log.warning("could not mark silent trackers offline now: %s", exc)

    def sweep(self) -> int:
        """Trackers without a connection that fell silent go offline; forget what is stale."""
        silent_s = self.settings.UDP_OFFLINE_AFTER_S
        now = time.monotonic()
        for imei, peer in list(self.peers.items()):
            if now - peer.last_seen > silent_s:
                del self.peers[imei]
                self.registry.unbind(imei, peer)
                self.commands.device_offline(peer)
        for table in (self._short, self._conflicts, self._elsewhere):
            for imei in [i for i, v in table.items() if now - (v[0] if isinstance(v, tuple) else v) > silent_s]:
                del table[imei]
        for imei in [i for i, v in self._admitted.items() if now - v[0] > self.settings.ADMISSION_CACHE_S]:
            del self._admitted[imei]
        return self.devices.mark_silent_offline(silent_s, CONNECTIONLESS)

    def stats(self) -> dict[str, int]:
        udp = sum(1 for p in self.peers.values() if p.transport == "udp")
        return {"udp": udp, "http": len(self.peers) - udp, "tcp_short_recent": len(self._short),
                "new_imei_refused": self.new_imei_refused, "imei_conflicts": self.conflicts}


class NewImeiLimit:
    """How many new IMEIs may be registered over UDP and HTTP: a token bucket per source network
    (`per_minute` full, refilled at `per_minute` a minute), and one for all sources together
    (`total_per_minute`): a source address costs nothing to forge, so a flood from ever new
    addresses meets the total. A source is its /24 (IPv4) or /64 (IPv6) network, what one host
    or one customer usually has: rotating the last bits of a forged address gains nothing.

    At most `max_sources` networks are remembered (a full bucket is the same as none, so those go
    first); while that many are all busy, a new one registers nothing: registering is rare, and
    the table (and `vehicles`) must not grow without end."""

    def __init__(self, per_minute: int, max_sources: int = MAX_REGISTERING_SOURCES,
                 clock: Callable[[], float] = time.monotonic, total_per_minute: int | None = None) -> None:
        self.per_minute = per_minute
        self.total_per_minute = 10 * per_minute if total_per_minute is None else total_per_minute
        self.max_sources = max_sources
        self._clock = clock
        self._sources: dict[str, tuple[float, float, float]] = {}  # network -> (tokens, at, when last logged)
        self._total = (float(self.total_per_minute), clock())  # (tokens, at) of all sources together
        self._total_logged = float("-inf")
        self._pruned_at = float("-inf")

    def __len__(self) -> int:
        return len(self._sources)

    def take(self, source: str) -> str | None:
        """Use one registration of `source`'s (an IP address); returns why it may not, or None."""
        now = self._clock()
        per_minute = self.per_minute
        network = source_network(source)
        entry = self._sources.get(network)
        if entry is None:
            if len(self._sources) >= self.max_sources and not self._prune(now):
                return f"{len(self._sources)} networks are registering new IMEIs at once; try again later"
            tokens, logged = float(per_minute), float("-inf")
        else:
            tokens = min(float(per_minute), entry[0] + (now - entry[1]) * per_minute / 60)
            logged = entry[2]
        total = self.total_per_minute
        total_tokens = min(float(total), self._total[0] + (now - self._total[1]) * total / 60)
        if tokens >= 1 and total_tokens >= 1:
            self._sources[network] = (tokens - 1, now, logged)
            self._total = (total_tokens - 1, now)
            return None
        self._total = (total_tokens, now)
        if tokens >= 1:  # this network may, all of them together may not
            self._sources[network] = (tokens, now, logged)
            if now - self._total_logged >= 60:
                log.warning("new IMEIs come faster than UDP_NEW_IMEI_TOTAL_PER_MIN=%d from all sources together; "
                            "the rest are archived as refused", total)
                self._total_logged = now
            return f"{total} new IMEIs were registered over UDP and HTTP in the last minute " \
                   f"(UDP_NEW_IMEI_TOTAL_PER_MIN={total})"
        if now - logged >= 60:
            log.warning("%s sends new IMEIs faster than UDP_NEW_IMEI_PER_MIN=%d; the rest are archived as refused",
                        network, per_minute)
            logged = now
        self._sources[network] = (tokens, now, logged)
        return f"{network} registered {per_minute} new IMEIs in the last minute (UDP_NEW_IMEI_PER_MIN={per_minute})"

    def _prune(self, now: float) -> bool:
        """Forget networks whose bucket is full again (at most once a second); True if room was made."""
        if now - self._pruned_at < 1.0:
            return False
        self._pruned_at = now
        per_minute = self.per_minute
        full = [source for source, (tokens, at, _) in self._sources.items()
                if tokens + (now - at) * per_minute / 60 >= per_minute]
        for source in full:
            del self._sources[source]
        return len(self._sources) < self.max_sources


def source_network(source: str) -> str:
    """The /24 (IPv4) or /64 (IPv6) network of an address, as text; anything else as it is."""
    try:
        address = ipaddress.ip_address(source)
    except ValueError:
        return source
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    prefix = 24 if address.version == 4 else 64
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))
