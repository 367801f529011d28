"""The batched writer against the real mongod: a document that cannot be encoded never stops it.
It is archived as a refused frame with the reason, the rest of its batch is stored, and everyone
waiting on the batch is released."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from pymongo import MongoClient

from gv50_gevent.storage.database import MESSAGES, POSITIONS, durable
from gv50_gevent.storage.writer import MAX_BSON_BYTES, BatchWriter

AT = datetime(2026, 12, 7, 8, 0, tzinfo=timezone.utc)
IMEI = "865083030000123"


def archived(raw: str) -> dict:
    return {"imei": IMEI, "direction": "in", "raw": raw, "at": AT, "kind": "report", "status": "ok",
            "error": None, "remote_addr": "10.0.0.1:5000", "gateway_id": "gw-test"}


def position(count: str, **extra: object) -> dict:
    return {"_id": {"imei": IMEI, "count": count}, "imei": IMEI, "count": count, "received_at": AT, **extra}


@pytest.mark.parametrize("bad, why", [
    (position("0003", mileage_km={1, 2}), "cannot be encoded (InvalidDocument: Invalid document: cannot encode object"),
    (position("0003", odometer=2 ** 70), "cannot be encoded (OverflowError: MongoDB can only handle up to 8-byte"),
    (position("0003", **{"bad\x00key": 1}), "cannot be encoded (InvalidDocument: Invalid document: Key names"),
    # Over 16 MB: the driver lets a little more through, and mongod refuses it.
    (archived("+RESP:GTFRI," + "A" * (MAX_BSON_BYTES + 10)), "MongoDB refused the messages document (object "
                                                              "to insert too large"),
], ids=["set", "int128", "nul-key", "17MB"])
def test_a_document_that_cannot_be_stored_is_archived_as_refused_and_the_batch_is_stored(
        mongo: MongoClient, db_name: str, bad: dict, why: str) -> None:
    db = mongo.get_database(db_name, write_concern=durable())
    writer = BatchWriter(db, batch_size=100, interval_s=0.01, writers=2, gateway_id="gw-test")
    writer.start()
    try:
        writer.acquire(5)
        batches = {id(b): b for b in (
            writer.put(POSITIONS, position("0001")),
            writer.put(MESSAGES, archived("+RESP:GTFRI,good,0001")),
            writer.put(POSITIONS if "_id" in bad else MESSAGES, bad),
            writer.put(POSITIONS, position("0002")),
            writer.put(MESSAGES, archived("+RESP:GTFRI,good,0002")),
        )}
        assert len(batches) == 1
        batch = next(iter(batches.values()))
        assert batch.done.wait(timeout=20), "the session waiting on the batch was never released"

        assert sorted(d["count"] for d in db[POSITIONS].find()) == ["0001", "0002"]
        assert db[MESSAGES].count_documents({"status": "ok"}) == 2
        refused = list(db[MESSAGES].find({"status": "rejected"}))
        assert len(refused) == 1
        assert refused[0]["imei"] == IMEI and why in refused[0]["error"], refused[0]["error"]
        assert refused[0]["at"] == AT and refused[0]["gateway_id"] == "gw-test" and refused[0]["raw"]
        stats = writer.stats()
        assert stats["unencodable"] + stats["refused"] == 1
        assert all(not g.dead for g in writer._greenlets), "a writer greenlet died"

        # The writers carry on: the next batch is stored as usual.
        writer.acquire(1)
        after = writer.put(POSITIONS, position("0004"))
        assert after.done.wait(timeout=20)
        assert db[POSITIONS].count_documents({"count": "0004"}) == 1
    finally:
        assert writer.stop(timeout=20)
