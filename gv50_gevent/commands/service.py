"""The command service: wiring of store, registry, watcher and workers, and the gateway's hooks.

Hooks are called from session greenlets and never block them on MongoDB: `device_online` only
starts (or wakes) the device's worker. `ack`, and `report` when the report answers a command, hand
their writes to a greenlet per device and return a `Settled`: the transport waits for it, as for
its storage batches, before it sends the `+SACK` of the frame that carried them. Those writes are
retried with a bounded backoff while MongoDB's error may clear by itself (an election, an outage:
`storage.database.transient`); a permanent error (a validator, a permission, a closed client) is
logged and counted once, and the frame's waiters are released.

An answer speaks only for the link its command went out on (`link.link_refusal`). One that claims
a command from another link changes nothing and is recorded as an `ack_rejected` event.

Exactly once across gateways: only the gateway that holds the device's connection works on its
commands, and every send is preceded by a compare-and-set claim in MongoDB (status, attempts,
gateway_id as last seen). Two gateways that race for one attempt cannot both win the claim.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol

import gevent
from gevent.event import Event
from gevent.pool import Group
from pymongo.errors import DuplicateKeyError, PyMongoError

from ..config import Settings
from ..logs import about
from ..protocol import Ack, Report
from ..protocol.commands import CommandError, ack_effects, ack_type
from ..storage.database import DB, EVENTS, transient
from ..storage.devices import Devices
from ..storage.stats import MinuteLatency
from .dispatcher import DeviceWorker
from .link import Link, Links, link_refusal, sent_via, to_ms
from .registry import CommandRegistry, is_open
from .store import RECENT_SERIALS, CommandStore, is_rollout, utcnow
from .watcher import CommandWatcher

log = logging.getLogger(__name__)

EXPIRY_INTERVAL_S = 1.0     # how often pending commands of absent devices are checked for expiry
ANSWER_WAIT_S = 600.0       # how long after sending we still attribute an answer report to a command
RETRY_FIRST_S = 0.1         # a failed ACK or answer write is retried after this, doubling ...
RETRY_MAX_S = 5.0           # ... up to this, until it succeeds (or fails for good)
# Serials a device used lately are kept this long after its last command (a late duplicate ACK
# must not match a new command), and for at most this many devices.
RECENT_SERIALS_KEEP_S = 3600.0
MAX_RECENT_SERIAL_DEVICES = 100_000
# ack_rejected events, and the warnings of refused answer reports: per command and minute, one per
# address and at most this many addresses (UDP source addresses cost nothing to forge); commands
# remembered at most.
REJECTED_WINDOW_S = 60.0
REJECTED_ADDRESSES = 10
MAX_REJECTED_COMMANDS = 10_000
# Where a new command's time goes inside the gateway (`command_steps_ms`, last minute): `stream` from its
# insert in MongoDB (the change's wallTime) to the change stream handing it over here; `dispatch`
# from there to the start of its claim; `claim` the claim's durable write; `send` writing it out.
STEPS = ("stream", "dispatch", "claim", "send")
MAX_TIMED_COMMANDS = 10_000  # new commands whose arrival is remembered until their first send


class Settled:
    """What a transport waits for before it sends a `+SACK`: `done` is set once what the frame did
    to a command is written (or, on shutdown, given up: the transports have stopped by then)."""

    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = Event()


class _AckWork:
    """One `+ACK` on its way to MongoDB, kept across retries."""

    __slots__ = ("link", "ack", "source", "arrived", "settled", "tries", "judged", "acknowledged")

    def __init__(self, link: Link, ack: Ack, source: str) -> None:
        self.link = link
        self.ack = ack
        self.source = source
        self.arrived = utcnow()  # when the command room heard of it
        self.settled = Settled()
        self.tries = 0
        # The command as it was when the link was judged to speak for it (see `_handle_ack`).
        self.judged: dict[str, Any] | None = None
        self.acknowledged: dict[str, Any] | None = None  # the command it acknowledged, once written


class CommandObserver(Protocol):
    """Who else wants to know (the fleet room's reconciler). Called on session and watcher
    greenlets: must not block."""

    def device_online(self, link: Link) -> None: ...
    def device_offline(self, link: Link) -> None: ...
    def rollout_changed(self, doc: Mapping[str, Any]) -> None: ...


class CommandService:
    def __init__(self, settings: Settings, db: DB, links: Links, devices: Devices, *,
                 watch_db: DB | None = None, claim_db: DB | None = None) -> None:
        self.settings = settings
        self.links = links
        self.devices = devices
        self.store = CommandStore(db, settings.GATEWAY_ID, settings.COMMAND_TTL_S, settings.COMMAND_MAX_ATTEMPTS,
                                  claim_db=claim_db)
        self.events = db[EVENTS]
        self.registry = CommandRegistry()
        # The change stream and the claims may have clients of their own (`watch_db`, `claim_db`): see app.py.
        self.watcher = CommandWatcher(db if watch_db is None else watch_db, settings.GATEWAY_ID, self)
        self.workers: dict[str, DeviceWorker] = {}
        # imei -> answer report type -> (command _id, wait until, the link it went out on)
        self.answers: dict[str, dict[str, tuple[Any, datetime, Mapping[str, Any]]]] = {}
        self.stats = {"acks_matched": 0, "acks_unmatched": 0, "acks_late": 0, "acks_rejected": 0, "answers": 0,
                      "answers_rejected": 0, "write_retries": 0, "writes_failed": 0}
        # One drainer per device, so its ACKs are matched in the order they arrived. Bounded by the
        # transports: a session reads no further until its ACKs are settled, a datagram's handler
        # (in the UDP pool) waits for them too.
        self._acks: dict[str, deque[_AckWork]] = {}
        # imei -> (serials used lately, when the last was used, monotonic)
        self._recent_serials: OrderedDict[str, tuple[deque[str], float]] = OrderedDict()
        # (what, command _id) -> (window start, addresses); what: "ack" or an answer report type
        self._rejected: dict[tuple[str, Any], tuple[float, set[str]]] = {}
        self.steps = {name: MinuteLatency() for name in STEPS}
        self._arrived: OrderedDict[Any, float] = OrderedDict()  # new command _id -> when it reached us
        self._writes = Group()
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
        self._writes.join(timeout=timeout)
        self._writes.kill(block=True, timeout=2)
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

    def transitions_total(self) -> dict[str, int]:
        """The status changes this gateway made since it started, by the status moved to."""
        return {k: int(v) for k, v in sorted(self.store.transitions.since_start.items())}

    def step_latencies(self) -> dict[str, Any]:
        """p50 and p99 of each step of a new command (STEPS), for the steps timed in the last minute."""
        figures = {name: latency.percentiles() for name, latency in self.steps.items()}
        return {name: value for name, value in figures.items() if value["samples"]}

    def sent_new(self, command_id: Any, claim_started: float, claimed: float, sent: float) -> None:
        """A command's first send is done (monotonic times): time its steps, if it came by the stream."""
        arrived = self._arrived.pop(command_id, None)
        if arrived is None:
            return
        for name, seconds in (("dispatch", claim_started - arrived), ("claim", claimed - claim_started),
                              ("send", sent - claimed)):
            self.steps[name].add(seconds)

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
        if change.get("operationType") == "insert" and doc is not None:
            self._arrival(doc["_id"], change.get("wallTime"))
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

    def _arrival(self, command_id: Any, inserted: Any) -> None:
        if isinstance(inserted, datetime):  # MongoDB 6.0 on: the insert's time, in milliseconds
            self.steps["stream"].add(max(0.0, (utcnow() - inserted).total_seconds()))
        self._arrived[command_id] = time.monotonic()
        while len(self._arrived) > MAX_TIMED_COMMANDS:  # commands of devices that are not here
            self._arrived.popitem(last=False)

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

    def recent_serials(self, imei: str) -> set[str]:
        """The serials this gateway used lately for a device (bounded per device)."""
        held = self._recent_serials.get(imei)
        return set(held[0]) if held is not None else set()

    def used_serial(self, imei: str, serial: str) -> None:
        held = self._recent_serials.pop(imei, None)  # re-inserted last: the dict stays in order of use
        recent = held[0] if held is not None else deque(maxlen=RECENT_SERIALS)
        recent.append(serial)
        self._recent_serials[imei] = (recent, time.monotonic())
        while len(self._recent_serials) > MAX_RECENT_SERIAL_DEVICES:
            self._recent_serials.popitem(last=False)

    def prune_serials(self, now: float | None = None) -> int:
        """Forget the serials of devices that used none for RECENT_SERIALS_KEEP_S and have no
        worker; returns how many devices were forgotten."""
        now = time.monotonic() if now is None else now
        stale = [imei for imei, (_, at) in self._recent_serials.items()
                 if now - at > RECENT_SERIALS_KEEP_S and imei not in self.workers]
        for imei in stale:
            del self._recent_serials[imei]
        return len(stale)

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

    def ack(self, link: Link, ack: Ack, source: str) -> Settled:
        """An `+ACK` arrived on `link` from the address `source`; the returned `Settled` is done once
        what it does to a command is written."""
        work = _AckWork(link, ack, source)
        queue = self._acks.get(ack.imei)
        if queue is not None:
            queue.append(work)
        else:
            self._acks[ack.imei] = deque([work])
            self._writes.spawn(self._drain_acks, ack.imei)
        return work.settled

    def ack_pending(self, imei: str, serial: str, via: Mapping[str, Any]) -> bool:
        """An ACK with this serial arrived on a link that may speak for the command (sent as `via`)
        and is not written yet: the command must not be resent. (A stream of forged ACKs from
        another link must not hold a resend back.)"""
        queue = self._acks.get(imei)
        if not queue:
            return False
        now, ttl = utcnow(), self.settings.UDP_ADDRESS_TTL_S
        return any(work.ack.serial.upper() == serial and link_refusal(via, work.link, work.source, now, ttl) is None
                   for work in queue)

    def _drain_acks(self, imei: str) -> None:
        queue = self._acks[imei]
        try:
            while queue:
                work = queue[0]
                self._until_written(self._handle_ack, work)
                queue.popleft()
                work.settled.done.set()
                worker = self.workers.get(imei)
                if worker is not None:
                    worker.wake()  # an ACK it may have waited for (see `ack_pending`)
        finally:
            if self._acks.get(imei) is queue:
                del self._acks[imei]
            for work in queue:  # stopped: the transports are gone, release whoever still waits
                work.settled.done.set()

    def report(self, link: Link, report: Report, source: str, received_at: datetime) -> Settled | None:
        """A report arrived (its frame read at `received_at`); if it answers a command, the returned
        `Settled` is done once the answer is written. Most reports answer nothing: a dictionary
        lookup, no MongoDB."""
        if report.buffered:
            return None  # +BUFF is history, not the answer to a command sent now
        waiting = self.answers.get(report.imei)
        if not waiting or report.type not in waiting:
            return None
        command_id, until, via = waiting[report.type]
        now = utcnow()
        if until >= now:
            refusal = link_refusal(via, link, source, now, self.settings.UDP_ADDRESS_TTL_S)
            if refusal is not None:
                self.stats["answers_rejected"] += 1
                if not self._said_lately(report.type, command_id, source):
                    self._said(report.type, command_id, source)
                    log.warning("%s from %s (%s) does not answer command %s: %s", report.type, report.imei, source,
                                command_id, refusal, extra=about(report.imei, source, command_id))
                return None  # still waiting for the real one
        del waiting[report.type]
        if not waiting:
            del self.answers[report.imei]
        if until < now:
            return None
        settled = Settled()

        def write() -> None:
            try:
                self._until_written(self._record_answer, command_id, report, received_at)
            finally:
                settled.done.set()

        self._writes.spawn(write)
        return settled

    def _until_written(self, func: Callable[..., None], *args: Any) -> None:
        """`func(*args)` until it gets through: MongoDB errors that clear by themselves (an election,
        an outage) are retried with a bounded backoff, never dropped. One that never clears (the
        collection's validator refuses the document, no permission, the client closed at shutdown)
        is logged and counted once and not retried: retrying it would hold the tracker's `+SACK`,
        and its connection, forever. A bug is logged once and not retried either."""
        backoff = RETRY_FIRST_S
        tries = 0
        while True:
            try:
                func(*args)
                return
            except PyMongoError as exc:
                if not transient(exc):
                    self.stats["writes_failed"] += 1
                    log.error("commands: %s failed for good (try %d), not retried: %s: %s", func.__name__,
                              tries + 1, type(exc).__name__, exc)
                    return
                tries += 1
                self.stats["write_retries"] += 1
                if tries == 1 or tries % 20 == 0:
                    log.warning("commands: %s failed (try %d), retrying: %s", func.__name__, tries, exc)
                if self._stopping.wait(backoff):
                    log.warning("commands: %s not written: the gateway is stopping", func.__name__)
                    return
                backoff = min(backoff * 2, RETRY_MAX_S)
            except Exception:
                log.exception("commands: %s failed", func.__name__)
                return

    # --- ACKs and answers ---

    def _handle_ack(self, work: _AckWork) -> None:
        """Match the ACK to its command and write what it does. Safe to run again after a MongoDB
        error: `work` remembers what is already judged and written, and a write whose answer was
        lost is found.

        The link is judged once, against the command as the first read found it, and the judgement
        is kept across retries. Across gateways the command can move on meanwhile: while this
        gateway's write waits out an election, the tracker reconnects to another gateway, which
        sends the command again there (a takeover: the same serial, one more attempt, a new
        `sent_via`). Judged again, this ACK would be held against that newer link and refused as a
        forgery, although it came on the link the command had gone out on. So the acknowledge write
        is a compare-and-set on what was judged: the same command, still `sent`, with the same
        serial. A newer attempt with that serial is accepted: a resend is the same line, the tracker
        echoes the serial, so this ACK proves the tracker got the command whichever attempt it
        answers. A command cancelled, failed or acknowledged meanwhile does not match, nor one sent
        again with another serial (a new claim from `pending`)."""
        ack, link = work.ack, work.link
        serial = ack.serial.upper()
        work.tries += 1
        if work.acknowledged is None:
            if work.judged is None:
                doc = self.store.find_sent(ack.imei, serial)
                expected = self._expected_ack(doc)
                if doc is None or expected != ack.type:
                    self._unmatched(work, serial, doc, expected)
                    return
                via = sent_via(doc)
                refusal = link_refusal(via, link, work.source, utcnow(), self.settings.UDP_ADDRESS_TTL_S)
                if refusal is not None:
                    at = via.get("at")
                    if isinstance(at, datetime) and at > to_ms(work.arrived):
                        # Not judged before the command went out again (the first read failed, or
                        # waited behind other ACKs through an election): that newer send is not the
                        # one this ACK can answer, and its link says nothing of this one. Neither
                        # accepted nor recorded as a forgery; the newer send waits for its own ACK.
                        # (`at` may come from another gateway's clock: a skew of a few ms matters
                        # only within those few ms of a takeover.)
                        self._unmatched(work, serial, doc, expected, "it was sent again after this ACK arrived")
                        return
                    self._reject(doc, work, refusal)
                    return
                work.judged = doc
            work.acknowledged = self.store.acknowledge(work.judged, ack.raw)
            if work.acknowledged is None and work.tries > 1:
                work.acknowledged = self.store.find_acknowledged_by(ack.imei, serial, ack.raw)
            if work.acknowledged is None:
                self._unmatched(work, serial, work.judged, ack.type, "command changed meanwhile")
                return
            self.stats["acks_matched"] += 1
        self._apply_effects(link, work.acknowledged)

    @staticmethod
    def _expected_ack(doc: Mapping[str, Any] | None) -> str | None:
        if doc is None:
            return None
        try:
            return ack_type(doc.get("type"), doc.get("params"))  # type: ignore[arg-type]
        except CommandError:
            return None

    def _unmatched(self, work: _AckWork, serial: str, doc: Mapping[str, Any] | None, expected: str | None,
                   why: str | None = None) -> None:
        """Duplicate, late, or for a command we do not know: archived by the session, changes nothing
        (but the word of a tracker on a command the operator cancelled after it was sent is kept)."""
        ack = work.ack
        if self._late_ack(work, serial):
            return
        self.stats["acks_unmatched"] += 1
        if why is None:
            why = "no sent command with this serial" if doc is None else \
                f"serial matches command {doc['_id']} but it expects +ACK:{expected}"
        log.info("unmatched +ACK:%s serial %s from %s (%s)", ack.type, serial, ack.imei, why,
                 extra=about(ack.imei, work.source))

    def _late_ack(self, work: _AckWork, serial: str) -> bool:
        """The operator cancelled the command after it was sent (perhaps between our read and our
        write above): the tracker may have acted. Keep its word on the command, change nothing else."""
        ack = work.ack
        doc = self.store.find_cancelled_after_send(ack.imei, serial)
        if doc is None:
            return False
        if self._expected_ack(doc) != ack.type:
            return False
        judged = work.judged is not None and work.judged["_id"] == doc["_id"]  # its link was judged already
        if not judged:
            refusal = link_refusal(sent_via(doc), work.link, work.source, utcnow(), self.settings.UDP_ADDRESS_TTL_S)
            if refusal is not None:
                self._reject(doc, work, refusal)
                return True
        late = self.store.record_late_ack(doc, ack.raw)
        if late is None:
            return False  # a duplicate of an ACK already kept
        self.stats["acks_late"] += 1
        log.info("+ACK:%s serial %s from %s for command %s, cancelled after it was sent: kept as late_ack",
                 ack.type, serial, ack.imei, late["_id"], extra=about(ack.imei, command_id=late["_id"]))
        return True

    def _said_lately(self, what: str, command_id: Any, source: str) -> bool:
        """Whether a refused claim of `what` ("ack", or an answer report's type) on this command was
        already logged this minute for `source`, or for REJECTED_ADDRESSES addresses: each forged
        datagram is counted, but the log and `events` hear of it at most once a minute per address."""
        start, addresses = self._rejected.get((what, command_id), (0.0, set()))
        if time.monotonic() - start > REJECTED_WINDOW_S:
            return False
        return source in addresses or len(addresses) >= REJECTED_ADDRESSES

    def _said(self, what: str, command_id: Any, source: str) -> None:
        now = time.monotonic()
        key = (what, command_id)
        start, addresses = self._rejected.get(key, (now, set()))
        if now - start > REJECTED_WINDOW_S:
            start, addresses = now, set()
        if key not in self._rejected and len(self._rejected) >= MAX_REJECTED_COMMANDS:
            self._rejected.clear()
        addresses.add(source)
        self._rejected[key] = (start, addresses)

    def _reject(self, doc: Mapping[str, Any], work: _AckWork, reason: str) -> None:
        """An ACK that claims this command came from a link the command never went out on: it
        changes nothing, and the operator sees who tried (an `ack_rejected` event)."""
        ack, link = work.ack, work.link
        self.stats["acks_rejected"] += 1
        if self._said_lately("ack", doc["_id"], work.source):
            return  # counted; said already this minute
        via = sent_via(doc)
        text = (f"+ACK:{ack.type} serial {ack.serial.upper()} for command {doc['_id']} of {ack.imei} came over "
                f"{link.transport.upper()} from {work.source}; not accepted: {reason}")
        log.warning(text, extra=about(ack.imei, work.source, doc["_id"]))
        at = utcnow()
        event = {"imei": ack.imei, "type": "ack_rejected", "report": "GATEWAY", "level": "warning",
                 "occurred_at": at, "received_at": at, "sent_at": at, "count": f"{ack.serial.upper()}@{work.source}",
                 "buffered": False, "gateway_id": self.settings.GATEWAY_ID, "message": text,
                 "remote_addr": work.source, "transport": link.transport, "command_id": doc["_id"],
                 "serial": ack.serial.upper(), "ack": ack.raw, "reason": reason,
                 "sent_via": {k: v for k, v in via.items() if k in ("transport", "address", "at")}}
        try:
            self.events.insert_one(event)
        except DuplicateKeyError:
            pass  # the same claim from the same address in the same millisecond: recorded once
        self._said("ack", doc["_id"], work.source)  # only once written: a retry after an error writes it

    def _apply_effects(self, link: Link, doc: Mapping[str, Any]) -> None:
        try:
            effects = ack_effects(doc.get("type"), doc.get("params"),  # type: ignore[arg-type]
                                  doc.get("acknowledged_at") or utcnow())
        except CommandError:
            return
        if not effects:
            return
        self.devices.set_now(doc["imei"], effects)
        sack = effects.get("sack_enable")
        if isinstance(sack, bool) and link.imei == doc["imei"]:
            link.set_sack(sack)
            log.info("%s: SACK %s by command %s", doc["imei"], "enabled" if sack else "disabled", doc["_id"],
                     extra=about(doc["imei"], command_id=doc["_id"]))

    def expect_answer(self, imei: str, report_type: str, command: Mapping[str, Any]) -> None:
        """The command just went out and asks for a report (locate -> GTRTL): the next one of that
        type on a link the command could have reached is its answer."""
        self.answers.setdefault(imei, {})[report_type] = (
            command["_id"], utcnow() + timedelta(seconds=ANSWER_WAIT_S), sent_via(command))

    def _record_answer(self, command_id: Any, report: Report, at: datetime) -> None:
        self.store.record_answer(command_id, report.type, report.raw, at)
        self.stats["answers"] += 1
        log.info("command %s answered by %s from %s", command_id, report.type, report.imei,
                 extra=about(report.imei, command_id=command_id))

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
                for report_type in [t for t, (_, until, _) in waiting.items() if until < now]:
                    del waiting[report_type]
                if not waiting:
                    del self.answers[imei]
            self.prune_serials()
            ticks = time.monotonic()
            for key in [k for k, (start, _) in self._rejected.items() if ticks - start > REJECTED_WINDOW_S]:
                del self._rejected[key]
