"""The reconciler in-process, against the real mongod: one evaluation at a time, called directly
(no change streams, no tracker), so each rule of a rollout is checked in well under a second."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from pydantic import ValidationError
from pymongo import MongoClient
from pymongo.database import Database

from gv50_gevent.cli.fleet import _value
from gv50_gevent.config import Settings
from gv50_gevent.fleet.profiles import SETTABLE, public_target, resolve
from gv50_gevent.fleet import reconciler as fleet_reconciler
from gv50_gevent.fleet.reconciler import Reconciler, target_key
from gv50_gevent.storage.database import durable
from tests.support import REPO

IMEI = "864802039000001"
PROFILE = {"_id": "city", "settings": {"fri": {"mode": 1, "send_interval_s": 30}}, "applies_to": {"all": True}}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class FakeLink:
    imei: str
    connected_at: datetime = field(default_factory=utcnow)
    id: str = "tcp-1"
    transport: str = "tcp"
    remote_addr: str = "10.0.0.1:4000"
    password: str | None = None
    closing: str | None = None

    def send(self, data: bytes, kind: Any) -> None:
        raise AssertionError("the reconciler never sends by itself")

    def set_sack(self, enabled: bool) -> None:
        pass


class FakeLinks:
    def __init__(self) -> None:
        self.held: dict[str, FakeLink] = {}

    def link(self, imei: str) -> FakeLink | None:
        return self.held.get(imei)


@pytest.fixture
def db(mongo: MongoClient, db_name: str) -> Iterator[Database]:
    yield mongo.get_database(db_name, write_concern=durable())
    mongo.drop_database(db_name)


def reconciler(db: Database, links: FakeLinks, gateway_id: str = "gw-a", **env: Any) -> Reconciler:
    settings = Settings(_env_file=None, GATEWAY_ID=gateway_id, FLEET_COMMANDS_PER_S=1000,  # type: ignore[call-arg]
                        **env)
    rec = Reconciler(settings, db, links)  # type: ignore[arg-type]
    return rec


def with_profile(rec: Reconciler, doc: dict[str, Any]) -> None:
    rec.change({"ns": {"coll": "profiles"}, "documentKey": {"_id": doc["_id"]}, "fullDocument": doc})


def device(db: Database, config: dict[str, Any], *, online: bool = True, **more: Any) -> None:
    db.devices.insert_one({"_id": IMEI, "online": online, "gateway_id": "gw-a", "transport": "tcp",
                           "config": config, **more})


def rollout_commands(db: Database) -> list[dict[str, Any]]:
    return list(db.commands.find({"imei": IMEI}, sort=[("created_at", 1)]))


def acknowledge(db: Database, doc: dict[str, Any], at: datetime) -> None:
    db.commands.update_one({"_id": doc["_id"]}, {"$set": {"status": "acknowledged", "acknowledged_at": at}})


def state(db: Database) -> dict[str, Any]:
    return (db.devices.find_one({"_id": IMEI}) or {}).get("config_state") or {}


def confirmed_fri(at: datetime, interval: int = 30) -> dict[str, Any]:
    return {"mode": 1, "send_interval_s": interval, "source": "report", "received_at": at}


def test_an_invalid_edit_keeps_the_last_valid_version_of_a_profile(db: Database,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    links = FakeLinks()
    rec = reconciler(db, links)
    device(db, {"fri": confirmed_fri(utcnow())}, online=False)
    with_profile(rec, PROFILE)
    rec.evaluate(IMEI)
    assert state(db)["state"] == "in_sync"
    broken = {**PROFILE, "settings": {"fri": {"mode": 1, "send_interval_s": 2}}}
    with caplog.at_level(logging.WARNING, logger="gv50_gevent.fleet.reconciler"):
        with_profile(rec, broken)
        with_profile(rec, broken)  # the same problems again: no second line
    lines = [r.getMessage() for r in caplog.records if "not valid" in r.getMessage()]
    assert len(lines) == 1 and "its last valid version stays in use" in lines[0], lines
    assert rec.profiles["city"].settings == {"fri": {"mode": 1, "send_interval_s": 30}}
    rec.evaluate(IMEI)
    dev = db.devices.find_one({"_id": IMEI}) or {}
    assert dev["config_target"]["fri"]["send_interval_s"]["value"] == 30 and dev["config_state"]["state"] == "in_sync"
    db.profiles.insert_one(broken)
    rec.sweep()  # after a restart of the stream: still the last valid one
    assert "city" in rec.profiles
    rec.change({"ns": {"coll": "profiles"}, "documentKey": {"_id": "city"}, "operationType": "delete"})
    assert "city" not in rec.profiles


def test_a_tracker_gone_to_its_new_server_after_the_ack_stays_in_sync(db: Database) -> None:
    links = FakeLinks()
    rec = reconciler(db, links)
    now = utcnow()
    profile = {"_id": "move", "settings": {"fri": {"mode": 1, "send_interval_s": 30},
                                           "sri": {"host": "gps2.example.com", "port": 5004}},
               "applies_to": {"all": True}}
    with_profile(rec, profile)
    key = target_key(public_target(resolve(IMEI, None, list(rec.profiles.values()))))
    # FRI confirmed by a dump, the server set by an acknowledged set_server (its effects stored).
    device(db, {"fri": confirmed_fri(now), "sri": {"host": "gps2.example.com", "port": 5004, "report_mode": 2,
                                                   "source": "command", "at": now}}, online=False)
    db.commands.insert_one({"imei": IMEI, "type": "set_server", "status": "acknowledged", "source": "profile:move",
                            "params": {"host": "gps2.example.com", "port": 5004, "report_mode": 2},
                            "created_at": now, "acknowledged_at": now, "config_key": key})
    rec.evaluate(IMEI)  # it left for its new server: evaluated as offline
    assert state(db)["state"] == "in_sync", state(db)
    assert "server settings acknowledged" in state(db)["reason"]
    # It comes back here: a dump of its server settings confirms them.
    links.held[IMEI] = FakeLink(IMEI)
    db.devices.update_one({"_id": IMEI}, {"$set": {"online": True}})
    rec.evaluate(IMEI)
    dump = rollout_commands(db)[-1]
    assert dump["type"] == "get_config" and dump["params"] == {"command": "SRI"}
    assert state(db)["state"] == "in_sync"


def test_an_open_rollout_command_counts_whatever_its_time(db: Database) -> None:
    links = FakeLinks()
    links.held[IMEI] = FakeLink(IMEI)
    rec = reconciler(db, links)
    with_profile(rec, PROFILE)
    now = utcnow()
    device(db, {"fri": confirmed_fri(now, interval=60)})
    # Queued by a gateway whose clock is an hour behind, and still on its way; a newer one is done.
    db.commands.insert_one({"imei": IMEI, "type": "set_report_interval", "status": "sent", "attempts": 1,
                            "source": "profile:city", "params": {"mode": 1, "send_interval_s": 30},
                            "created_at": now - timedelta(hours=1)})
    db.commands.insert_one({"imei": IMEI, "type": "get_config", "status": "acknowledged", "source": "profile:city",
                            "params": {}, "created_at": now - timedelta(minutes=1),
                            "acknowledged_at": now - timedelta(minutes=1)})
    rec.evaluate(IMEI)
    assert len(rollout_commands(db)) == 2  # nothing more queued
    assert state(db)["state"] == "applying" and "set_report_interval (sent)" in state(db)["reason"]


def test_two_gateways_cannot_both_queue_for_one_tracker(db: Database) -> None:
    links = FakeLinks()
    links.held[IMEI] = FakeLink(IMEI)
    a, b = reconciler(db, links, "gw-a"), reconciler(db, links, "gw-b")
    for rec in (a, b):
        with_profile(rec, PROFILE)
    device(db, {"fri": confirmed_fri(utcnow(), interval=60)})
    seen = state(db)  # what gw-a read before gw-b queued
    b.evaluate(IMEI)
    assert len(rollout_commands(db)) == 1 and state(db)["seq"] == 1
    target = resolve(IMEI, None, list(a.profiles.values()))
    key = target_key(public_target(target))
    a._queue_command(IMEI, seen, key, {}, "fri", target, "set_report_interval", {"mode": 1, "send_interval_s": 30},
                     "applying", "fri.send_interval_s 60 -> 30", None)
    assert len(rollout_commands(db)) == 1  # its compare-and-set found gw-b's
    doc = rollout_commands(db)[0]
    # Written like any command: pending, with its history, its source and the wanted values' key.
    assert doc["status"] == "pending" and doc["attempts"] == 0 and doc["history"][0]["status"] == "pending"
    assert doc["source"] == "profile:city" and doc["config_key"] == key
    assert state(db)["tries"] == {"fri": 1} and state(db)["step"] == "fri"


def test_a_step_that_worked_neither_counts_nor_waits_for_the_last_ones_backoff(db: Database) -> None:
    links = FakeLinks()
    links.held[IMEI] = FakeLink(IMEI)
    rec = reconciler(db, links, FLEET_MAX_TRIES=1, FLEET_RETRY_S=3600)
    with_profile(rec, {**PROFILE, "settings": {"fri": {"send_interval_s": 30}}})
    device(db, {})
    rec.evaluate(IMEI)  # FRI's mode unknown: a dump first
    [dump] = rollout_commands(db)
    assert dump["type"] == "get_config"
    at = utcnow() - timedelta(seconds=2)
    acknowledge(db, dump, at)
    db.devices.update_one({"_id": IMEI}, {"$set": {"config.fri": confirmed_fri(utcnow(), interval=60)}})
    rec.evaluate(IMEI)
    fri = rollout_commands(db)[-1]
    assert fri["type"] == "set_report_interval" and state(db)["tries"] == {"fri": 1}
    acknowledge(db, fri, utcnow() - timedelta(seconds=2))
    db.devices.update_one({"_id": IMEI}, {"$set": {"config.fri": {"mode": 1, "send_interval_s": 30,
                                                                  "source": "command", "at": utcnow()}}})
    rec.evaluate(IMEI)  # the second dump: the first came back, and FRI's backoff is not its own
    second = rollout_commands(db)[-1]
    assert second["type"] == "get_config" and second["_id"] != dump["_id"], state(db)
    assert state(db)["state"] == "applying" and state(db)["step"] == "dump"


def test_the_wait_between_tries_is_at_most_a_day() -> None:
    backoff_s = fleet_reconciler.backoff_s
    assert backoff_s(30, 1) == 30 and backoff_s(30, 3) == 120
    assert backoff_s(30, 10_000) == fleet_reconciler.MAX_BACKOFF_S == 86400
    with pytest.raises(ValidationError):
        Settings(_env_file=None, FLEET_RETRY_S=10**9)  # type: ignore[call-arg]


def test_a_tracker_that_stays_connected_is_rechecked(db: Database) -> None:
    links = FakeLinks()
    links.held[IMEI] = FakeLink(IMEI, connected_at=utcnow() - timedelta(hours=2))
    rec = reconciler(db, links, FLEET_RECHECK_S=60)
    with_profile(rec, PROFILE)
    device(db, {"fri": confirmed_fri(utcnow() - timedelta(seconds=30))})
    rec.evaluate(IMEI)
    assert rollout_commands(db) == [] and state(db)["state"] == "in_sync"
    assert IMEI in rec._timers  # looked at again when due
    db.devices.update_one({"_id": IMEI}, {"$set": {"config.fri.received_at": utcnow() - timedelta(seconds=90)}})
    rec.evaluate(IMEI)
    [dump] = rollout_commands(db)
    assert dump["type"] == "get_config" and state(db)["state"] == "in_sync"
    assert rec.state_counts() == {"in_sync": 1, "applying": 0, "waiting_offline": 0, "drifted": 0, "failed": 0}
    links.held.clear()
    rec.evaluate(IMEI)  # gone: no longer counted here
    assert sum(rec.state_counts().values()) == 0


def test_one_timer_per_tracker_the_earliest(db: Database) -> None:
    rec = reconciler(db, FakeLinks())
    for _ in range(100):
        rec.later(60, IMEI)
    first = rec._timers[IMEI]
    rec.later(120, IMEI)
    assert rec._timers[IMEI] is first
    rec.later(30, IMEI)
    assert len(rec._timers) == 1 and rec._timers[IMEI] is not first and first[1].dead
    rec.stop()
    assert rec._timers == {}


def test_a_changed_profile_cancels_the_pending_command_through_the_lifecycle(db: Database) -> None:
    links = FakeLinks()
    links.held[IMEI] = FakeLink(IMEI)
    rec = reconciler(db, links)
    with_profile(rec, PROFILE)
    device(db, {"fri": confirmed_fri(utcnow(), interval=60)})
    rec.evaluate(IMEI)
    [first] = rollout_commands(db)
    with_profile(rec, {**PROFILE, "settings": {"fri": {"mode": 1, "send_interval_s": 45}}})
    rec.evaluate(IMEI)
    cancelled = db.commands.find_one({"_id": first["_id"]}) or {}
    assert cancelled["status"] == "cancelled" and cancelled["error"] == "the wanted settings changed"
    assert cancelled["history"][-1]["status"] == "cancelled" and cancelled["finished_at"] == cancelled["cancelled_at"]


def test_values_are_read_in_their_fields_type_and_bsi_goes_just_before_sri() -> None:
    assert _value("bsi", "password", "1234") == "1234"
    assert _value("fri", "start_time", "1230") == "1230"
    assert _value("fri", "send_interval_s", "30") == 30
    assert _value("fri", "discard_no_fix", "true") is True
    assert _value("xyz", "a", "12") == 12  # not a known field: as JSON, and the check says why not
    assert list(SETTABLE) == ["fri", "hrm", "bsi", "sri"]


def test_profile_assign_refuses_a_result_that_is_not_valid(db: Database, mongo_uri: str) -> None:
    db.profiles.insert_one({**PROFILE, "applies_to": {"imeis": [], "groups": ["buses"], "all": False}})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONGODB_", "MONGOD_"))}
    env.update(MONGODB_URI=mongo_uri, MONGODB_DB=db.name)
    done = subprocess.run([sys.executable, "-m", "gv50_gevent.cli", "profile", "assign", "city", "--group", ""],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done
    assert "error: applies_to.groups: must be a list of group names" in done.stderr
    assert (db.profiles.find_one({"_id": "city"}) or {})["applies_to"]["groups"] == ["buses"]
    # 14 digits is an IMEI too (the product's one rule).
    done = subprocess.run([sys.executable, "-m", "gv50_gevent.cli", "profile", "assign", "city",
                           "--imei", "86480203900000"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done
    assert (db.profiles.find_one({"_id": "city"}) or {})["applies_to"]["imeis"] == ["86480203900000"]
