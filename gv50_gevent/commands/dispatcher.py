"""Dispatch: one greenlet per device that is connected here and has open commands.

The worker takes the device's oldest open command and drives it one step. It works from the
registry's copy of the command when it has one (the change stream brought it, so the operator's
insert reaches the tracker with one durable write and no read); after a step that changed the
command or lost a compare-and-set, it reads the device's open commands from MongoDB instead:

- not normalised yet -> normalise it;
- `pending` past its deadline -> `expired`; invalid -> `failed`; else claim it (`sent`, attempt 1)
  and write it to the session;
- `sent` on this connection (the claim records the session) -> wait for the ACK until
  `sent_at + COMMAND_ACK_TIMEOUT_S`, then resend with the same serial, or `failed` after
  max_attempts;
- `sent` on an earlier connection, here or by another gateway (alive or dead) -> take it over:
  resend, or `failed` if its attempts are used up.

Only the next command of a device is ever in flight, so commands go out one at a time in
`created_at` order. The worker ends when the device has nothing open, or when its session ends;
its timers are its own waits, so there is nothing else to clean up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol

import gevent
from gevent.event import Event
from pymongo.errors import PyMongoError

from ..config import Settings
from ..logs import about
from ..protocol.commands import CommandError, answer_type, encode_command
from .link import Link, sent_via, to_ms
from .registry import CommandRegistry
from .store import CommandStore, Doc, created_at_of, first_open, problem_of, utcnow

log = logging.getLogger(__name__)

# Another gateway's `sent` command that it should have resent by now is taken over after this.
TAKEOVER_GRACE_S = 1.0
MAX_BACKOFF_S = 10.0
ACK_PENDING_RECHECK_S = 1.0


class WorkerHost(Protocol):
    """What a worker needs of the service that runs it (`service.CommandService`)."""

    settings: Settings
    store: CommandStore
    registry: CommandRegistry

    def recent_serials(self, imei: str) -> set[str]: ...
    def used_serial(self, imei: str, serial: str) -> None: ...
    def ack_pending(self, imei: str, serial: str, via: Mapping[str, Any]) -> bool: ...
    def expect_answer(self, imei: str, report_type: str, command: Mapping[str, Any]) -> None: ...
    def worker_done(self, worker: DeviceWorker) -> None: ...
    def sent_new(self, command_id: Any, claim_started: float, claimed: float, sent: float) -> None: ...


class DeviceWorker:
    def __init__(self, service: WorkerHost, session: Link) -> None:
        assert session.imei is not None
        self.service = service
        self.store = service.store
        self.session = session
        self.imei: str = session.imei
        self.ack_timeout = timedelta(seconds=service.settings.COMMAND_ACK_TIMEOUT_S)
        self._wake = Event()
        self._stopped = False
        self._copies_current = True  # False: the registry's copies may be behind; read MongoDB
        self.greenlet: gevent.Greenlet | None = None

    # --- control, from any greenlet ---

    def start(self) -> None:
        self.greenlet = gevent.spawn(self._run)

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()

    @property
    def running(self) -> bool:
        return not self._stopped and self.greenlet is not None and not self.greenlet.dead

    # --- the loop ---

    def _run(self) -> None:
        registry = self.service.registry
        backoff = 0.5
        try:
            while not self._stopped and self.session.closing is None:
                version = registry.version(self.imei)
                self._wake.clear()  # before reading: a change that lands during the read wakes us again
                try:
                    doc = self._look()
                    if doc is None:
                        if registry.drop(self.imei, version) or not registry.has(self.imei):
                            return
                        continue
                    self._copies_current = False  # until the step says otherwise (it may raise)
                    wait = self._step(doc)
                    self._copies_current = wait > 0
                    backoff = 0.5
                except ConnectionError:  # the link is gone: the next connection takes over
                    return
                except PyMongoError as exc:
                    log.warning("commands for %s: MongoDB error, retrying in %.1fs: %s", self.imei, backoff, exc,
                                extra=about(self.imei))
                    wait, backoff = backoff, min(backoff * 2, MAX_BACKOFF_S)
                except Exception:  # a bug must not stop this device's commands for good
                    log.exception("command worker for %s failed, retrying in %.1fs", self.imei, backoff,
                                  extra=about(self.imei))
                    wait, backoff = backoff, min(backoff * 2, MAX_BACKOFF_S)
                if wait > 0:
                    self._wake.wait(wait)
        finally:
            self.service.worker_done(self)

    def _look(self) -> Doc | None:
        registry = self.service.registry
        if self._copies_current:
            docs = registry.documents(self.imei)
            if docs:
                return first_open(docs)
        self._copies_current = True
        return self.store.next_open(self.imei)

    def _step(self, doc: Doc) -> float:
        """Drive the command one step; returns how long to wait before the next look (0: at once)."""
        now = utcnow()
        if "attempts" not in doc:
            if doc.get("status") is not None or problem_of(doc) is not None:
                self.store.normalise(doc)  # the operator chose a status, or it can never be sent
                return 0
            doc = {**doc, "created_at": created_at_of(doc, now)}  # claimed (and normalised) below
        status = doc.get("status")
        if status in ("pending", None):
            deadline = self.store.expires_at(doc)
            if deadline is not None and deadline <= now:
                self.store.transition(doc, "expired", note={"expires_at": deadline}, now=now)
                return 0
            return self._send(doc, takeover_from=None)
        # `sent`: on this connection, or left over from an earlier connection here or elsewhere.
        sent_at: datetime | None = doc.get("sent_at")
        attempts = int(doc.get("attempts") or 0)
        ours = doc.get("gateway_id") == self.store.gateway_id
        mine = ours and doc.get("session_id") == self.session.id
        if mine:
            assert sent_at is not None
            due = sent_at + self.ack_timeout
            if now < due:
                return (due - now).total_seconds()
        elif not ours and sent_at is not None and sent_at >= self._connected_ms():
            # Another gateway sent it while this connection was open: a second connection of the
            # same device is alive there. Leave it to that gateway unless it stops resending.
            due = sent_at + self.ack_timeout + timedelta(seconds=TAKEOVER_GRACE_S)
            if now < due:
                return (due - now).total_seconds()
        if self.service.ack_pending(self.imei, str(doc.get("serial")), sent_via(doc)):
            # Its ACK has arrived and is being written (MongoDB may be slow or electing): a command
            # whose ACK arrived is never sent again, nor failed. The ACK's writer wakes us.
            return ACK_PENDING_RECHECK_S
        # Otherwise resend now: it went to an earlier connection of the device (here too, that
        # connection may have been dead already: a tracker that reconnects while this gateway
        # waits for MongoDB leaves its old connection behind, and the write to it fails), or
        # the gateway that sent it stopped resending.
        max_attempts = self.store.max_attempts(doc)
        if attempts >= max_attempts:
            self.store.fail(doc, f"no ACK after {attempts} attempts")
            return 0
        deadline = self.store.expires_at(doc)
        if deadline is not None and deadline <= now:
            # An immobiliser must never fire late: no resend past the deadline either.
            self.store.fail(doc, f"expired at {deadline.isoformat()} without ACK after {attempts} attempts")
            return 0
        return self._send(doc, takeover_from=None if mine else str(doc.get("gateway_id")))

    def _connected_ms(self) -> datetime:
        return to_ms(self.session.connected_at)

    def _send(self, doc: Doc, takeover_from: str | None) -> float:
        if self.session.closing is not None:
            raise ConnectionError(self.session.closing)
        serial = doc.get("serial")
        if serial is None:
            serial = self.store.pick_serial(self.imei, self.service.recent_serials(self.imei),
                                            len(self.service.registry.for_imei(self.imei)) > 1)
            self.service.used_serial(self.imei, serial)
        password = self.session.password or self.service.settings.DEVICE_PASSWORD
        try:
            data = encode_command(doc.get("type"), doc.get("params"), password=password, serial=serial)  # type: ignore[arg-type]
        except CommandError as exc:
            self.store.fail(doc, str(exc))
            return 0
        via = {"transport": self.session.transport, "address": self.session.remote_addr}
        started = time.monotonic()
        claimed = self.store.claim(doc, serial, self.session.id, via=via, takeover_from=takeover_from)
        if claimed is None:
            return 0  # changed meanwhile (cancelled, acknowledged, another gateway): look again
        written = time.monotonic()
        self.service.registry.upsert(self.store.open_entry(claimed))
        # A connection that breaks from here on costs this attempt; the next connection resends.
        self.session.send(data, "command")
        if claimed.get("attempts") == 1:
            self.service.sent_new(claimed["_id"], started, written, time.monotonic())
        answer = answer_type(claimed["type"], claimed.get("params"))
        if answer is not None:
            self.service.expect_answer(self.imei, answer, claimed)
        return self.ack_timeout.total_seconds()
