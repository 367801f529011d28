"""The store when MongoDB fails, against real servers: which errors are worth retrying
(`storage.database.transient`); the config shadow gives up on a permanent error, stops retrying
when the gateway stops, and keeps a config_mismatch event when MongoDB fails between its two
writes (a fail point on a one-member replica set started with test commands); the batch writer
never refuses a refusal twice (a validator on `messages`)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import gevent
import pytest
from pymongo import MongoClient
from pymongo.errors import (
    AutoReconnect, BulkWriteError, ConnectionFailure, DuplicateKeyError, ExecutionTimeout, InvalidOperation,
    NotPrimaryError, OperationFailure, WriteConcernError,
)

from gv50_gevent.protocol import parse
from gv50_gevent.protocol.commands import ack_effects
from gv50_gevent.storage.config_shadow import ConfigShadow
from gv50_gevent.storage.database import DB, MESSAGES, POSITIONS, durable, transient
from gv50_gevent.storage.writer import Batch, BatchWriter
from tests.data import device_lines
from tests.replset import ReplicaSet

AT = datetime(2026, 12, 7, 8, 0, tzinfo=timezone.utc)
IMEI = "865083030002554"
GTALM = [line for line in device_lines() if line.startswith("+RESP:GTALM")]


def test_only_outages_elections_and_timeouts_are_transient() -> None:
    for exc in (AutoReconnect("gone"), NotPrimaryError("stepped down"), ConnectionFailure("refused"),
                ExecutionTimeout("slow", 50), WriteConcernError("no majority", 64, {}),
                OperationFailure("shutting down", 91), OperationFailure("host unreachable", 6),
                OperationFailure("interrupted at shutdown", 11600), OperationFailure("not primary", 10107),
                OperationFailure("anything", 1, {"errorLabels": ["RetryableWriteError"]})):
        assert transient(exc), exc
    for exc in (InvalidOperation("Cannot use MongoClient after close"), DuplicateKeyError("dup", 11000),
                OperationFailure("Document failed validation", 121), OperationFailure("bad value", 2),
                BulkWriteError({"writeErrors": [{"code": 121}]}), ValueError("a bug")):
        assert not transient(exc), exc


# -- the config shadow ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fault_set() -> Iterator[ReplicaSet]:
    with ReplicaSet(name="gv50sf", size=1) as rs:
        yield rs


@pytest.fixture
def shadow_db(fault_set: ReplicaSet, db_name: str) -> Iterator[tuple[DB, MongoClient[dict[str, Any]]]]:
    """The shadow's own client (its app name is what the fail points aim at) and an admin client."""
    client: MongoClient[dict[str, Any]] = fault_set.client(appname="gv50-shadow-test")
    admin = fault_set.client()
    try:
        yield client.get_database(db_name, write_concern=durable()), admin
    finally:
        admin.admin.command("configureFailPoint", "failCommand", mode="off")
        client.close()
        admin.close()


def dump() -> list[Any]:
    return [parse(line.rstrip("$")) for line in GTALM]


def commanded(db: DB) -> None:
    """A command set the report interval, which the dump below reports otherwise: a mismatch."""
    db.devices.update_one({"_id": IMEI}, {"$set": ack_effects("set_report_interval", {"mode": 1, "send_interval_s": 60},
                                                              AT)}, upsert=True)


def fail(admin: MongoClient[dict[str, Any]], command: str, code: int, mode: Any) -> None:
    admin.admin.command("configureFailPoint", "failCommand", mode=mode, data={
        "failCommands": [command], "errorCode": code, "appName": "gv50-shadow-test"})


def test_a_mismatch_is_kept_when_mongodb_fails_between_the_two_writes(shadow_db: Any) -> None:
    db, admin = shadow_db
    commanded(db)
    shadow = ConfigShadow(db, "gw-test")
    fail(admin, "insert", 6, {"times": 2})  # the update goes through, the event's insert fails (and its retry)
    written = Batch()
    shadow._guarded(IMEI, dump(), AT, written)
    assert written.done.is_set()
    events = list(db.events.find({"imei": IMEI, "type": "config_mismatch"}))
    assert [(e["block"], [d["field"] for d in e["fields"]]) for e in events] == [("fri", ["mode", "send_interval_s"])]
    assert (db.devices.find_one({"_id": IMEI}) or {})["config"]["fri"]["source"] == "report"


def test_a_permanent_error_is_given_up_and_the_sack_released(shadow_db: Any, fault_set: ReplicaSet,
                                                             db_name: str) -> None:
    client: MongoClient[dict[str, Any]] = fault_set.client()
    shadow = ConfigShadow(client.get_database(db_name, write_concern=durable()), "gw-test")
    client.close()  # what a shutdown leaves: every call raises InvalidOperation
    written = Batch()
    worker = gevent.spawn(shadow._guarded, IMEI, dump(), AT, written)
    assert written.done.wait(timeout=10), "the dump's SACK was held back (retrying a permanent error)"
    worker.join(timeout=1)
    assert worker.dead and shadow.stats["failed"] == 1


def test_a_dump_retrying_an_outage_stops_when_the_gateway_stops(shadow_db: Any) -> None:
    db, admin = shadow_db
    shadow = ConfigShadow(db, "gw-test")
    fail(admin, "findAndModify", 91, "alwaysOn")  # shutting down: transient, retried
    written = shadow._pool.spawn(shadow._guarded, IMEI, dump(), AT, Batch())
    gevent.sleep(0.5)  # a few tries (0.2 s, then 0.4 s apart)
    assert not written.dead, "a transient error was not retried"
    shadow.join(timeout=0.1)
    assert written.dead and shadow.stats["failed"] == 1


# -- the batch writer --------------------------------------------------------------------------------


def test_a_refusal_that_is_refused_too_is_dropped_and_the_batch_released(mongo: MongoClient, db_name: str) -> None:
    db = mongo.get_database(db_name, write_concern=durable())
    db.create_collection(POSITIONS, validator={"count": {"$ne": "0003"}})  # refuses one position
    db.create_collection(MESSAGES, validator={"status": {"$ne": "rejected"}})  # and every refusal
    writer = BatchWriter(db, batch_size=100, interval_s=0.01, writers=1, gateway_id="gw-test")
    writer.start()
    try:
        writer.acquire(3)
        batch = writer.put(POSITIONS, {"_id": {"imei": IMEI, "count": "0001"}, "imei": IMEI, "count": "0001"})
        writer.put(POSITIONS, {"_id": {"imei": IMEI, "count": "0003"}, "imei": IMEI, "count": "0003"})
        writer.put(POSITIONS, {"_id": {"imei": IMEI, "count": "0002"}, "imei": IMEI, "count": "0002"})
        assert batch.done.wait(timeout=20), "the session waiting on the batch was never released"
        assert sorted(d["count"] for d in db[POSITIONS].find()) == ["0001", "0002"]
        stats = writer.stats()
        assert (stats["refused"], stats["refusals_dropped"], db[MESSAGES].count_documents({})) == (1, 1, 0)
        writer.acquire(1)
        after = writer.put(POSITIONS, {"_id": {"imei": IMEI, "count": "0004"}, "imei": IMEI, "count": "0004"})
        assert after.done.wait(timeout=20)  # the writer carries on
    finally:
        assert writer.stop(timeout=20)
