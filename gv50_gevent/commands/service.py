"""The command service: wiring of store, registry, watcher and workers, and the gateway's hooks.

Hooks are called from session greenlets and never block them on MongoDB: `device_online` only
starts (or wakes) the device's worker, `ack` and `report` hand their writes to a bounded pool.

Exactly once across gateways: only the gateway that holds the device's connection works on its
commands, and every send is preceded by a compare-and-set claim in MongoDB (status, attempts,
gateway_id as last seen). Two gateways that race for one attempt cannot both win the claim.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol

import gevent
from gevent.event import Event
from gevent.pool import Pool
from pymongo.errors import PyMongoError

from ..config import Settings
from ..protocol import Ack, Report
from ..protocol.commands import CommandError, ack_effects, ack_type
from ..storage.database import DB
from ..storage.devices import Devices
from .dispatcher import DeviceWorker
from .link import Link, Links
from .registry import CommandRegistry, is_open
from .store import RECENT_SERIALS, CommandStore, is_rollout, utcnow
from .watcher import CommandWatcher

log = logging.getLogger(__name__)

HOOK_POOL_SIZE = 100        # concurrent ACK / answer writes; a full pool slows the sessions down
EXPIRY_INTERVAL_S = 1.0     # how often pending commands of absent devices are checked for expiry
MAX_QUEUED_ACKS = 100      # per device, waiting to be matched
ANSWER_WAIT_S = 600.0       # how long after sending we still attribute an answer report to a command


class CommandObserver(Protocol):
    """Who else wants to know (the fleet room's reconciler). Called on session and watcher
    greenlets: must not block."""

    def device_online(self, link: Link) -> None: ...
    def device_offline(self, link: Link) -> None: ...
    def rollout_changed(self, doc: Mapping[str, Any]) -> None: ...


class CommandService:
    def __init__(self, settings: Settings, db: DB, links: Links, devices: Devices) -> None:
        self.settings = settings
        self.links = links
        self.devices = devices
        self.store = CommandStore(db, settings.GATEWAY_ID, settings.COMMAND_TTL_S, settings.COMMAND_MAX_ATTEMPTS)
        self.registry = CommandRegistry()
        self.watcher = CommandWatcher(db, settings.GATEWAY_ID, self)
        self.workers: dict[str, DeviceWorker] = {}
        # imei -> answer report type -> (command _id, wait until)
        self.answers: dict[str, dict[str, tuple[Any, datetime]]] = {}
        self.stats = {"acks_matched": 0, "acks_unmatched": 0, "acks_late": 0, "acks_dropped": 0, "answers": 0}
        self._acks: dict[str, deque[tuple[Link, Ack]]] = {}
        self._recent_serials: dict[str, deque[str]] = {}
        self._pool = Pool(HOOK_POOL_SIZE)
        self._stopping = Event()
        self._housekeeper: gevent.Greenlet | None = None
        self.observer: CommandObserver | None = None

    # --- lifecycle ---

    def start(self) -> None:
        self.watcher.start()
        self._housekeeper = gevent.spawn(self._housekeep)

    def stop(self, timeout: float = 3.0) -> None:
        self._stopping.set()
        for worker in list(self.workers.values()):
            worker.stop()
        self.watcher.stop(timeout)
        greenlets = [w.greenlet for w in self.workers.values() if w.greenlet is not None]
        gevent.joinall(greenlets, timeout=timeout)
        gevent.killall([g for g in greenlets if not g.dead], block=True, timeout=2)
        self._pool.join(timeout=timeout)
        self._pool.kill(block=True, timeout=2)
        if self._housekeeper is not None:
            self._housekeeper.kill(block=True, timeout=2)
        log.info("commands stopped: %d changes seen, %d sweeps, %s", self.watcher.changes, self.watcher.sweeps,
                 ", ".join(f"{k} {v}" for k, v in self.stats.items()))

    def figures(self) -> dict[str, Any]:
        """Open commands by status, and the status changes this gateway made in the last minute."""
        open_by_status: dict[str, int] = {}
        for imei in self.registry.imeis():
            for cmd in self.registry.for_imei(imei):
                key = cmd.status or "new"
                open_by_status[key] = open_by_status.get(key, 0) + 1
        moved = {f"{k}_last_minute": int(v) for k, v in sorted(self.store.transitions.totals().items())}
        return {**open_by_status, **moved}

    # --- what the watcher tells us (ChangeHandler) ---

    def sweep(self) -> None:
        docs = self.store.open_commands()
        entries = []
        for doc in docs:
            if "attempts" not in doc:
                after = self._normalise(doc)
                if after is None or not is_open(after):
                    continue
                doc = after
            if isinstance(doc.get("imei"), str):
                entries.append(self.store.open_entry(doc))
        self.registry.replace_all(entries)
        log.info("commands sweep: %d open commands for %d devices", len(self.registry), len(self.registry.imeis()))
        for imei in self.registry.imeis():
            self._poke(imei)

    def change(self, change: Mapping[str, Any]) -> None:
        doc = change.get("fullDocument")
        if doc is None:  # deleted (or deleted before the lookup)
            key = change.get("documentKey") or {}
            imei = self.registry.discard(key.get("_id"))
            if imei is not None:
                self._poke(imei)
            return
        link = self.links.link(doc.get("imei")) if isinstance(doc.get("imei"), str) else None
        if "attempts" not in doc and is_open(doc) and (link is None or link.closing is not None):
            # A device connected here gets it normalised by the claim that sends it (one write,
            # not two, between the operator's insert and the tracker).
            doc = self._normalise(doc)
            if doc is None:
                return  # deleted meanwhile: its own change event follows
        imei = doc.get("imei")
        if is_open(doc) and isinstance(imei, str):
            self.registry.upsert(self.store.open_entry(doc))
            self._poke(imei)
        else:
            old = self.registry.discard(doc["_id"])
            if old is not None:
                self._poke(old)
        if self.observer is not None and is_rollout(doc):
            self.observer.rollout_changed(doc)

    def _normalise(self, doc: Mapping[str, Any]) -> dict[str, Any] | None:
        after = self.store.normalise(doc)
        if after is None:  # another gateway did it first, or the operator changed it: read it again
            after = self.store.get(doc["_id"])
        return after

    # --- workers ---

    def _poke(self, imei: str) -> None:
        """Something changed for this device: if it is connected here, its worker looks again."""
        session = self.links.link(imei)
        if session is not None and session.closing is None:
            self._ensure_worker(session)

    def _ensure_worker(self, session: Link) -> None:
        if self._stopping.is_set():
            return
        assert session.imei is not None
        worker = self.workers.get(session.imei)
        if worker is not None:
            if worker.session is session and worker.running:
                worker.wake()
                return
            worker.stop()
        worker = DeviceWorker(self, session)
        self.workers[session.imei] = worker
        worker.start()

    def recent_serials(self, imei: str) -> deque[str]:
        """The serials this gateway used lately for a device (bounded per device)."""
        recent = self._recent_serials.get(imei)
        if recent is None:
            recent = self._recent_serials[imei] = deque(maxlen=RECENT_SERIALS)
        return recent

    def worker_done(self, worker: DeviceWorker) -> None:
        if self.workers.get(worker.imei) is worker:
            del self.workers[worker.imei]

    # --- the gateway's hooks (CommandHooks), called from session greenlets ---

    def device_online(self, session: Link) -> None:
        assert session.imei is not None
        # Before the first sweep the registry knows nothing yet: let the worker ask MongoDB.
        if self.registry.has(session.imei) or not self.watcher.ready.is_set():
            self._ensure_worker(session)
        if self.observer is not None:
            self.observer.device_online(session)

    def device_offline(self, session: Link) -> None:
        worker = self.workers.get(session.imei or "")
        if worker is not None and worker.session is session:
            worker.stop()  # a `sent` command stays `sent`; the next connection takes it over
        if self.observer is not None:
            self.observer.device_offline(session)

    def ack(self, session: Link, ack: Ack) -> None:
        # One drainer per device, so its ACKs are matched in the order they arrived.
        queue = self._acks.get(ack.imei)
        if queue is not None:
            if len(queue) >= MAX_QUEUED_ACKS:
                self.stats["acks_dropped"] += 1
                log.warning("%s: more than %d ACKs waiting; dropped %s", ack.imei, MAX_QUEUED_ACKS, ack.raw)
                return
            queue.append((session, ack))
            return
        self._acks[ack.imei] = deque([(session, ack)])
        self._pool.spawn(self._drain_acks, ack.imei)

    def _drain_acks(self, imei: str) -> None:
        queue = self._acks[imei]
        try:
            while queue:
                session, ack = queue[0]
                self._guarded(self._handle_ack, session, ack)
                queue.popleft()
        finally:
            if self._acks.get(imei) is queue:
                del self._acks[imei]

    def report(self, session: Link, report: Report) -> None:
        if report.buffered:
            return  # +BUFF is history, not the answer to a command sent now
        waiting = self.answers.get(report.imei)
        if not waiting or report.type not in waiting:
            return
        command_id, until = waiting.pop(report.type)
        if not waiting:
            del self.answers[report.imei]
        if until >= utcnow():
            self._pool.spawn(self._guarded, self._record_answer, command_id, report)

    # --- ACKs and answers ---

    def _handle_ack(self, session: Link, ack: Ack) -> None:
        serial = ack.serial.upper()
        doc = self.store.find_sent(ack.imei, serial)
        expected = None
        if doc is not None:
            try:
                expected = ack_type(doc.get("type"), doc.get("params"))  # type: ignore[arg-type]
            except CommandError:
                expected = None
        done = self.store.acknowledge(doc, ack.raw) if doc is not None and expected == ack.type else None
        if done is None and self._late_ack(ack, serial):
            return
        if done is None:
            # Duplicate, late, or for a command we do not know: archived by the session, changes nothing.
            self.stats["acks_unmatched"] += 1
            why = "no sent command with this serial" if doc is None else \
                f"serial matches command {doc['_id']} but it expects +ACK:{expected}" if expected != ack.type else \
                "command changed meanwhile"
            log.info("unmatched +ACK:%s serial %s from %s (%s)", ack.type, serial, ack.imei, why)
            return
        self.stats["acks_matched"] += 1
        self._apply_effects(session, done)
        worker = self.workers.get(ack.imei)
        if worker is not None:
            worker.wake()

    def _late_ack(self, ack: Ack, serial: str) -> bool:
        """The operator cancelled the command after it was sent (perhaps between our read and our
        write above): the tracker may have acted. Keep its word on the command, change nothing else."""
        doc = self.store.find_cancelled_after_send(ack.imei, serial)
        if doc is None:
            return False
        try:
            if ack_type(doc.get("type"), doc.get("params")) != ack.type:  # type: ignore[arg-type]
                return False
        except CommandError:
            return False
        late = self.store.record_late_ack(doc, ack.raw)
        if late is None:
            return False  # a duplicate of an ACK already kept
        self.stats["acks_late"] += 1
        log.info("+ACK:%s serial %s from %s for command %s, cancelled after it was sent: kept as late_ack",
                 ack.type, serial, ack.imei, late["_id"])
        return True

    def _apply_effects(self, session: Link, doc: Mapping[str, Any]) -> None:
        try:
            effects = ack_effects(doc.get("type"), doc.get("params"),  # type: ignore[arg-type]
                                  doc.get("acknowledged_at") or utcnow())
        except CommandError:
            return
        if not effects:
            return
        self.devices.set_now(doc["imei"], effects)
        sack = effects.get("sack_enable")
        if isinstance(sack, bool) and session.imei == doc["imei"]:
            session.set_sack(sack)
            log.info("%s: SACK %s by command %s", doc["imei"], "enabled" if sack else "disabled", doc["_id"])

    def expect_answer(self, imei: str, report_type: str, command_id: Any) -> None:
        self.answers.setdefault(imei, {})[report_type] = (command_id, utcnow() + timedelta(seconds=ANSWER_WAIT_S))

    def _record_answer(self, command_id: Any, report: Report) -> None:
        self.store.record_answer(command_id, report.type, report.raw, utcnow())
        self.stats["answers"] += 1
        log.info("command %s answered by %s from %s", command_id, report.type, report.imei)

    def _guarded(self, func: Any, *args: Any) -> None:
        try:
            func(*args)
        except PyMongoError as exc:
            log.warning("commands: %s failed: %s", func.__name__, exc)
        except Exception:
            log.exception("commands: %s failed", func.__name__)

    # --- housekeeping: expiry of commands whose device is not here, stale answer waits ---

    def _housekeep(self) -> None:
        while not self._stopping.wait(EXPIRY_INTERVAL_S):
            now = utcnow()
            try:
                for cmd in self.registry.overdue(now):
                    if self.store.expire(cmd.id, now) is not None:
                        self.registry.discard(cmd.id)
                        continue
                    # Not expired after all (claimed, cancelled, deadline moved): refresh the entry.
                    current = self.store.get(cmd.id)
                    if current is not None and is_open(current) and isinstance(current.get("imei"), str):
                        self.registry.upsert(self.store.open_entry(current))
                    else:
                        self.registry.discard(cmd.id)
            except PyMongoError as exc:
                log.warning("commands expiry pass failed: %s", exc)
            for imei in list(self.answers):
                waiting = self.answers[imei]
                for report_type in [t for t, (_, until) in waiting.items() if until < now]:
                    del waiting[report_type]
                if not waiting:
                    del self.answers[imei]
