"""Gateway liveness: who still holds its devices.

Each gateway process writes `gateway_state` {_id: "gateway:<GATEWAY_ID>", alive_at, stats} every
GATEWAY_ALIVE_INTERVAL_S (10 s). A gateway killed with SIGKILL cannot mark its devices offline, so every
gateway also sweeps: the devices of a gateway whose `alive_at` is older than GATEWAY_DEAD_AFTER_S
are marked offline (unless they have since connected elsewhere, which changes their gateway_id).
A gateway restarted under the same GATEWAY_ID marks its own leftover devices offline at start.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import gevent
from pymongo.errors import PyMongoError

from ..storage.database import DB, DEVICES, GATEWAY_STATE
from ..storage.devices import utcnow

log = logging.getLogger(__name__)

PREFIX = "gateway:"


class Liveness:
    def __init__(self, db: DB, gateway_id: str, interval_s: float, dead_after_s: float,
                 stats: Callable[[], dict[str, Any]] | None = None) -> None:
        self.db = db
        self.stats = stats
        self.gateway_id = gateway_id
        self.interval_s = interval_s
        self.dead_after_s = dead_after_s
        self._greenlet: gevent.Greenlet | None = None

    def start(self) -> None:
        """Claim a clean slate (our own leftovers from a previous life), then beat and sweep."""
        now = utcnow()
        result = self.db[DEVICES].update_many({"gateway_id": self.gateway_id, "online": True},
                                              {"$set": {"online": False, "disconnected_at": now}})
        if result.modified_count:
            log.warning("marked %d devices offline that a previous %s left online", result.modified_count,
                        self.gateway_id)
        self.beat()
        self._greenlet = gevent.spawn(self._run)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill()
            self._greenlet = None
        try:
            self.db[GATEWAY_STATE].delete_one({"_id": PREFIX + self.gateway_id})
        except PyMongoError as exc:
            log.warning("could not remove the liveness record: %s", exc)

    def beat(self) -> None:
        """Alive, with this gateway's statistics (`gv50ctl status` shows them)."""
        now = utcnow()
        fields: dict[str, Any] = {"alive_at": now, "gateway_id": self.gateway_id}
        if self.stats is not None:
            try:
                fields["stats"] = {"at": now, **self.stats()}
            except Exception:  # a bug in a figure must not stop the liveness record
                log.exception("could not gather the statistics")
        self.db[GATEWAY_STATE].update_one({"_id": PREFIX + self.gateway_id}, {"$set": fields}, upsert=True)

    def sweep(self) -> int:
        """Mark offline the devices of gateways that stopped beating. Returns how many."""
        cutoff = utcnow() - timedelta(seconds=self.dead_after_s)
        dead = [doc["gateway_id"] for doc in self.db[GATEWAY_STATE].find(
            {"_id": {"$regex": f"^{PREFIX}"}, "alive_at": {"$lt": cutoff}}, {"gateway_id": 1})]
        live = {doc["gateway_id"] for doc in self.db[GATEWAY_STATE].find(
            {"_id": {"$regex": f"^{PREFIX}"}, "alive_at": {"$gte": cutoff}}, {"gateway_id": 1})}
        # Devices online at a gateway that has no liveness record at all (killed before its first
        # beat, or a gateway older than this mechanism) count as dead once their last_seen_at is old.
        query = {"online": True, "$or": [
            {"gateway_id": {"$in": dead}},
            {"gateway_id": {"$nin": sorted(live | {self.gateway_id})}, "last_seen_at": {"$lt": cutoff}},
        ]}
        result = self.db[DEVICES].update_many(query, {"$set": {"online": False, "disconnected_at": utcnow()}})
        if result.modified_count:
            log.warning("marked %d devices offline whose gateway stopped (%s)", result.modified_count,
                        ", ".join(dead) or "no liveness record")
        if dead:
            self.db[GATEWAY_STATE].delete_many({"_id": {"$in": [PREFIX + g for g in dead]}})
        return result.modified_count

    def _run(self) -> None:
        while True:
            gevent.sleep(self.interval_s)
            try:
                self.beat()
                self.sweep()
            except PyMongoError as exc:
                log.warning("liveness: %s", exc)
