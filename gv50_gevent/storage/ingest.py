"""What a connection received, turned into stored documents and device state: one room, one job.

A transport hands over the core's `Received` events of one turn (`record`), the frames it sent
(`sent`) and the gateway's own warnings (`warning`). This room builds the `messages`,
`positions` and `events` documents, notes the device state (`devices`, coalesced), waits for
room in the write buffer (backpressure: the caller counts that wait as the gateway's, not the
tracker's) and returns the batches whose durability a SACK must wait for.

A `+SACK` or a heartbeat reply is decided by the frame it answers, so it is recorded on that
frame's archive entry (`reply`, `reply_when`), not as a document of its own: a GTFRI with SACK on
costs two documents (its position and its archive entry), not three. What a transport reports
through `sent()` of kind `sack` is then only counted; everything else it sends (commands) is
archived as a `direction: "out"` document, as always.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ..logs import about
from ..protocol import Report
from ..protocol.connection import ArchiveKind, Received, heartbeat_reply
from .database import EVENTS, MESSAGES, POSITIONS
from .devices import Devices, LastPosition, utcnow
from .documents import archive_doc, event_doc, position_docs
from .stats import MinuteCounts, MinuteLatency
from .writer import Batch, BatchWriter

log = logging.getLogger(__name__)

# Protocol version `TTMMmm`: TT is the device type (spec 2.2). 39 appears in V4.01's own examples.
DEVICE_MODELS = {"09": "GV50", "39": "GV50"}

Docs = list[tuple[str, dict[str, Any]]]


class Ingest:
    def __init__(self, writer: BatchWriter, devices: Devices, gateway_id: str) -> None:
        self.writer = writer
        self.devices = devices
        self.gateway_id = gateway_id
        self.last_minute = MinuteCounts()  # frames by "kind/status", both directions
        self.sack_latency = MinuteLatency()  # frame read to SACK sent
        self.invalid = 0
        self.warnings = 0
        self.crc_mismatches = 0  # HEX frames kept although their CRC did not match

    def record(self, events: Sequence[Received], remote_addr: str, received_at: datetime, *,
               device_state: bool = True, replies: bool = True) -> list[Batch]:
        """Store one turn's frames; blocks while the write buffer is full. The room is taken before
        the documents are built: a thousand sessions waiting for room under backpressure must not
        each hold a turn's worth of documents (measured: 137 -> 400 MB of RSS at 3x overload).
        `device_state=False`: frames the gateway does not trust to speak for the device (a datagram
        claiming an IMEI that is live on TCP) are stored, but change nothing in `devices`.
        `replies=False`: the transport sends no replies (HTTP answers with a status line), so no
        frame records one."""
        room = 0
        for ev in events:  # at most: the archive entry, a document per position, an event
            message = ev.message
            room += 1 if message is None or message.kind != "report" else 2 + len(message.positions)  # type: ignore[attr-defined]
        writer = self.writer
        writer.acquire(room)
        batches: dict[int, Batch] = {}
        applying: list[Batch] = []  # settings dumps being written to the config shadow
        counts = self.last_minute
        gateway_id = self.gateway_id
        for ev in events:
            status = ev.status
            counts.add(f"{ev.kind}/{status}")
            if status == "invalid":
                self.invalid += 1
                log.info("invalid frame from %s (%s): %s: %r", remote_addr, ev.imei, ev.error, ev.raw[:120],
                         extra=about(ev.imei, remote_addr))
            if not ev.crc_ok:
                self._crc_mismatch(ev)
            message = ev.message
            archived = archive_doc(imei=ev.imei, direction="in", raw=ev.raw, at=received_at, kind=ev.kind,
                                   status=status, error=ev.error, remote_addr=remote_addr, gateway_id=gateway_id)
            if replies:
                _note_reply(archived, ev)
            if message is not None and message.warnings:  # values kept although outside their documented range
                archived["warnings"] = list(message.warnings)
                self.warnings += 1
            batch = writer.put(MESSAGES, archived)
            batches[id(batch)] = batch
            if message is None or ev.imei is None:
                continue
            if message.kind == "report":
                report: Report = message  # type: ignore[assignment]  # dispatch on `kind`: isinstance on pydantic models costs ~1 µs
                for doc in position_docs(report, received_at):
                    batch = writer.put(POSITIONS, doc)
                    batches[id(batch)] = batch
                event = event_doc(report, received_at)
                if event is not None:
                    batch = writer.put(EVENTS, event)
                    batches[id(batch)] = batch
                if device_state:
                    dump = self._note_report(report, received_at, ev.device)
                    if dump is not None:
                        applying.append(dump)
            elif device_state:
                self.devices.note(ev.imei, received_at, ev.device)
        return list(batches.values()) + applying  # their room was taken above

    def sent(self, frames: Sequence[bytes], kind: ArchiveKind, imei: str | None, remote_addr: str,
             at: datetime) -> list[Batch]:
        """Archive what went out to a tracker. A `+SACK` or heartbeat reply (kind `sack`) is only
        counted: `record` put it on the frame it answers. Anything else (a command) is a document
        of its own. It never waits for room: commands go out one at a time per tracker, so what
        this adds past the buffer's bound is bounded too."""
        self.last_minute.add(f"out/{kind}", len(frames))
        if kind == "sack":
            return []
        return self._put([(MESSAGES, archive_doc(imei=imei, direction="out", raw=frame.decode("latin-1").rstrip("$"),
                                                 at=at, kind=kind, status="ok", remote_addr=remote_addr,
                                                 gateway_id=self.gateway_id)) for frame in frames], wait=False)

    def _crc_mismatch(self, ev: Received) -> None:
        self.crc_mismatches += 1
        n = self.crc_mismatches
        if n in (1, 10, 100) or n % 1000 == 0:
            log.info("HEX frame from %s with a CRC that does not match (kept and stored; %d so far): %s",
                     ev.imei, n, ev.raw[:80], extra=about(ev.imei))

    def sacked(self, seconds: float) -> None:
        """How long a SACK took, from reading its frame to sending it."""
        self.sack_latency.add(seconds)

    def stats(self) -> dict[str, Any]:
        return {"last_minute": {k: int(v) for k, v in sorted(self.last_minute.totals().items())},
                "frames_total": {k: int(v) for k, v in sorted(self.last_minute.since_start.items())},
                "invalid": self.invalid, "warnings": self.warnings, "hex_crc_mismatches": self.crc_mismatches,
                "sack_latency_ms": self.sack_latency.percentiles()}

    def warning(self, imei: str, event_type: str, text: str, **fields: Any) -> None:
        """An operator warning, stored as an event (e.g. `imei_conflict`). Rare, so it never waits."""
        at = utcnow()
        self._put(wait=False, docs=[(EVENTS, {"imei": imei, "type": event_type, "report": "GATEWAY", "level": "warning",
                             "occurred_at": at, "received_at": at, "sent_at": at, "count": None, "buffered": False,
                             "gateway_id": self.gateway_id, "message": text, **fields})])

    def _put(self, docs: Docs, wait: bool = True) -> list[Batch]:
        writer = self.writer
        if wait:
            writer.acquire(len(docs))
        batches: dict[int, Batch] = {}
        for collection, doc in docs:
            batch = writer.put(collection, doc)
            batches[id(batch)] = batch
        return list(batches.values())

    def _note_report(self, report: Report, received_at: datetime, changed: dict[str, Any] | None) -> Batch | None:
        return self.devices.note_report(report, received_at, device_fields(report, changed),
                                        LastPosition.of(report, received_at))


