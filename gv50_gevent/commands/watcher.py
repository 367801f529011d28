"""The change stream on `commands`, which keeps the registry current, and its resume token.

One greenlet. It opens `watch()` (resuming from the stored token if there is one), and when it
must, sweeps the collection once *after* opening the stream, so nothing falls between the two.
It then loops on `try_next()` with `max_await_time_ms`, so a stop request is noticed within
about half a second.

It sweeps at process start (the registry is empty then), after an `invalidate`, and when the
token has fallen out of the oplog (ChangeStreamHistoryLost, code 286, or ChangeStreamFatalError,
code 280). A network error or a primary step-down only costs a backoff and a reopen from the
last token handled: the changes in between are replayed, and handling them twice is harmless.

The token lives in `gateway_state`, one document per gateway:
`{_id: "commands_watcher:<GATEWAY_ID>", resume_token, gateway_id, updated_at}`. It is written at
most every `persist_interval_s` after handled changes, every `idle_persist_s` while idle (the
postBatchResumeToken keeps moving, so the token stays inside the oplog window), and on stop. A
gateway restarted with the same GATEWAY_ID resumes where it stopped; one with a new GATEWAY_ID
(the default `<hostname>-<pid>` changes on every start) finds no token and relies on its sweep.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any, Protocol

import gevent
from gevent.event import Event
from pymongo.collection import Collection
from pymongo.errors import OperationFailure, PyMongoError

from ..storage.database import COMMANDS, DB, GATEWAY_STATE, Document
from .store import utcnow

log = logging.getLogger(__name__)

# The token is no longer in the oplog (or can never resume): start over with a sweep.
HISTORY_LOST_CODES = frozenset({280, 286})
PIPELINE: list[dict[str, Any]] = [{"$match": {"operationType": {"$in": ["insert", "update", "replace", "delete"]}}}]
MAX_BACKOFF_S = 10.0


class ChangeHandler(Protocol):
    def sweep(self) -> None: ...
    def change(self, change: Mapping[str, Any]) -> None: ...


class CommandWatcher:
    def __init__(self, db: DB, gateway_id: str, handler: ChangeHandler, *, max_await_ms: int = 500,
                 persist_interval_s: float = 0.5, idle_persist_s: float = 30.0, name: str = "commands",
                 source: Collection[Document] | DB | None = None, pipeline: list[dict[str, Any]] | None = None) -> None:
        # `source`/`pipeline`/`name`: the same loop follows other changes too (the fleet room
        # watches `profiles` and `devices.group`), with its own token `<name>_watcher:<GATEWAY_ID>`.
        self.coll: Collection[Document] | DB = source if source is not None else db[COMMANDS]
        self.pipeline = pipeline if pipeline is not None else PIPELINE
        self.name = name
        self.state = db[GATEWAY_STATE]
        self.state_id = f"{name}_watcher:{gateway_id}"
        self.gateway_id = gateway_id
        self.handler = handler
        self.max_await_ms = max_await_ms
        self.persist_interval_s = persist_interval_s
        self.idle_persist_s = idle_persist_s
        self.ready = Event()  # set once the first sweep is done
        self.changes = 0
        self.sweeps = 0
        self.errors = 0
        self._token: Mapping[str, Any] | None = None
        self._persisted: Mapping[str, Any] | None = None
        self._persisted_at = 0.0
        self._need_sweep = True
        self._stopping = Event()
        self._greenlet: gevent.Greenlet | None = None
        self._persister: gevent.Greenlet | None = None

    # --- lifecycle ---

    def start(self) -> None:
        self._greenlet = gevent.spawn(self._run)

    def stop(self, timeout: float = 3.0) -> None:
        self._stopping.set()
        if self._greenlet is not None:
            self._greenlet.join(timeout)
            if not self._greenlet.dead:
                self._greenlet.kill(block=True, timeout=2)
            self._greenlet = None
        if self._persister is not None:
            self._persister.join(timeout)
        self._persist(force=True)

    # --- the loop ---

    def _run(self) -> None:
        self._token = self._load_token()
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                self._follow()
                backoff = 0.5
            except OperationFailure as exc:
                if exc.code in HISTORY_LOST_CODES:
                    log.warning("%s change stream cannot resume (%s, code %s): sweeping again", self.name,
                                exc.details.get("codeName") if exc.details else "", exc.code)
                    self._forget_token()
                    continue
                backoff = self._failed(exc, backoff)
            except PyMongoError as exc:
                backoff = self._failed(exc, backoff)
            except Exception:  # a bug in a handler must not end command delivery for good
                log.exception("%s watcher failed; restarting it", self.name)
                backoff = self._failed(None, backoff)

    def _failed(self, exc: Exception | None, backoff: float) -> float:
        self.errors += 1
        if exc is not None:
            log.warning("%s change stream error, reopening in %.1fs from the last token: %s", self.name, backoff,
                        exc)
        self._stopping.wait(backoff)
        return min(backoff * 2, MAX_BACKOFF_S)

    def _follow(self) -> None:
        options: dict[str, Any] = {"full_document": "updateLookup", "max_await_time_ms": self.max_await_ms}
        if self._token is not None:
            options["resume_after"] = self._token
        with self.coll.watch(self.pipeline, **options) as stream:
            if self._token is not None and self.sweeps == 0:
                log.info("%s change stream resumed from the stored token", self.name)
            if self._need_sweep:
                self.handler.sweep()
                self.sweeps += 1
                self._need_sweep = False
                self._note(stream.resume_token, handled=True)
                self.ready.set()
            while not self._stopping.is_set():
                change = stream.try_next()
                if change is None:
                    self._note(stream.resume_token, handled=False)
                    if not stream.alive:
                        return
                    continue
                if change.get("operationType") == "invalidate":
                    log.warning("%s change stream invalidated (collection dropped or renamed): sweeping again",
                                self.name)
                    self._forget_token()
                    return
                self.handler.change(change)
                self.changes += 1
                self._note(stream.resume_token, handled=True)

    # --- the resume token ---

    def _note(self, token: Mapping[str, Any] | None, handled: bool) -> None:
        if token is None:
            return
        self._token = token
        interval = self.persist_interval_s if handled or self._persisted is None else self.idle_persist_s
        if time.monotonic() - self._persisted_at >= interval and (self._persister is None or self._persister.dead):
            self._persister = gevent.spawn(self._persist)

    def _persist(self, force: bool = False) -> None:
        token = self._token
        if token is None or token == self._persisted:
            return
        try:
            self.state.update_one({"_id": self.state_id},
                                  {"$set": {"resume_token": token, "gateway_id": self.gateway_id,
                                            "updated_at": utcnow()}}, upsert=True)
        except PyMongoError as exc:
            log.warning("could not store the %s resume token%s: %s", self.name, " on stop" if force else "", exc)
            return
        self._persisted = token
        self._persisted_at = time.monotonic()

    def _load_token(self) -> Mapping[str, Any] | None:
        while not self._stopping.is_set():
            try:
                doc = self.state.find_one({"_id": self.state_id})
            except PyMongoError as exc:
                log.warning("cannot read the %s resume token, retrying: %s", self.name, exc)
                self._stopping.wait(1.0)
                continue
            token = doc.get("resume_token") if doc else None
            self._persisted = token
            return token
        return None

    def _forget_token(self) -> None:
        self._token = None
        self._need_sweep = True
        try:
            self.state.update_one({"_id": self.state_id}, {"$unset": {"resume_token": ""}})
        except PyMongoError as exc:
            log.warning("could not clear the %s resume token: %s", self.name, exc)
        self._persisted = None
