"""The reconciler: from the wanted settings (profiles) to what each tracker is set to.

Each gateway works only on the trackers whose connection it holds. For one of them it compares
the wanted values (`fleet.profiles.resolve`) with the configuration shadow (`devices.config`),
and queues at most one rollout command at a time through the ordinary command system: a
`commands` document with `source: "profile:<name>"`, which the dispatcher sends after the
operator's own commands. Once every block matches, a settings dump (`get_config`) confirms it.

`devices.config_state` = `{state, since, reason, tries, key, step, retry_at, seq}`:
- `in_sync`: every wanted value confirmed by the tracker's own settings dump;
- `applying`: a command is on its way (or waits for its retry);
- `waiting_offline`: the tracker is not connected; it converges when it next connects;
- `drifted`: it was in sync, and a dump shows a value that is no longer the wanted one (a factory
  reset, an SMS); the values are applied again;
- `failed`: a block did not take after FLEET_MAX_TRIES tries (the reason says why), or the
  tracker reports over HTTP and cannot receive commands.
`tries` counts the tries per step (a block, or `dump`) that did not work: a command that failed or
was not answered, a block the tracker acknowledged but does not show, since the wanted values last
changed (or since the last drift); a dump that came back resets its count. `step` is the step
`retry_at` belongs to: the next step does not wait for the last one's backoff. `key` fingerprints
the wanted values, so a changed profile starts over. `seq` counts the commands queued: queueing
one is a compare-and-set on it, so two gateways (or a stale link) never both queue.

A profile edited into an invalid one (by hand, in MongoDB) is not dropped: its last valid
version stays in use, with one log line, until it is corrected or deleted.

What wakes a tracker's evaluation: its connection or disconnection, a change of one of its rollout
commands (change stream), a stored settings dump, a profile or `devices.group` change (a second
change stream, on `profiles` and `devices`; removing a tracker's `config_state` starts it over),
its own retry timer (one per tracker: the earliest), and a look at every tracker
every REFRESH_EVERY_S while profiles exist. A connected tracker in sync is asked for a settings
dump every FLEET_RECHECK_S (each tracker at its own moment within 10 % more, so a fleet that
connected together is not rechecked together), and after it reconnects if its last dump is older.
Evaluations of one tracker never overlap; a bounded set of worker greenlets runs them, and a
token bucket bounds the rollout commands this gateway queues per second (FLEET_COMMANDS_PER_S).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import deque
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Final

import gevent
from gevent.event import Event
from pymongo import DESCENDING
from pymongo.errors import PyMongoError

from ..commands.lifecycle import OPEN_STATUSES, cancel_command, insert_command, new_command
from ..commands.link import Link, Links
from ..commands.registry import is_open
from ..commands.store import ROLLOUT_PREFIX
from ..commands.watcher import CommandWatcher
from ..config import Settings
from ..logs import about
from ..protocol.commands import validate_command
from ..storage.database import COMMANDS, DB, DEVICES, PROFILES
from .profiles import (
    SETTABLE, STATES, Comparison, Profile, ProfileError, Target, check_profile, command_for, compare, describe,
    fingerprint, public_target, resolve, same, unknown_defaults,
)

log = logging.getLogger(__name__)

WORKERS: Final = 20                # evaluations at once
EFFECTS_WAIT_S: Final = 5.0        # after an ACK, how long the command's effects may take to show
DUMP_WAIT_S: Final = 30.0          # after get_config's ACK, how long its dump may take to arrive
ONLINE_EVERY_S: Final = 30.0       # a tracker's own connection (same link) is looked at no more often
MAX_REMEMBERED: Final = 200_000    # trackers whose last look is remembered for that
REFRESH_EVERY_S: Final = 600.0     # and every so often anyway: what no event announced (an HTTP tracker's first report)
REFRESH_DELAY_S: Final = 0.2       # profile changes that come together are handled together
MAX_BACKOFF_S: Final = 86400.0     # the longest wait between two tries of a step
RECHECK_SPREAD: Final = 0.1        # periodic dumps: each tracker within FLEET_RECHECK_S and 10 % more
HTTP_REASON: Final = ("reports over HTTP (report mode 8), which cannot carry commands: change its settings by SMS "
                      "or with the manage tool")
OFFLINE_REASON: Final = "not connected: its settings go out when it next connects"
SERVER_ACKED: Final = ("server settings acknowledged (a settings dump confirms them if the tracker comes back "
                       "here)")
PIPELINE: Final[list[dict[str, Any]]] = [{"$match": {"$or": [
    {"ns.coll": PROFILES},
    {"ns.coll": DEVICES, "operationType": "update", "$or": [
        {"updateDescription.updatedFields.group": {"$exists": True}},
        {"updateDescription.removedFields": {"$in": ["group", "config_state"]}}]},
]}}]
LAST: Final = "sri"                # set last, once the rest is confirmed: a new server takes the tracker away
BLOCK_OF_COMMAND: Final[dict[str, str]] = {command: block for block, command in SETTABLE.items()}
DEVICE_FIELDS: Final = {"group": 1, "online": 1, "gateway_id": 1, "transport": 1, "config": 1, "config_secrets": 1,
                        "config_target": 1, "config_state": 1}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def target_key(public: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(public, sort_keys=True, default=str).encode()).hexdigest()[:12]


def backoff_s(retry_s: float, failed: int) -> float:
    """The wait before the next try of a step that failed `failed` times: doubling, at most a day."""
    return float(min(MAX_BACKOFF_S, retry_s * 2 ** min(max(failed - 1, 0), 40)))


def spread(imei: str) -> float:
    """A fixed fraction in [0, 1) for each tracker: spreads periodic work over the fleet."""
    return int(hashlib.sha256(imei.encode()).hexdigest()[:8], 16) / 2 ** 32


class RateLimit:
    """A token bucket: `take()` waits (this greenlet only) until a token is free."""

    def __init__(self, per_s: float, burst: float | None = None) -> None:
        self.per_s = per_s
        self.burst = burst if burst is not None else max(1.0, per_s)
        self.tokens = self.burst
        self.at = time.monotonic()

    def take(self) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.at) * self.per_s)
            self.at = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            gevent.sleep((1 - self.tokens) / self.per_s)


class Reconciler:
    def __init__(self, settings: Settings, db: DB, links: Links) -> None:
        self.settings = settings
        self.gateway_id = settings.GATEWAY_ID
        self.links = links
        self.profiles_coll = db[PROFILES]
        self.devices = db[DEVICES]
        self.commands = db[COMMANDS]
        self.watcher = CommandWatcher(db, settings.GATEWAY_ID, self, name="profiles", source=db,
                                      pipeline=PIPELINE)
        self.profiles: dict[str, Profile] = {}
        self.limit = RateLimit(settings.FLEET_COMMANDS_PER_S)
        self.stats = {"evaluations": 0, "commands": 0, "dumps_asked": 0, "errors": 0}
        self._queue: deque[str] = deque()
        self._queued: set[str] = set()
        self._busy: set[str] = set()
        self._again: set[str] = set()
        self._work = Event()
        self._refresh = Event()
        self._stopping = Event()
        self._greenlets: list[gevent.Greenlet] = []
        self._online_at: dict[str, float] = {}
        self._online_link: dict[str, str] = {}
        self._timers: dict[str, tuple[float, gevent.Greenlet]] = {}  # one per tracker: the earliest
        self._written: dict[str, str] = {}   # the state last written (or found) by an evaluation
        self._held: dict[str, str] = {}      # config_state.state of the trackers connected here
        self._rejected: dict[str, str] = {}  # profile -> the problems last logged (one line per edit)

    # --- lifecycle ---

    def start(self) -> None:
        self.watcher.start()
        self._greenlets = [gevent.spawn(self._worker) for _ in range(WORKERS)]
        self._greenlets.append(gevent.spawn(self._refresher))

    def stop(self, timeout: float = 3.0) -> None:
        self._stopping.set()
        self._work.set()
        self._refresh.set()
        self.watcher.stop(timeout)
        gevent.joinall(self._greenlets, timeout=timeout)
        gevent.killall([g for g in self._greenlets if not g.dead], block=True, timeout=2)
        timers = [g for _, g in self._timers.values()]
        self._timers.clear()
        gevent.killall(timers, block=False)

    def state_counts(self) -> dict[str, int]:
        """Trackers connected here, by `config_state.state` (from memory: cheap enough for every
        scrape). A tracker no profile applies to is not counted."""
        counts = dict.fromkeys(STATES, 0)
        for state in self._held.values():
            if state in counts:
                counts[state] += 1
        return counts

    # --- what wakes a tracker (never blocks the caller) ---

    def poke(self, imei: str, urgent: bool = False) -> None:
        """Evaluate this tracker soon. `urgent`: one of its own rollout steps just ended, so it goes
        before the trackers a profile change queued: each tracker finishes its rollout in a few
        seconds, rather than all of them together at the end."""
        if imei in self._busy:
            self._again.add(imei)
        elif imei not in self._queued:
            self._queued.add(imei)
            if urgent:
                self._queue.appendleft(imei)
            else:
                self._queue.append(imei)
            self._work.set()

    def device_online(self, link: Link) -> None:
        # A UDP tracker is "online" again with every datagram: look at it at most every
        # ONLINE_EVERY_S for that (a queued command needs no look: the dispatcher delivers it).
        imei = link.imei
        if imei is None:
            return
        now = time.monotonic()
        if now - self._online_at.get(imei, -ONLINE_EVERY_S) < ONLINE_EVERY_S and self._online_link.get(imei) == link.id:
            return
        if len(self._online_at) > MAX_REMEMBERED:
            self._online_at.clear()
            self._online_link.clear()
        self._online_at[imei] = now
        self._online_link[imei] = link.id
        self.poke(imei)

    def device_offline(self, link: Link) -> None:
        if link.imei is not None:
            self.poke(link.imei)

    def rollout_changed(self, doc: Mapping[str, Any]) -> None:
        imei = doc.get("imei")
        if isinstance(imei, str) and not is_open(doc):
            self.poke(imei, urgent=True)

    def settings_stored(self, imei: str) -> None:
        self.poke(imei, urgent=True)

    # --- the profiles change stream (ChangeHandler) ---

    def sweep(self) -> None:
        profiles: dict[str, Profile] = {}
        for doc in self.profiles_coll.find():
            profile = self._checked(doc)
            if profile is not None:
                profiles[profile.name] = profile
        self.profiles = profiles
        log.info("fleet: %d profiles in use", len(profiles))
        self._refresh.set()

    def change(self, change: Mapping[str, Any]) -> None:
        ns = change.get("ns") or {}
        key = (change.get("documentKey") or {}).get("_id")
        if ns.get("coll") == DEVICES:
            if isinstance(key, str):
                self.poke(key)
            return
        doc = change.get("fullDocument")
        if doc is None:  # deleted (or deleted since this change)
            self.profiles.pop(str(key), None)
            self._rejected.pop(str(key), None)
        else:
            profile = self._checked(doc)
            if profile is not None:
                self.profiles[profile.name] = profile
        self._refresh.set()

    def _checked(self, doc: Mapping[str, Any]) -> Profile | None:
        """The profile, or None when it is not valid: then its last valid version stays in use
        (in `self.profiles`), and one line says so (once per distinct set of problems)."""
        name = str(doc.get("_id"))
        try:
            profile = check_profile(doc)
        except ProfileError as exc:
            problems = "; ".join(exc.problems)
            if self._rejected.get(name) != problems:
                self._rejected[name] = problems
                kept = "its last valid version stays in use" if name in self.profiles else "it is not used"
                log.warning("fleet: profile %r is not valid, %s until it is corrected: %s", name, kept, problems)
            return self.profiles.get(name)
        self._rejected.pop(name, None)
        return profile

    def _refresher(self) -> None:
        while not self._stopping.is_set():
            changed = self._refresh.wait(REFRESH_EVERY_S)
            if self._stopping.is_set():
                return
            if not changed and not self.profiles:
                continue
            self._stopping.wait(REFRESH_DELAY_S)
            self._refresh.clear()
            try:
                self._refresh_all()
            except PyMongoError as exc:
                log.warning("fleet: could not read the devices, trying again: %s", exc)
                self._stopping.wait(1.0)
                self._refresh.set()

    def _refresh_all(self) -> None:
        """Every tracker that is not held by another gateway: this one's, and the offline ones."""
        query = {"$or": [{"online": {"$ne": True}}, {"gateway_id": self.gateway_id}]}
        count = 0
        for doc in self.devices.find(query, {"_id": 1}):
            self.poke(doc["_id"])
            count += 1
        log.info("fleet: checking %d trackers against %d profiles", count, len(self.profiles))

    # --- workers ---

    def _worker(self) -> None:
        while not self._stopping.is_set():
            if not self._queue:
                self._work.clear()
                self._work.wait()
                continue
            imei = self._queue.popleft()
            self._queued.discard(imei)
            self._busy.add(imei)
            try:
                while not self._stopping.is_set():
                    self._again.discard(imei)
                    self._guarded(imei)
                    if imei not in self._again:
                        break
            finally:
                self._busy.discard(imei)
                self._again.discard(imei)

    def _guarded(self, imei: str) -> None:
        try:
            self.evaluate(imei)
        except PyMongoError as exc:
            self.stats["errors"] += 1
            log.warning("fleet: %s: MongoDB error, trying again in 2 s: %s", imei, exc, extra=about(imei))
            self.later(2.0, imei)
        except Exception:
            self.stats["errors"] += 1
            log.exception("fleet: %s: evaluation failed, trying again in 5 s", imei, extra=about(imei))
            self.later(5.0, imei)

    def later(self, delay: float, imei: str) -> None:
        """Evaluate this tracker again in `delay` s. One timer per tracker: the earliest is kept."""
        due = time.monotonic() + max(0.0, delay)
        held = self._timers.get(imei)
        if held is not None and not held[1].dead and held[0] <= due:
            return
        if held is not None:
            held[1].kill(block=False)
        self._timers[imei] = (due, gevent.spawn_later(max(0.0, delay), self._fire, imei))

    def _fire(self, imei: str) -> None:
        self._timers.pop(imei, None)
        self.poke(imei, True)

    # --- one tracker ---

    def evaluate(self, imei: str) -> None:
        self.stats["evaluations"] += 1
        dev = self.devices.find_one({"_id": imei}, DEVICE_FIELDS)
        if dev is None:
            return  # never seen: evaluated when it first connects
        group = dev.get("group") if isinstance(dev.get("group"), str) else None
        target = resolve(imei, group, list(self.profiles.values()))
        state: dict[str, Any] = dev.get("config_state") or {}
        link = self.links.link(imei)
        here = link is not None and link.closing is None
        self._written.pop(imei, None)
        try:
            self._evaluate(imei, dev, target, state, link if here else None)
        finally:
            written = self._written.pop(imei, None) or state.get("state")
            if here and target and isinstance(written, str):
                self._held[imei] = written
            else:
                self._held.pop(imei, None)

    def _evaluate(self, imei: str, dev: Mapping[str, Any], target: Target, state: dict[str, Any],
                  link: Link | None) -> None:
        if not target:
            if "config_target" in dev or state:
                self.devices.update_one({"_id": imei}, {"$unset": {"config_target": "", "config_state": ""}})
                latest = self._latest(imei)
                if latest is not None and latest.get("status") == "pending":
                    self._cancel(latest, "no profile applies to this tracker any more")
            return
        public = public_target(target)
        if dev.get("config_target") != public:
            self.devices.update_one({"_id": imei}, {"$set": {"config_target": public}})
        key = target_key(public)
        config = dev.get("config") or {}
        cmp = compare(target, config, dev.get("config_secrets") or {})
        if dev.get("transport") == "http":
            self._set(imei, state, "failed", HTTP_REASON, key)
            return
        if link is None:
            if dev.get("online") and dev.get("gateway_id") != self.gateway_id:
                return  # its own gateway works on it
            if state.get("state") == "failed" and state.get("key") == key:
                return  # stays failed, with its reason, until the wanted values change
            if cmp.in_sync:
                self._set(imei, state, "in_sync", "", key, offline_only=True)
            elif self._server_acked(target, cmp, key, self._latest(imei) if self._only_server_left(cmp) else None):
                # It has moved to its new server (or is on its way): the ACK was the last word.
                self._set(imei, state, "in_sync", SERVER_ACKED, key, offline_only=True)
            else:
                self._set(imei, state, "waiting_offline", OFFLINE_REASON, key, offline_only=True)
            return
        self._work_on(imei, link, dev, target, key, state, cmp)

    @staticmethod
    def _only_server_left(cmp: Comparison) -> bool:
        return not cmp.differs and cmp.unconfirmed == [LAST]

    @staticmethod
    def _server_acked(target: Target, cmp: Comparison, key: str, latest: Mapping[str, Any] | None) -> bool:
        """Every block confirmed but the server, and the server set by an acknowledged rollout
        set_server for these same wanted values: in sync, whether the tracker is here or not."""
        if latest is None or not Reconciler._only_server_left(cmp) or latest.get("type") != SETTABLE[LAST] \
                or latest.get("status") != "acknowledged":
            return False
        if "config_key" in latest:
            return bool(latest["config_key"] == key)
        params = latest.get("params") or {}  # a command queued before config_key was recorded
        return all(same(LAST, name, wanted.value, params.get(name)) for name, wanted in target[LAST].items())

    def _work_on(self, imei: str, link: Link, dev: Mapping[str, Any], target: Target, key: str,
                 state: dict[str, Any], cmp: Comparison) -> None:
        now = utcnow()
        config: Mapping[str, Any] = dev.get("config") or {}
        latest = self._latest(imei)
        if latest is not None and is_open(latest):
            current = self._what_to_send(target, config, cmp)
            if latest.get("status") in ("pending", None) and current is not None and \
                    (latest.get("type"), latest.get("params")) != current[:2]:
                self._cancel(latest, "the wanted settings changed")
                self.poke(imei)
                return
            keep = "drifted" if state.get("state") == "drifted" else "applying"
            self._set(imei, state, keep, f"waiting for {latest.get('type')} ({latest.get('status') or 'pending'})",
                      key)
            return
        pending, arrived = self._answer_pending(latest, config, now) if latest is not None else (False, False)
        if pending:
            return
        if latest is not None and latest.get("status") == "acknowledged" and latest.get("type") == "set_apn":
            self._note_secrets(imei, dev, latest)
            dev = self.devices.find_one({"_id": imei}, DEVICE_FIELDS) or dev
            cmp = compare(target, config, dev.get("config_secrets") or {})
        tries: dict[str, int] = dict(state.get("tries") or {}) if state.get("key") == key else {}
        # Only what did not work counts: a dump that came back, a block a dump confirmed, are done.
        if arrived:
            tries.pop("dump", None)
        for step in [s for s in tries if s in target and s not in cmp.differs and s not in cmp.unconfirmed]:
            tries.pop(step)
        if cmp.in_sync:
            if self._recheck_due(imei, link, target, config, now):
                self._queue_command(imei, state, key, {}, "dump", target, "get_config", {}, "in_sync",
                                    "checking its settings", latest)
                return
            self._set(imei, state, "in_sync", "", key, tries={})
            return
        block = self._next_block(cmp)
        if block is None:
            # Every value set matches, but only because commands were acknowledged: ask the
            # tracker (before the server is changed, which may take it away from here).
            blocks = [b for b in cmp.unconfirmed if b != LAST] or cmp.unconfirmed
            if self._server_acked(target, cmp, key, latest):
                assert latest is not None
                acked = latest.get("acknowledged_at")
                if isinstance(acked, datetime) and link.connected_at > acked:
                    # It came back here after the ACK: its own dump confirms the server settings
                    # (and from then on it is rechecked like any other).
                    self._queue_command(imei, state, key, tries, "dump", target, "get_config",
                                        {"command": LAST.upper()}, "in_sync", "confirming its server settings",
                                        latest)
                    return
                # The tracker may now report to another server: the ACK is the last word we get here.
                self._set(imei, state, "in_sync", SERVER_ACKED, key, tries={})
                return
            if blocks:
                # One block: read just it (GTALS); several, or the server still to set with fields
                # the gateway does not know yet: read everything (GTALM).
                needs_all = LAST in cmp.differs and bool(unknown_defaults(LAST, target, config))
                params = {"command": blocks[0].upper()} if len(blocks) == 1 and not needs_all else {}
                keep = "drifted" if state.get("state") == "drifted" else "applying"
                self._queue_command(imei, state, key, tries, "dump", target, "get_config", params, keep,
                                    f"asking for its settings to confirm {', '.join(b.upper() for b in blocks)}",
                                    latest)
                return
            block = LAST  # only the server is left to set, the rest is confirmed
        drifting = state.get("state") in ("in_sync", "drifted") and state.get("key") == key
        if state.get("state") == "in_sync" and state.get("key") == key:
            tries = {}  # a new episode: the same attempt limits again
            log.warning("fleet: %s drifted: %s", imei, describe(block, cmp.differs[block]), extra=about(imei))
        unknown = unknown_defaults(block, target, config)
        if unknown:
            self._queue_command(imei, state, key, tries, "dump", target, "get_config", {}, "applying",
                                f"asking for its settings first ({block}.{', '.join(unknown)} unknown)", latest)
            return
        command, params = command_for(block, target, config)
        self._queue_command(imei, state, key, tries, block, target, command, params,
                            "drifted" if drifting else "applying", describe(block, cmp.differs[block]), latest)

    @staticmethod
    def _next_block(cmp: Comparison) -> str | None:
        """The block to set now: any but the server first; the server only once the others are
        confirmed by a dump (a new server may take the tracker away from here)."""
        for block in SETTABLE:
            if block in cmp.differs and block != LAST:
                return block
        return None

    def _latest(self, imei: str) -> dict[str, Any] | None:
        """The tracker's open rollout command, whatever its time (another gateway's clock may be
        off); without one, its newest rollout command."""
        query: dict[str, Any] = {"imei": imei, "source": {"$regex": f"^{ROLLOUT_PREFIX}"}}
        for doc in self.commands.find({**query, "status": {"$in": [*OPEN_STATUSES, None]}}, {"history": 0},
                                      sort=[("created_at", DESCENDING)], limit=5):
            if is_open(doc):
                return dict(doc)
        return self.commands.find_one(query, {"history": 0}, sort=[("created_at", DESCENDING)])

    def _what_to_send(self, target: Target, config: Mapping[str, Any],
                      cmp: Comparison) -> tuple[str, dict[str, Any]] | None:
        block = self._next_block(cmp) or (LAST if LAST in cmp.differs and not cmp.unconfirmed else None)
        return command_for(block, target, config) if block is not None else None

    def _answer_pending(self, latest: Mapping[str, Any], config: Mapping[str, Any],
                        now: datetime) -> tuple[bool, bool]:
        """(pending, arrived): just acknowledged, its effects (or, for get_config, its dump) may not
        be stored yet; or they are."""
        acked = latest.get("acknowledged_at")
        if latest.get("status") != "acknowledged" or not isinstance(acked, datetime):
            return False, False
        block = BLOCK_OF_COMMAND.get(str(latest.get("type")))
        if latest.get("type") == "get_config":
            wanted_blocks = [str(latest.get("params", {}).get("command") or "").lower()] \
                if (latest.get("params") or {}).get("command") else list(SETTABLE)
            seen = [config.get(b, {}).get("received_at") for b in wanted_blocks if isinstance(config.get(b), dict)]
            # Its answer is a dump read after the command went out (the gateway that sent it holds the
            # connection and stamps both). A second of slack before the ACK would take a dump read
            # just before for the answer: a tracker that reconnects (after a factory reset, say) right
            # after its last dump would be judged on its old settings.
            sent = latest.get("sent_at")
            since = sent if isinstance(sent, datetime) else acked - timedelta(seconds=1)
            arrived = any(isinstance(at, datetime) and at >= since for at in seen)
            wait = DUMP_WAIT_S
        elif block is not None:
            held = config.get(block) or {}
            at = held.get("received_at") if held.get("source") == "report" else held.get("at")
            arrived = isinstance(at, datetime) and at >= acked - timedelta(milliseconds=1)
            wait = EFFECTS_WAIT_S
        else:
            return False, False
        if arrived or now >= acked + timedelta(seconds=wait):
            return False, arrived and latest.get("type") == "get_config"
        self.later(min(1.0, (acked + timedelta(seconds=wait) - now).total_seconds()), str(latest["imei"]))
        return True, False

    def _recheck_due(self, imei: str, link: Link, target: Target, config: Mapping[str, Any], now: datetime) -> bool:
        """A factory reset or an SMS shows only in a dump: a tracker whose last dump is older than
        FLEET_RECHECK_S is asked again after it reconnects, and while it stays connected (each
        tracker at its own moment, within RECHECK_SPREAD more). FLEET_RECHECK_S=0: after every
        reconnect, and never while connected."""
        times = [config.get(b, {}).get("received_at") for b in target if isinstance(config.get(b), dict)]
        if not times or not all(isinstance(t, datetime) for t in times):
            return False
        oldest = min(times)
        age = (now - oldest).total_seconds()
        every = self.settings.FLEET_RECHECK_S
        if oldest < link.connected_at and age >= every:
            return True
        if every <= 0:
            return False
        due = every * (1 + RECHECK_SPREAD * spread(imei))
        if age >= due:
            return True
        if due - age < REFRESH_EVERY_S:  # sooner than the next look at every tracker
            self.later(due - age, imei)
        return False

    def _note_secrets(self, imei: str, dev: Mapping[str, Any], doc: Mapping[str, Any]) -> None:
        password = (doc.get("params") or {}).get("password")
        if password is None:
            return
        stamp = fingerprint(password)
        if ((dev.get("config_secrets") or {}).get("bsi") or {}).get("password") != stamp:
            self.devices.update_one({"_id": imei}, {"$set": {"config_secrets.bsi.password": stamp}})

    def _queue_command(self, imei: str, state: dict[str, Any], key: str, tries: dict[str, int], what: str,
                       target: Target, command: str, params: dict[str, Any], status: str, reason: str,
                       latest: Mapping[str, Any] | None) -> None:
        n = tries.get(what, 0)
        if n >= self.settings.FLEET_MAX_TRIES:
            self._set(imei, state, "failed", self._failure(what, n, reason, latest), key, tries=tries)
            return
        retry_at = state.get("retry_at")
        now = utcnow()
        if n > 0 and state.get("key") == key and state.get("step") == what and isinstance(retry_at, datetime) \
                and now < retry_at:
            self._set(imei, state, status, f"{reason}; next try at {retry_at:%H:%M:%S} UTC", key, tries=tries,
                      retry_at=retry_at, step=what)
            self.later((retry_at - now).total_seconds(), imei)
            return
        try:
            validate_command(command, params)
        except Exception as exc:  # a mix of profiles that no command can carry
            self._set(imei, state, "failed", f"{what.upper()}: cannot be sent: {exc}", key, tries=tries)
            return
        block = what if what in target else next(iter(target))
        profile = next(iter(target[block].values())).profile
        self.limit.take()
        now = utcnow()
        # The try is counted before the command exists (it is uncounted only if this write fails,
        # and then nothing is sent), and only if nobody queued one meanwhile: the compare-and-set
        # on `seq` makes one gateway (of two that both think they hold the tracker) the sender.
        tries = {**tries, what: n + 1}
        retry_at = now + timedelta(seconds=backoff_s(self.settings.FLEET_RETRY_S, n + 1))
        if not self._set(imei, state, status, reason, key, tries=tries, retry_at=retry_at, step=what, at=now,
                         queued=True):
            log.info("fleet: %s: another evaluation queued a command meanwhile, looking again", imei,
                     extra=about(imei))
            self.poke(imei)
            return
        doc = new_command(imei, command, params, now, source=f"{ROLLOUT_PREFIX}{profile}",
                          extra={"config_key": key})
        insert_command(self.commands, doc)
        self.stats["commands"] += 1
        if command == "get_config":
            self.stats["dumps_asked"] += 1

    def _failure(self, what: str, n: int, reason: str, latest: Mapping[str, Any] | None) -> str:
        name = "settings dump" if what == "dump" else what.upper()
        if latest is not None and latest.get("status") in ("failed", "expired", "cancelled"):
            detail = f"{latest.get('type')} {latest.get('status')}: {latest.get('error') or 'no reason given'}"
        elif what == "dump":
            detail = "no settings dump came back"
        else:
            detail = f"the tracker acknowledged, but still reports {reason}"
        return f"{name}: {detail} (after {n} tries)"

    def _cancel(self, doc: Mapping[str, Any], why: str) -> None:
        cancel_command(self.commands, doc["_id"], utcnow(), reason=why, statuses=("pending", None))

    def _set(self, imei: str, old: Mapping[str, Any], status: str, reason: str, key: str, *,
             tries: dict[str, int] | None = None, retry_at: datetime | None = None, step: str | None = None,
             offline_only: bool = False, at: datetime | None = None, queued: bool = False) -> bool:
        """Write `config_state` if anything in it changes; `since` moves only with the state.
        `queued`: a command is about to be queued: `seq` goes up, if it is still as `old` had it.
        Returns False only when that compare-and-set found it changed."""
        self._written[imei] = status
        tries = tries if tries is not None else (dict(old.get("tries") or {}) if old.get("key") == key else {})
        if retry_at is None and old.get("key") == key and status != "in_sync":
            retry_at, step = old.get("retry_at"), old.get("step")
        same_state = old.get("state") == status and old.get("key") == key
        new: dict[str, Any] = {"state": status, "since": old.get("since") if same_state else (at or utcnow()),
                               "reason": reason, "tries": tries, "key": key}
        if retry_at is not None:
            new["retry_at"] = retry_at
            new["step"] = step
        if not queued and all(old.get(k) == v for k, v in new.items()) \
                and ("retry_at" in old) == ("retry_at" in new):
            return True
        query: dict[str, Any] = {"_id": imei}
        if offline_only:
            # Another gateway may have just got the connection: never overwrite what it writes.
            query["$or"] = [{"online": {"$ne": True}}, {"gateway_id": self.gateway_id}]
        # Field by field: `seq` is written only by the compare-and-set of a queued command.
        update: dict[str, Any] = {"$set": {f"config_state.{k}": v for k, v in new.items()}}
        if retry_at is None:
            update["$unset"] = {"config_state.retry_at": "", "config_state.step": ""}
        if queued:
            query["config_state.seq"] = old.get("seq")
            update["$set"]["config_state.seq"] = int(old.get("seq") or 0) + 1
        done = self.devices.update_one(query, update)
        if queued and not done.matched_count:
            return False
        if old.get("state") != status:
            log.info("fleet: %s %s -> %s%s", imei, old.get("state") or "new", status,
                     f" ({reason})" if reason else "", extra=about(imei))
        return True
