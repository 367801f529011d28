"""What the command room needs of a tracker's connection, how it finds one, and who may speak for
a command: narrow interfaces that the transports satisfy without this room importing them (and
without them importing it).

V4.01 has no authentication: an `+ACK` carries only the IMEI, a 16-bit serial and a type, all of
which a stranger can copy or guess. What the gateway can trust is the link: a command records the
link it went out on (`sent_via`), and an answer counts only when it comes back on a link that
command could have reached (`link_refusal`). See docs/security.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from ..protocol.connection import ArchiveKind


class Link(Protocol):
    """A live connection to one tracker. `send` raises ConnectionError once the connection is gone;
    `closing` says why it can take nothing now (None while it can)."""

    @property
    def id(self) -> str: ...
    @property
    def transport(self) -> str: ...  # "tcp" | "udp" | "http"
    @property
    def remote_addr(self) -> str: ...
    @property
    def password(self) -> str | None: ...
    @property
    def connected_at(self) -> datetime: ...
    @property
    def closing(self) -> str | None: ...
    @property
    def imei(self) -> str | None: ...
    def send(self, data: bytes, kind: ArchiveKind) -> None: ...
    def set_sack(self, enabled: bool) -> None: ...


class Links(Protocol):
    def link(self, imei: str) -> Link | None: ...


def sent_via(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    """The link a `sent` command went out on. A command sent before the gateway recorded
    `sent_via` has only its `session_id`, which does not say whether that was a TCP connection or
    a UDP address: its `transport` is None (see `link_refusal`)."""
    via = doc.get("sent_via")
    if isinstance(via, Mapping):
        return via
    return {"transport": None, "session_id": doc.get("session_id"), "at": doc.get("sent_at")}


def trusted(link: Link) -> bool:
    """False for a UDP or HTTP packet that claims an IMEI which is live on TCP: it speaks for no
    command (`gateway.packet.PacketPeer.trusted`). A TCP connection was admitted: trusted."""
    return getattr(link, "trusted", True) is not False


def to_ms(at: datetime) -> datetime:
    """BSON datetimes keep milliseconds: compare a time of this process with a stored one cut alike."""
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def link_refusal(via: Mapping[str, Any], link: Link, source: str, now: datetime, udp_ttl_s: float) -> str | None:
    """Why an answer that came on `link`, from the address `source`, cannot speak for a command sent
    as `via` (None: it can).

    - HTTP never: report mode 8 has no downlink, so no command ever went out that way.
    - Sent over TCP: the connection it went out on, or a later TCP connection of the tracker (one
      that opened after the command was sent: the first one has ended, or was taken over, and a
      tracker that lost its link answers on its next one). Never a datagram or a request.
    - Sent by UDP: a datagram from the very address it was sent to, within `udp_ttl_s`.
    - Sent before the gateway recorded the link (`transport` None, a command left `sent` by an older
      version): any link the gateway trusts, a TCP connection or a UDP datagram from a peer that is
      not an impostor of a TCP tracker. Its link is lost, so it is judged as well as can be: refusing
      it would throw away the real ACK of every such UDP command after an upgrade.
    """
    transport = link.transport
    if transport == "http":
        return "an HTTP request never acknowledges a command (report mode 8 has no downlink)"
    sent = via.get("transport")
    if sent is None:
        if transport == "tcp" or (transport == "udp" and trusted(link)):
            return None
        return f"the tracker is connected over TCP; a {transport.upper()} packet cannot answer its commands"
    at = via.get("at")
    if sent == "tcp":
        if transport != "tcp":
            return f"it went out over TCP; a {transport.upper()} packet cannot answer it"
        if link.id == via.get("session_id"):
            return None
        if isinstance(at, datetime) and to_ms(link.connected_at) >= at:
            return None
        return "it went out on another TCP connection of this tracker, opened after this one"
    if sent == "udp":
        if transport != "udp":
            return f"it went out by UDP; a {transport.upper()} link cannot answer it"
        if source != via.get("address"):
            return f"it went out by UDP to {via.get('address')}"
        if not isinstance(at, datetime) or (now - at).total_seconds() > udp_ttl_s:
            return f"it went out by UDP more than {udp_ttl_s:.0f}s before"
        return None
    return f"it went out over {sent!r}, which cannot be judged"
