"""The batched write path: sessions hand documents to a bounded buffer, a few writer greenlets
flush it with `insert_many(ordered=False)` and j=true.

Measured on this machine: `insert_one` tops out near 2.6k durable docs/s, batches of 1000 from
several writers reach 24-34k docs/s. A session that must SACK waits on the `Batch` its documents
went into; a full buffer blocks `acquire()`, so sessions stop reading (backpressure) instead of
growing a queue. A failed flush is retried until it succeeds: nothing that was handed over is
dropped, and duplicate-key errors from a retry (or a resent frame) count as success.

The writers never die. A document that cannot be encoded as BSON (a value of a type BSON does
not know, an integer past 64 bits, a key with a NUL byte, more than 16 MB) would fail on every
retry: it is taken out of its batch and archived in `messages` as a refused frame with the
reason, and the rest of the batch is stored. A refusal is never refused in turn: if the server
refuses that archive entry too (a validator on `messages`, say), it is logged and dropped, and
the batch's waiters are released.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any, get_args

import gevent
from gevent.event import Event
from bson import ObjectId, encode
from pymongo.errors import BulkWriteError, PyMongoError

from ..logs import about
from ..protocol.connection import ArchiveKind
from .database import DB, EVENTS, MESSAGES, POSITIONS
from .documents import archive_doc
from .stats import MinuteCounts, MinuteLatency

log = logging.getLogger(__name__)

DUPLICATE_KEY = 11000
# A flush that has no answer after this long is waiting for the replica set (no primary, or no
# majority to confirm the write): worth one plain line in the log.
SLOW_FLUSH_S = 5.0
# A batch holds documents for at most three collections (positions, events, messages), written
# side by side: a writer needs that many connections.
COLLECTIONS_PER_BATCH = 3
# MongoDB's limit for one document.
MAX_BSON_BYTES = 16 * 1024 * 1024
# What a refused document's archive entry keeps of it when it has no `raw` text of its own.
REFUSED_RAW_CHARS = 2000


class Batch:
    """Documents that are flushed together; `done` is set once all of them are durable."""

    __slots__ = ("docs", "size", "opened", "done")

    def __init__(self) -> None:
        self.docs: dict[str, list[dict[str, Any]]] = {}
        self.size = 0
        self.opened = time.monotonic()
        self.done = Event()

    def add(self, collection: str, doc: dict[str, Any]) -> None:
        bucket = self.docs.get(collection)
        if bucket is None:
            self.docs[collection] = [doc]
        else:
            bucket.append(doc)
        self.size += 1


class _Waiter:
    __slots__ = ("n", "event")

    def __init__(self, n: int) -> None:
        self.n = n
        self.event = Event()


class BatchWriter:
    def __init__(self, db: DB, *, batch_size: int = 1000, interval_s: float = 0.05, buffer_limit: int = 20_000,
                 writers: int = 4, retry_max_s: float = 2.0, gateway_id: str = "") -> None:
        self.db = db
        self.gateway_id = gateway_id
        self.batch_size = batch_size
        self.interval_s = interval_s
        self.buffer_limit = max(buffer_limit, batch_size)
        self.writers = writers
        self.retry_max_s = retry_max_s
        self._open = Batch()
        self._ready: deque[Batch] = deque()
        self._queued = 0  # documents handed over and not yet durable (open + ready + in flight)
        self._wake = Event()
        self._waiters: deque[_Waiter] = deque()  # sessions waiting for room, in arrival order
        self._reserved = 0  # slots handed to woken waiters that have not run yet
        self._greenlets: list[gevent.Greenlet] = []
        self._stopping = False
        self.stored_in: dict[str, int] = {}  # documents stored since start, by collection
        self.duplicates = 0
        self.failures = 0
        self.rejected = 0
        self.unencodable = 0  # documents that could not be encoded, archived as refused frames instead
        self.refusals_dropped = 0  # archive entries of refused documents that could not be stored either
        self._refusal_ids: set[ObjectId] = set()  # `_id`s of the refusals being written now
        self._trouble_since: float | None = None  # MongoDB has not been confirming writes since
        self.write_latency = MinuteLatency()  # one insert_many, sent to confirmed
        self.waits = MinuteCounts()  # "backpressure_s": seconds sessions waited for room

    # --- the session side ---

    def acquire(self, n: int) -> None:
        """Wait until `n` more documents fit in the buffer (backpressure); then `put()` them before
        anything can yield. Waiters are served first come, first served, each for what it asked:
        woken all at once they would race for the space a flush frees, and under sustained
        backpressure some sessions would starve (their SACKs seconds late) while others never
        waited. A session asks for one turn's worth, so a burst on one connection waits its turn
        behind the others instead of making them wait behind all of it."""
        n = min(n, self.buffer_limit)
        if self._waiters or self._queued + self._reserved + n > self.buffer_limit:
            waiter = _Waiter(n)
            self._waiters.append(waiter)
            started = time.monotonic()
            waiter.event.wait()
            self._reserved -= n
            self.waits.add("backpressure_s", time.monotonic() - started)

    def put(self, collection: str, doc: dict[str, Any]) -> Batch:
        """Queue one document (the caller has `acquire()`d room for it); returns the batch it joined."""
        batch = self._open
        batch.add(collection, doc)
        self._queued += 1
        if batch.size >= self.batch_size:
            self._seal()
        elif batch.size == 1:
            self._wake.set()  # a writer starts the interval clock for this batch
        return batch

    @property
    def stored(self) -> int:
        return sum(self.stored_in.values())

    @property
    def queued(self) -> int:
        return self._queued

    def stats(self) -> dict[str, Any]:
        return {"stored": self.stored, "stored_in": dict(self.stored_in), "duplicates": self.duplicates,
                "refused": self.rejected, "unencodable": self.unencodable, "refusals_dropped": self.refusals_dropped,
                "failed_flushes": self.failures, "write_queue": self._queued,
                "waiting_sessions": len(self._waiters),
                "backpressure_s": round(self.waits.totals().get("backpressure_s", 0.0), 3),
                "backpressure_total_s": round(self.waits.since_start.get("backpressure_s", 0.0), 3),
                "mongo_write_ms": self.write_latency.percentiles()}

    # --- the writer side ---

    def start(self) -> None:
        self._greenlets = [gevent.spawn(self._run) for _ in range(self.writers)]

    def stop(self, timeout: float = 30.0) -> bool:
        """Flush everything queued, then stop the writers. True when all was flushed in time."""
        self._stopping = True
        if self._open.size:
            self._seal()
        self._wake.set()
        done = gevent.joinall(self._greenlets, timeout=timeout)
        left = [g for g in self._greenlets if g not in done]
        gevent.killall(left, block=False)
        log.info("writer stopped: %d documents stored, %d duplicates ignored, %d refused, %d failed flushes retried",
                 self.stored, self.duplicates, self.rejected, self.failures)
        if left or self._queued:
            log.error("writer stopped with %d documents not flushed", self._queued)
            return False
        return True

    def _seal(self) -> None:
        self._ready.append(self._open)
        self._open = Batch()
        self._wake.set()

    def _next_batch(self) -> Batch | None:
        while True:
            if self._ready:
                return self._ready.popleft()
            if self._open.size:
                age = time.monotonic() - self._open.opened
                if age >= self.interval_s or self._stopping:
                    self._seal()
                    continue
                self._wake.clear()
                self._wake.wait(self.interval_s - age)
                continue
            if self._stopping:
                return None
            self._wake.clear()
            self._wake.wait()

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._flush(batch)
            # Sessions keep their batches until they have sent the SACKs; the documents
            # themselves are no longer needed. Under overload a thousand sessions each hold a
            # read's worth of flushed batches: without this the gateway grew past 1 GB.
            batch.docs = {}
            self._queued -= batch.size
            batch.done.set()
            while self._waiters and self._queued + self._reserved + self._waiters[0].n <= self.buffer_limit:
                waiter = self._waiters.popleft()
                self._reserved += waiter.n  # the room is this waiter's until it runs
                waiter.event.set()

    def _flush(self, batch: Batch) -> None:
        slow = gevent.spawn_later(SLOW_FLUSH_S, self._trouble,
                                  f"no confirmation within {SLOW_FLUSH_S:.0f}s (waiting for a primary, or for a "
                                  "majority of the replica set to have the write)")
        try:
            self._flush_until_stored(batch)
        finally:
            slow.kill(block=False)
        if self._trouble_since is not None:
            log.warning("MongoDB confirms writes again after %.1fs; %d documents still queued",
                        time.monotonic() - self._trouble_since, self._queued - batch.size)
            self._trouble_since = None

    def _trouble(self, reason: str) -> None:
        """Say once, plainly, that writes wait (an outage, an election, no majority); not per flush."""
        if self._trouble_since is None:
            self._trouble_since = time.monotonic()
            log.warning("MongoDB cannot confirm writes now: %s. Holding %d documents and retrying; "
                        "no SACK goes out for them until they are stored", reason, self._queued)

    def _flush_until_stored(self, batch: Batch) -> None:
        delay = 0.05
        pending = dict(batch.docs)
        refusals: list[dict[str, Any]] = []  # archive entries for documents that cannot be stored
        made: list[ObjectId] = []  # their `_id`s: a refusal that is refused too is dropped, not refused again
        try:
            self._store(pending, refusals, made, delay)
        finally:
            self._refusal_ids.difference_update(made)

    def _store(self, pending: dict[str, list[dict[str, Any]]], refusals: list[dict[str, Any]],
               made: list[ObjectId], delay: float) -> None:
        while pending:
            # The batch's collections are written side by side: a report's position and its raw
            # frame are durable after one journal wait, not two in a row (the SACK waits for both).
            names = list(pending)
            if len(names) == 1:
                written = [self._try_insert(names[0], pending[names[0]], refusals)]
            else:
                jobs = [gevent.spawn(self._try_insert, name, pending[name], refusals) for name in names]
                gevent.joinall(jobs)
                written = [job.value for job in jobs]
            for name, ok in zip(names, written):
                if ok:
                    del pending[name]
            if refusals:
                # Stored with the batch: whoever waits for it is released once the refusal is durable.
                for refusal in refusals:
                    made.append(refusal["_id"])
                    self._refusal_ids.add(refusal["_id"])
                pending.setdefault(MESSAGES, []).extend(refusals)
                refusals.clear()
                continue  # what failed was those documents, not MongoDB: try the rest at once
            if pending:
                gevent.sleep(delay)
                delay = min(delay * 2, self.retry_max_s)

    def _try_insert(self, name: str, docs: list[dict[str, Any]], refusals: list[dict[str, Any]]) -> bool:
        """Insert `docs`; False to try again later. Documents that cannot be encoded are taken out
        of `docs` and their archive entries added to `refusals` (False: the rest is tried again)."""
        started = time.monotonic()
        try:
            self._insert(name, docs, refusals)
            self.write_latency.add(time.monotonic() - started)
            return True
        except PyMongoError as exc:
            self.failures += 1
            if self._trouble_since is None:
                self._trouble(f"{type(exc).__name__}: {str(exc)[:300]}")
            else:
                log.debug("flush of %d %s documents failed again: %s", len(docs), name, exc)
            return False
        except Exception as exc:  # bson's InvalidDocument, DocumentTooLarge, OverflowError, ...
            self.failures += 1
            if not self._refuse_unencodable(name, docs, refusals):
                # Not one document's fault (none fails alone): retried like an outage, so nothing
                # handed over is dropped and no SACK goes out for it; said once, not per retry.
                if self._trouble_since is None:
                    log.exception("flush of %d %s documents failed", len(docs), name)
                    self._trouble(f"{type(exc).__name__}: {str(exc)[:300]}")
            return False

    def _refuse_unencodable(self, name: str, docs: list[dict[str, Any]], refusals: list[dict[str, Any]]) -> bool:
        """Take the documents that cannot be encoded out of `docs`; True when there were some."""
        codec = self.db[name].codec_options
        kept: list[dict[str, Any]] = []
        found = False
        for doc in docs:
            try:
                size = len(encode(doc, codec_options=codec))
                reason = f"{size} bytes, more than MongoDB's {MAX_BSON_BYTES} per document" \
                    if size > MAX_BSON_BYTES else None
            except Exception as exc:
                reason = f"{type(exc).__name__}: {str(exc)[:300]}"
            if reason is None:
                kept.append(doc)
                continue
            found = True
            if self._dropped_refusal(name, doc, reason):
                continue
            self.unencodable += 1
            refusal = self._refusal(name, doc, f"not stored: the {name} document cannot be encoded ({reason})")
            refusals.append(refusal)
            n = self.unencodable
            if n in (1, 10, 100) or n % 1000 == 0:
                log.error("%s: a %s document cannot be stored (%s); archived as a refused frame (%d so far)",
                          refusal["imei"] or "-", name, reason, n,
                          extra=about(refusal["imei"], refusal["remote_addr"]))
        docs[:] = kept
        return found

    def _refusal(self, name: str, doc: dict[str, Any], reason: str) -> dict[str, Any]:
        """The archive entry that stands for a document that cannot be stored: only values that
        are sure to encode (text, a datetime)."""
        imei = doc.get("imei")
        raw = doc.get("raw")
        if not isinstance(raw, str) or len(raw) > REFUSED_RAW_CHARS:
            try:
                text = repr(doc if not isinstance(raw, str) else raw)
            except Exception:
                text = f"<a {name} document>"
            raw = text[:REFUSED_RAW_CHARS]
        raw = _safe_text(raw)
        at = doc.get("received_at", doc.get("at"))
        kind: ArchiveKind = "report" if name in (POSITIONS, EVENTS) else "other"
        if name == MESSAGES and doc.get("kind") in get_args(ArchiveKind):
            kind = doc["kind"]
        refusal = archive_doc(
            imei=imei if isinstance(imei, str) and imei.isdigit() else None,
            direction="out" if doc.get("direction") == "out" else "in", raw=raw,
            at=at if isinstance(at, datetime) else datetime.now(timezone.utc),
            kind=kind,
            status="rejected", error=_safe_text(reason),
            remote_addr=doc["remote_addr"] if isinstance(doc.get("remote_addr"), str) else None,
            gateway_id=self.gateway_id)
        refusal["_id"] = ObjectId()  # how a refusal is known if it comes back refused
        return refusal

    def _dropped_refusal(self, name: str, doc: dict[str, Any], reason: str) -> bool:
        """A refused document that is itself the archive entry of a refused one is dropped, with
        a log line: refusing it again would go round for ever, and its batch would never be done."""
        if name != MESSAGES or doc.get("_id") not in self._refusal_ids:
            return False
        self.refusals_dropped += 1
        log.error("%s: the archive entry of a document that could not be stored was refused too (%s); "
                  "dropped: %r", doc.get("imei"), reason, str(doc.get("error"))[:300],
                  extra=about(doc.get("imei") if isinstance(doc.get("imei"), str) else None))
        return True

    def _insert(self, name: str, docs: list[dict[str, Any]], refusals: list[dict[str, Any]]) -> None:
        try:
            result = self.db[name].insert_many(docs, ordered=False)
            self.stored_in[name] = self.stored_in.get(name, 0) + len(result.inserted_ids)
        except BulkWriteError as exc:
            if exc.details.get("writeConcernErrors"):
                raise  # not known to be durable: insert the whole batch again
            errors = exc.details.get("writeErrors", [])
            self.stored_in[name] = self.stored_in.get(name, 0) + exc.details.get("nInserted", 0)
            for err in errors:
                if err.get("code") == DUPLICATE_KEY:
                    self.duplicates += 1
                else:
                    # A document the server refuses as such (it would fail on every retry): retrying
                    # would stall the whole write path, so it is archived as a refused frame instead.
                    doc = err.get("op") or {}
                    if self._dropped_refusal(name, doc, str(err.get("errmsg"))[:300]):
                        continue
                    self.rejected += 1
                    imei = doc.get("imei") if isinstance(doc.get("imei"), str) else None
                    log.error("%s refused a document: %s (%s)", name, err.get("errmsg"), imei, extra=about(imei))
                    refusals.append(self._refusal(name, doc, f"not stored: MongoDB refused the {name} document "
                                                             f"({str(err.get('errmsg'))[:300]})"))


def _safe_text(text: str) -> str:
    # A lone surrogate (text decoded with surrogateescape) cannot be encoded as UTF-8.
    return text.encode("utf-8", "replace").decode("utf-8")
