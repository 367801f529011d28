"""The MongoDB client, the collection names of the contract, and the indexes created at start."""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, DESCENDING, GEOSPHERE, IndexModel, MongoClient
from pymongo.database import Database
from pymongo.errors import (
    BulkWriteError, ConnectionFailure, ExecutionTimeout, OperationFailure, PyMongoError, WriteConcernError,
)
from pymongo.write_concern import WriteConcern

Document = dict[str, Any]
DB = Database[Document]

VEHICLES = "vehicles"
DEVICES = "devices"
POSITIONS = "positions"
EVENTS = "events"
MESSAGES = "messages"
PROFILES = "profiles"
COMMANDS = "commands"
GATEWAY_STATE = "gateway_state"
# A gateway's liveness record (gateway.liveness) is gateway_state {_id: "gateway:<GATEWAY_ID>"}.
GATEWAY_STATE_PREFIX = "gateway:"
INDEX_NOT_FOUND = 27
# Server error codes that clear by themselves: "not primary" and "node is recovering" (an election,
# a member shutting down), the network, and time limits. pymongo keeps the same lists, but only as
# private names (`helpers_shared._RETRYABLE_ERROR_CODES`); a test checks that this one holds them all.
TRANSIENT_CODES: frozenset[int] = frozenset({
    6,      # HostUnreachable
    7,      # HostNotFound
    50,     # MaxTimeMSExpired
    63,     # StaleShardVersion
    89,     # NetworkTimeout
    91,     # ShutdownInProgress
    133,    # FailedToSatisfyReadPreference
    134,    # ReadConcernMajorityNotAvailableYet
    150,    # StaleEpoch
    189,    # PrimarySteppedDown
    262,    # ExceededTimeLimit
    9001,   # SocketException
    10058,  # LegacyNotPrimary
    10107,  # NotWritablePrimary
    11600,  # InterruptedAtShutdown
    11602,  # InterruptedDueToReplStateChange
    13435,  # NotPrimaryNoSecondaryOk
    13436,  # NotPrimaryOrSecondary
})


def transient(exc: BaseException) -> bool:
    """Whether a MongoDB error may clear by itself (an election, an outage, a timeout), so that the
    same write is worth trying again. A permanent one (a document the collection's validator
    refuses, a duplicate key, no permission, a client closed at shutdown) never clears: retrying it
    only holds whoever waits for the write."""
    if not isinstance(exc, PyMongoError):
        return False
    if isinstance(exc, (ConnectionFailure, WriteConcernError, ExecutionTimeout)):
        return True  # AutoReconnect, NotPrimaryError, NetworkTimeout, ServerSelectionTimeoutError, WTimeoutError
    if exc.has_error_label("RetryableWriteError") or exc.has_error_label("TransientTransactionError"):
        return True
    if isinstance(exc, BulkWriteError):
        details = exc.details or {}
        errors = details.get("writeErrors") or []
        if errors:
            return all(error.get("code") in TRANSIENT_CODES for error in errors)
        return bool(details.get("writeConcernErrors"))
    if isinstance(exc, OperationFailure):
        return exc.code in TRANSIENT_CODES
    return False

def durable(level: str = "majority") -> WriteConcern:
    """The write concern of everything the gateway acknowledges to a tracker (a SACK) or that moves
    a command on. `majority` (the default) survives a replica-set failover: a write that only the
    primary had (w=1) is rolled back when that primary loses an election and rejoins, and with it
    every report SACKed in its last seconds (measured: about 2 s of reports on a 3-node set). On a
    single node, majority is that node, and it costs nothing more than j=true."""
    if level == "majority":
        return WriteConcern(w="majority", j=True)
    return WriteConcern(w=int(level), j=True)


def connect(uri: str, db_name: str, pool_size: int = 50, app_name: str = "gv50_gevent",
            write_concern: str = "majority", min_pool_size: int = 0) -> tuple[MongoClient[Document], DB]:
    """A client and its database. `min_pool_size` connections are opened in the background and kept
    open, so that a burst of operations finds them ready instead of opening new ones."""
    client: MongoClient[Document] = MongoClient(
        uri, maxPoolSize=pool_size, minPoolSize=min(min_pool_size, pool_size), appname=app_name, tz_aware=True,
        serverSelectionTimeoutMS=10_000,
        retryWrites=True,
    )
    return client, client.get_database(db_name, write_concern=durable(write_concern))


def ensure_indexes(db: DB, raw_retention_days: float) -> None:
    # The unique key (imei, report, sent_at, count, index; and key_time without a send time) is the
    # position's `_id` itself (see documents.report_key): the built-in _id index enforces it, so a
    # resent frame or a +BUFF after its +RESP never makes a second document, and no second unique
    # index costs mongod CPU on every insert (measured: 8% more ingest, and no ObjectId to generate).
    db[POSITIONS].create_indexes([
        IndexModel([("location", GEOSPHERE)], name="location_2dsphere"),
        IndexModel([("imei", ASCENDING), ("fix_time", DESCENDING)], name="imei_fix_time"),
    ])
    # An event's key is the same as a position's without the index, and `key_time` stands in for a
    # missing send time (documents.report_key). Every event stored before has no `key_time`, so the
    # new index accepts them all; the old `event_key` (without it) is dropped once the new one
    # exists, because it would take a count wrap without a send time for a resend.
    db[EVENTS].create_indexes([
        IndexModel([("imei", ASCENDING), ("report", ASCENDING), ("sent_at", ASCENDING), ("count", ASCENDING),
                    ("key_time", ASCENDING)], unique=True, name="event_key_time"),
        IndexModel([("imei", ASCENDING), ("occurred_at", DESCENDING)], name="imei_occurred_at"),
    ])
    if "event_key" in db[EVENTS].index_information():
        try:
            db[EVENTS].drop_index("event_key")
        except OperationFailure as exc:
            if exc.code != INDEX_NOT_FOUND:  # another gateway starting at the same time dropped it
                raise
    ttl = int(raw_retention_days * 86400)
    _ensure_ttl(db, ttl)
    db[DEVICES].create_index([("gateway_id", ASCENDING), ("online", ASCENDING)], name="gateway_online")
    db[COMMANDS].create_indexes([
        IndexModel([("imei", ASCENDING), ("status", ASCENDING), ("created_at", ASCENDING)], name="imei_status_created"),
        IndexModel([("status", ASCENDING)], name="status"),
        # A rollout's commands of one device (fleet configuration).
        IndexModel([("imei", ASCENDING), ("source", ASCENDING), ("created_at", DESCENDING)],
                   name="imei_source_created", partialFilterExpression={"source": {"$exists": True}}),
    ])
    db[DEVICES].create_index([("config_state.state", ASCENDING)], name="config_state",
                             partialFilterExpression={"config_state": {"$exists": True}})


def _ensure_ttl(db: DB, ttl: int) -> None:
    """TTL on messages.at; a changed RAW_RETENTION_DAYS is applied with collMod, not a new index."""
    existing = {ix["name"]: ix for ix in db[MESSAGES].list_indexes()}
    current = existing.get("at_ttl")
    if current is None:
        db[MESSAGES].create_index([("at", ASCENDING)], name="at_ttl", expireAfterSeconds=ttl)
    elif current.get("expireAfterSeconds") != ttl:
        db.command("collMod", MESSAGES, index={"name": "at_ttl", "expireAfterSeconds": ttl})
    db[MESSAGES].create_index([("imei", ASCENDING), ("at", DESCENDING)], name="imei_at")
