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

Dumps are rare (the answer to `get_config`), so each is applied with a read and a write off the
session's greenlet, in a small pool.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from gevent.pool import Pool
from pymongo.errors import DuplicateKeyError, PyMongoError

from ..protocol.config_blocks import block_name, read_block
from ..protocol.reports_info import AllSettings, SelectedSettings, SettingsReport
from .database import DB, DEVICES, EVENTS

log = logging.getLogger(__name__)

ASSEMBLY_TIMEOUT_S: Final = 120.0  # a dump whose packets stop coming is dropped after this
MAX_ASSEMBLING: Final = 1000       # devices with a dump in assembly at once; the oldest goes first
MAX_PACKETS: Final = 20            # GTALC numbers its packets 1-20; GTALM sends 4
APPLY_POOL_SIZE: Final = 10
SETTINGS_REPORTS: Final = frozenset({"GTALM", "GTALC", "GTALS"})


@dataclass
class _Assembly:
    report: str
    started: float
    packets: dict[int, SettingsReport] = field(default_factory=dict)
    total: int | None = None


class ConfigShadow:
    def __init__(self, db: DB, gateway_id: str) -> None:
        self.devices = db[DEVICES]
        self.events = db[EVENTS]
        self.gateway_id = gateway_id
        self._assembling: OrderedDict[str, _Assembly] = OrderedDict()
        self._pool = Pool(APPLY_POOL_SIZE)
        self.stats = {"dumps": 0, "dropped": 0, "mismatches": 0}
        # Told the IMEI after a dump is stored (the fleet room compares it with the wanted values).
        self.on_stored: Callable[[str], None] | None = None

    # --- assembly: on the session's greenlet, memory only ---

    def collect(self, report: SettingsReport, received_at: datetime) -> None:
        """Take one packet; a complete dump is applied in the background."""
        packets = self._assemble(report)
        if packets is not None:
            self.stats["dumps"] += 1
            self._pool.spawn(self._guarded, report.imei, packets, received_at)

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
                     len(oldest.packets), ASSEMBLY_TIMEOUT_S)

    # --- applying: in the pool ---

    def _guarded(self, imei: str, packets: list[SettingsReport], received_at: datetime) -> None:
        try:
            self.apply(imei, packets, received_at)
        except PyMongoError as exc:
            log.warning("%s: could not store its reported settings: %s", imei, exc)
        except Exception:
            log.exception("%s: could not store its reported settings", imei)

    def join(self, timeout: float | None = None) -> None:
        self._pool.join(timeout=timeout)

    def apply(self, imei: str, packets: list[SettingsReport], received_at: datetime) -> list[dict[str, Any]]:
        """Write the dump's blocks; returns the config_mismatch events it recorded."""
        last = packets[-1]
        at = last.sent_at or received_at
        blocks: dict[str, dict[str, Any]] = {}
        for packet in packets:
            for tag, values in packet.blocks().items():
                named = read_block(tag, values)
                if named is not None:
                    blocks[block_name(tag)] = named
        if not blocks:
            return []
        stored = self.devices.find_one({"_id": imei}, {f"config.{b}": 1 for b in blocks}) or {}
        config = stored.get("config") or {}
        update: dict[str, Any] = {}
        events: list[dict[str, Any]] = []
        for name, named in blocks.items():
            held = config.get(name) or {}
            held_at = held.get("at")
            if isinstance(held_at, datetime) and held.get("source") == "report" and held_at > at:
                continue  # an older dump (a +BUFF replay) than the one already stored
            differs = _differences(held.get("commanded"), named)
            if differs:
                events.append(self._mismatch(imei, name, differs, held, last, at, received_at))
            update[f"config.{name}"] = {**named, "source": "report", "at": at, "received_at": received_at}
        if update:
            self.devices.update_one({"_id": imei}, {"$set": update}, upsert=True)
            if self.on_stored is not None:
                self.on_stored(imei)
        for event in events:
            try:
                self.events.insert_one(event)
            except DuplicateKeyError:
                pass
            self.stats["mismatches"] += 1
            log.warning("%s: its %s settings differ from what commands set: %s", imei, event["block"].upper(),
                        ", ".join(f"{d['field']} is {d['reported']!r}, command set {d['commanded']!r}"
                                  for d in event["fields"]))
        return events

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


def _differences(commanded: Any, reported: dict[str, Any]) -> list[dict[str, Any]]:
    """The fields a command set that the dump reports differently. A field the dump does not carry
    (OUT's output level, say) cannot be checked and is left out."""
    if not isinstance(commanded, dict):
        return []
    # In the block's wire order (MongoDB keeps `commanded` in the order its fields were first set).
    return [{"field": name, "commanded": commanded[name], "reported": value}
            for name, value in reported.items() if name in commanded and commanded[name] != value]
