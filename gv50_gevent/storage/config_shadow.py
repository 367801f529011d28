"""The configuration shadow from the tracker's own settings dumps: `devices.config.<block>`.

GTALM (all settings, four packets), GTALC (selected blocks, up to 20 packets) and GTALS (one
command) each list configuration blocks (`protocol.config_blocks` names their values). A
multi-packet dump is assembled first (bounded: a few packets per device, a bounded number of
devices, dropped when it does not complete in time), then every block it holds replaces
`config.<block>` with `source: "report"`, `at` (the dump's send time) and its named values.

Acknowledged commands write the other side (`ack_effects` in `protocol/commands.py`): the fields
they set, and `commanded`, the fields set by commands since the tracker last reported the block.
A dump whose values differ from `commanded` is recorded as an `events` document of type
`config_mismatch` (a command that did not take, or a change made by SMS or the manage tool). The
dump then clears `commanded`: the next dump is compared with the next command.

Dumps are rare (the answer to `get_config`), so each is applied off the session's greenlet, in a
small pool, as one atomic update (an update pipeline that keeps a newer stored block): a command's
`commanded` written between a read and a write can no longer be lost. The packet that completes a
dump gets its `+SACK` only once the dump is written: `collect` hands back a `Batch` (no documents
of its own) that is done then. A transient MongoDB error (an outage, an election: `transient`) is
retried, with a backoff, until the write goes through or the gateway stops, as the batch writer
does: a SACKed dump is never lost. The mismatch events are worked out once, from the document as
the first successful update found it, and kept across retries: only what is not yet written is
tried again (a retry of the update would find the dump already applied, and no mismatch). A
permanent error (a closed client, a refused document) is logged, the waiting SACK released, and
the dump given up: trying again would fail the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from gevent.event import Event
from gevent.pool import Pool
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError

from ..logs import about
from ..protocol.config_blocks import block_name, read_block
from ..protocol.reports_info import AllSettings, SelectedSettings, SettingsReport
from .database import DB, DEVICES, EVENTS, transient
from .writer import Batch

log = logging.getLogger(__name__)

ASSEMBLY_TIMEOUT_S: Final = 120.0  # a dump whose packets stop coming is dropped after this
MAX_ASSEMBLING: Final = 1000       # devices with a dump in assembly at once; the oldest goes first
MAX_PACKETS: Final = 20            # GTALC numbers its packets 1-20; GTALM sends 4
APPLY_POOL_SIZE: Final = 10
APPLY_RETRY_MAX_S: Final = 5.0     # the longest pause between two tries of a dump's write
SETTINGS_REPORTS: Final = frozenset({"GTALM", "GTALC", "GTALS"})


@dataclass
class _Assembly:
    report: str
    started: float
    packets: dict[int, SettingsReport] = field(default_factory=dict)
    total: int | None = None


@dataclass
class _Dump:
    """A complete dump on its way to MongoDB, and how far its writing got (kept across retries)."""
    imei: str
    packets: list[SettingsReport]
    received_at: datetime
    events: list[dict[str, Any]] | None = None  # None: the update is not written yet
    inserted: int = 0  # events written so far


class ConfigShadow:
    def __init__(self, db: DB, gateway_id: str) -> None:
        self.devices = db[DEVICES]
        self.events = db[EVENTS]
        self.gateway_id = gateway_id
        self._assembling: OrderedDict[str, _Assembly] = OrderedDict()
        self._pool = Pool(APPLY_POOL_SIZE)
        self._stopping = Event()
        self.stats = {"dumps": 0, "dropped": 0, "mismatches": 0, "failed": 0}
        # Told the IMEI after a dump is stored (the fleet room compares it with the wanted values).
        self.on_stored: Callable[[str], None] | None = None

    # --- assembly: on the session's greenlet, memory only ---

    def collect(self, report: SettingsReport, received_at: datetime) -> Batch | None:
        """Take one packet; a complete dump is applied in the background, and the returned batch
        is done once it is written (the SACK of the packet that completed it waits for that)."""
        packets = self._assemble(report)
        if packets is None:
            return None
        self.stats["dumps"] += 1
        written = Batch()
        self._pool.spawn(self._guarded, report.imei, packets, received_at, written)
        return written

    def _assemble(self, report: SettingsReport) -> list[SettingsReport] | None:
        if not isinstance(report, (AllSettings, SelectedSettings)):
            return [report]  # GTALS: one packet
        now = time.monotonic()
        self._expire(now)
        imei = report.imei
        held = self._assembling.get(imei)
        if held is None or held.report != report.type or report.current_packet in held.packets:
            if held is not None:
                self.stats["dropped"] += 1  # a new dump started before the old one completed
            held = self._assembling[imei] = _Assembly(report.type, now)
            while len(self._assembling) > MAX_ASSEMBLING:
                self._assembling.popitem(last=False)
                self.stats["dropped"] += 1
        if report.current_packet > MAX_PACKETS:
            return None
        held.packets[report.current_packet] = report
        if isinstance(report, AllSettings):
            held.total = report.total_packets
        elif not report.more_packets:
            held.total = report.current_packet
        if held.total is None or any(n not in held.packets for n in range(1, held.total + 1)):
            return None
        del self._assembling[imei]
        return [held.packets[n] for n in range(1, held.total + 1)]

    def _expire(self, now: float) -> None:
        while self._assembling:
            imei, oldest = next(iter(self._assembling.items()))
            if now - oldest.started < ASSEMBLY_TIMEOUT_S:
                return
            del self._assembling[imei]
            self.stats["dropped"] += 1
            log.info("%s: dropped an incomplete %s settings dump (%d packets in %.0f s)", imei, oldest.report,
                     len(oldest.packets), ASSEMBLY_TIMEOUT_S, extra=about(imei))

    # --- applying: in the pool ---

    def _guarded(self, imei: str, packets: list[SettingsReport], received_at: datetime, written: Batch) -> None:
        backoff = 0.2
        attempt = 0
        dump = _Dump(imei, packets, received_at)
        try:
            while True:
                attempt += 1
                try:
                    self._apply(dump)
                    return
                except PyMongoError as exc:
                    if not transient(exc):
                        self.stats["failed"] += 1
                        log.error("%s: could not store its reported settings (not tried again: %s: %s)",
                                  imei, type(exc).__name__, exc, extra=about(imei))
                        return
                    if attempt == 1:  # once per dump, not per retry
                        log.warning("%s: could not store its reported settings yet (tried again until it "
                                    "works): %s", imei, exc, extra=about(imei))
                    if self._stopping.wait(backoff):
                        self.stats["failed"] += 1
                        log.error("%s: its reported settings were not stored before the gateway stopped", imei,
                                  extra=about(imei))
                        return
                    backoff = min(backoff * 2, APPLY_RETRY_MAX_S)
                except Exception:
                    # A bug, not an outage: trying again would fail the same way. The raw packets are
                    # archived; the tracker's SACK is not held back for ever.
                    log.exception("%s: could not store its reported settings", imei, extra=about(imei))
                    return
        finally:
            written.done.set()

    def start(self) -> None:
        self._stopping.clear()

    def join(self, timeout: float | None = None) -> None:
        """Let the dumps under way finish within `timeout`; then those still retrying give up."""
        self._pool.join(timeout=timeout)
        self._stopping.set()
        self._pool.join(timeout=1.0)

    def apply(self, imei: str, packets: list[SettingsReport], received_at: datetime) -> list[dict[str, Any]]:
        """Write the dump's blocks; returns the config_mismatch events it recorded."""
        dump = _Dump(imei, packets, received_at)
        self._apply(dump)
        return dump.events or []

    def _apply(self, dump: _Dump) -> None:
        """The dump's one update, then its mismatch events; what is done already is not done again."""
        imei, last, received_at = dump.imei, dump.packets[-1], dump.received_at
        at = last.sent_at or received_at
        if dump.events is None:
            blocks: dict[str, dict[str, Any]] = {}
            for packet in dump.packets:
                for tag, values in packet.blocks().items():
                    named = read_block(tag, values)
                    if named is not None:
                        blocks[block_name(tag)] = named
            if not blocks:
                dump.events = []
                return
            # One update: each block is replaced unless the stored one comes from a newer dump (a
            # +BUFF replay is older than what is stored). The document before says what was replaced.
            update = {f"config.{name}": {"$cond": [_newer_dump(name, at), f"$config.{name}", {"$literal": {
                **named, "source": "report", "at": at, "received_at": received_at}}]}
                for name, named in blocks.items()}
            stored = self.devices.find_one_and_update(
                {"_id": imei}, [{"$set": update}], upsert=True, return_document=ReturnDocument.BEFORE,
                projection={f"config.{b}": 1 for b in blocks}) or {}
            if self.on_stored is not None:
                self.on_stored(imei)
            config = stored.get("config") or {}
            events: list[dict[str, Any]] = []
            for name, named in blocks.items():
                held = config.get(name) or {}
                if _kept(held, at):
                    continue
                differs = _differences(held.get("commanded"), named)
                if differs:
                    events.append(self._mismatch(imei, name, differs, held, last, at, received_at))
            dump.events = events  # from here on, a retry only inserts what is left of them
        while dump.inserted < len(dump.events):
            event = dump.events[dump.inserted]
            try:
                self.events.insert_one(event)
            except DuplicateKeyError:
                pass
            dump.inserted += 1
            self.stats["mismatches"] += 1
            log.warning("%s: its %s settings differ from what commands set: %s", imei, event["block"].upper(),
                        ", ".join(f"{d['field']} is {d['reported']!r}, command set {d['commanded']!r}"
                                  for d in event["fields"]), extra=about(imei))

    def _mismatch(self, imei: str, block: str, differs: list[dict[str, Any]], held: dict[str, Any],
                  last: SettingsReport, at: datetime, received_at: datetime) -> dict[str, Any]:
        return {
            "imei": imei, "type": "config_mismatch", "report": "GATEWAY", "settings_report": last.type,
            "level": "warning", "occurred_at": at, "received_at": received_at,
            # The event key is (imei, report, sent_at, count): one event per dump and block, and
            # the same dump arriving twice records it once.
            "sent_at": at, "count": f"{last.count}/{block}", "buffered": last.buffered,
            "gateway_id": self.gateway_id,
            "block": block, "fields": differs, "commanded_at": held.get("at") if held.get("source") == "command"
            else None,
        }


def _kept(held: Mapping[str, Any], at: datetime) -> bool:
    """The stored block comes from a newer dump than one sent at `at` (`_newer_dump`, in Python)."""
    held_at = held.get("at")
    return isinstance(held_at, datetime) and held.get("source") == "report" and held_at > at


def _newer_dump(name: str, at: datetime) -> dict[str, Any]:
    """`_kept`, as MongoDB evaluates it inside the update."""
    return {"$and": [{"$eq": [f"$config.{name}.source", "report"]}, {"$eq": [{"$type": f"$config.{name}.at"}, "date"]},
                     {"$gt": [f"$config.{name}.at", at]}]}


def _differences(commanded: Any, reported: dict[str, Any]) -> list[dict[str, Any]]:
    """The fields a command set that the dump reports differently. A field the dump does not carry
    (OUT's output level, say) cannot be checked and is left out."""
    if not isinstance(commanded, dict):
        return []
    # In the block's wire order (MongoDB keeps `commanded` in the order its fields were first set).
    return [{"field": name, "commanded": commanded[name], "reported": value}
            for name, value in reported.items() if name in commanded and commanded[name] != value]
