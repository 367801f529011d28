"""In-process checks of the gateway's state keeping, against the real mongod: the coalesced device
state flush, and the command registry's copies that the dispatcher works from."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone

from bson import ObjectId
from pymongo import MongoClient

from gv50_gevent.commands.registry import CommandRegistry
from gv50_gevent.commands.store import CommandStore, first_open
from gv50_gevent.storage.database import DEVICES, durable
from gv50_gevent.protocol import Position, parse
from gv50_gevent.storage.devices import FLUSH_CHUNK, Devices, LastPosition
from tests.support import REPO

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=timezone.utc)


REPORT = parse("+RESP:GTFRI,090302,860000000100000,,13337,10,1,1,18.6,272,30.8,117.201342,31.855243,"
               "20170712074622,0460,0001,5504,29CF,00,347.8,00021:54:10,,,,220101,23,0,15,20170712154623,1854")


def position(minute: int, lon: float) -> LastPosition:
    fix = Position(gps_accuracy=1, longitude=lon, latitude=31.8, fix_time=T0 + timedelta(minutes=minute))
    return LastPosition(REPORT, fix, T0)  # type: ignore[arg-type]


def test_device_flush_writes_every_device_in_chunks_and_positions_only_move_forward(mongo: MongoClient,
                                                                                    db_name: str) -> None:
    db = mongo.get_database(db_name, write_concern=durable())
    devices = Devices(db, "gw-test")
    imeis = [f"{860000000100000 + i:015d}" for i in range(FLUSH_CHUNK * 2 + 37)]  # three chunks, one partial
    for i, imei in enumerate(imeis):
        devices.note(imei, T0, {"ignition": i % 2 == 0}, position(10, 117.0 + i * 1e-4))
    assert devices.flush() == len(imeis)
    stored = {doc["_id"]: doc for doc in db[DEVICES].find()}
    assert set(stored) == set(imeis)
    assert all(doc["last_seen_at"] == T0 for doc in stored.values())
    assert [stored[imei]["ignition"] for imei in imeis[:4]] == [True, False, True, False]
    assert stored[imeis[-1]]["last_position"]["location"]["coordinates"][0] == round(117.0 + (len(imeis) - 1) * 1e-4, 10)

    # An older fix (a +BUFF replay) is noted later: last_position keeps the newer one, last_seen_at moves on.
    later = T0 + timedelta(seconds=5)
    devices.note(imeis[0], later, None, position(5, 100.0))
    devices.note(imeis[1], later, None, position(11, 101.0))
    assert devices.flush() == 2
    first, second = db[DEVICES].find_one({"_id": imeis[0]}), db[DEVICES].find_one({"_id": imeis[1]})
    assert first["last_position"]["fix_time"] == T0 + timedelta(minutes=10)
    assert first["last_seen_at"] == later
    assert second["last_position"]["location"]["coordinates"] == [101.0, 31.8]
    assert devices.flush() == 0  # nothing noted since


def test_registry_keeps_the_last_seen_documents_without_their_history(mongo: MongoClient, db_name: str) -> None:
    store = CommandStore(mongo[db_name], "gw-test", ttl_s=3600, max_attempts=3)
    registry = CommandRegistry()
    imei = "860000000200000"
    fresh = {"_id": ObjectId(), "imei": imei, "type": "block"}
    sent = {"_id": ObjectId(), "imei": imei, "type": "unblock", "status": "sent", "attempts": 1,
            "created_at": T0 + timedelta(minutes=5), "history": [{"status": "sent", "at": T0}], "ack": None}
    registry.upsert(store.open_entry(fresh))
    registry.upsert(store.open_entry(sent))
    docs = registry.documents(imei)
    assert docs is not None and len(docs) == 2
    assert all("history" not in doc and "ack" not in doc for doc in docs)
    # The one awaiting its ACK goes first, whatever its age (one command in flight at a time).
    chosen = first_open(docs)
    assert chosen is not None and chosen["_id"] == sent["_id"]
    registry.discard(sent["_id"])
    chosen = first_open(registry.documents(imei))
    assert chosen is not None and chosen["_id"] == fresh["_id"]
    assert registry.documents("860000000299999") == []
    assert first_open([]) is None


def test_first_open_orders_unnormalised_commands_by_their_insert_time() -> None:
    older = {"_id": ObjectId.from_datetime(T0), "status": None}
    newer_but_dated = {"_id": ObjectId.from_datetime(T0 + timedelta(minutes=2)), "status": "pending",
                       "created_at": T0 + timedelta(minutes=1)}
    newest = {"_id": ObjectId.from_datetime(T0 + timedelta(minutes=3)), "status": "pending"}
    chosen = first_open([newest, newer_but_dated, older])
    assert chosen is not None and chosen["_id"] == older["_id"]


STOP_MID_FLUSH = """
from gevent import monkey
monkey.patch_all()
import sys
from datetime import datetime, timezone
from pymongo import MongoClient
from gv50_gevent.storage.database import durable
from gv50_gevent.storage.devices import Devices

uri, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
db = MongoClient(uri, tz_aware=True).get_database(name, write_concern=durable())
devices = Devices(db, "gw-test", flush_interval_s=0.01)
at = datetime.now(timezone.utc)
for i in range(n):
    devices.note(f"{860000000200000 + i:015d}", at, {"ignition": True})
devices.start()
while (written := db.devices.count_documents({})) == 0:  # the flush is under way
    pass
devices.stop()
print(written, db.devices.count_documents({}))
"""


def test_stopping_during_a_flush_loses_no_device_update(mongo_uri: str, db_name: str) -> None:
    """Under gevent (as the gateway runs), `stop()` while the flush greenlet is in the middle of
    its bulk writes: every device update noted before is in `devices` afterwards."""
    n = FLUSH_CHUNK * 100
    out = subprocess.run([sys.executable, "-c", STOP_MID_FLUSH, mongo_uri, db_name, str(n)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    written_at_stop, written = map(int, out.stdout.split())
    assert written_at_stop < n, "the flush was over before stop(): nothing was tested"
    assert written == n