def _note_reply(archived: dict[str, Any], ev: Received) -> None:
    """Record on a frame's archive entry the reply the core decided for it: a `+SACK`, written once
    the frame and everything it produced are stored, or a heartbeat reply, written at once."""
    if ev.sack is not None:
        archived["reply"] = ev.sack.decode("latin-1").rstrip("$")
        archived["reply_when"] = "once_stored"
    elif ev.reply is not None:
        archived["reply"] = ev.reply.decode("latin-1").rstrip("$")
        archived["reply_when"] = "at_once"
    elif ev.kind == "heartbeat" and ev.status == "ok" and ev.message is not None:
        # A TCP heartbeat answered while it was read ahead: its reply went out then, by this rule.
        message = ev.message
        archived["reply"] = heartbeat_reply(message.protocol_version, message.count).decode("latin-1").rstrip("$")
        archived["reply_when"] = "at_once"


def device_fields(report: Report, changed: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `devices` fields a report sets: who the tracker is, and (live reports only) its state."""
    fields: dict[str, Any] = dict(changed) if changed else {}
    if report.device_name:
        fields["device_name"] = report.device_name
    # A HEX report whose masks leave out the device type has no version: the model stays as it was.
    model = DEVICE_MODELS.get(report.protocol_version[:2]) if report.protocol_version else None
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
    return fields
