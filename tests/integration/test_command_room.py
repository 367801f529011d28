"""The command room in-process, against the real mongod: the link rule, one clock read per
transition, the bounded memory of used serials, and the config shadow's single atomic update."""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from pymongo import MongoClient, monitoring

from gv50_gevent.commands import store as store_module
from gv50_gevent.commands.link import link_refusal
from gv50_gevent.commands.dispatcher import ACK_PENDING_RECHECK_S, DeviceWorker
from gv50_gevent.commands.service import RECENT_SERIALS_KEEP_S, CommandService, _AckWork
from gv50_gevent.commands.store import CommandStore
from gv50_gevent.config import Settings
from gv50_gevent.protocol import parse
from gv50_gevent.storage.database import durable
from gv50_gevent.storage.devices import Devices
from tests.integration.test_device_state import GTALM

T0 = datetime(2026, 12, 1, 12, 0, 0, tzinfo=timezone.utc)


@dataclass
class FakeLink:
    id: str
    transport: str = "tcp"
    remote_addr: str = "10.0.0.1:4000"
    connected_at: datetime = T0
    imei: str | None = "865083030000001"
    password: str | None = None
    closing: str | None = None
    sent: list[bytes] = field(default_factory=list)

    def send(self, data: bytes, kind: str) -> None:
        self.sent.append(data)

    def set_sack(self, enabled: bool) -> None:
        pass


def test_the_link_rule() -> None:
    sent = T0 + timedelta(seconds=10)
    tcp = {"transport": "tcp", "session_id": "s1", "address": "10.0.0.1:4000", "at": sent}
    now = sent + timedelta(seconds=5)
    assert link_refusal(tcp, FakeLink("s1"), "10.0.0.1:4000", now, 60) is None  # the connection it went out on
    later = FakeLink("s2", connected_at=sent + timedelta(seconds=1), remote_addr="10.9.9.9:1")
    assert link_refusal(tcp, later, later.remote_addr, now, 60) is None  # the tracker's next connection
    older = FakeLink("s0", connected_at=T0)  # another connection that was open before the send
    assert "another TCP connection" in (link_refusal(tcp, older, older.remote_addr, now, 60) or "")
    for transport in ("udp", "http"):
        packet = FakeLink("p", transport=transport, connected_at=sent + timedelta(seconds=1))
        assert link_refusal(tcp, packet, "10.0.0.1:4000", now, 60) is not None  # even from the same address

    udp = {"transport": "udp", "session_id": "p1", "address": "10.0.0.2:5000", "at": sent}
    peer = FakeLink("p1", transport="udp", remote_addr="10.0.0.2:5000")
    assert link_refusal(udp, peer, "10.0.0.2:5000", now, 60) is None
    assert "10.0.0.2:5000" in (link_refusal(udp, peer, "10.0.0.3:5000", now, 60) or "")
    assert link_refusal(udp, peer, "10.0.0.2:5000", sent + timedelta(seconds=61), 60) is not None
    assert link_refusal(udp, FakeLink("s9"), "10.0.0.2:5000", now, 60) is not None  # TCP for a UDP command
    assert "HTTP" in (link_refusal(udp, FakeLink("h", transport="http"), "10.0.0.2:5000", now, 60) or "")
    # A command sent before `sent_via` was recorded: judged by its TCP session.
    legacy = {"transport": "tcp", "session_id": "s1", "at": sent}
    assert link_refusal(legacy, FakeLink("s1"), "x", now, 60) is None


def test_one_transition_reads_the_clock_once(mongo: MongoClient, db_name: str, monkeypatch: Any) -> None:
    # A clock that moves 1 ms at every read: two reads in one transition would show.
    ticks = itertools.count()
    monkeypatch.setattr(store_module, "utcnow", lambda: T0 + timedelta(milliseconds=next(ticks)))
    db = mongo.get_database(db_name, write_concern=durable())
    store = CommandStore(db, "gw-clock", 3600, 3)
    cid = db.commands.insert_one({"imei": "865083030000001", "type": "block"}).inserted_id
    doc = store.normalise(db.commands.find_one({"_id": cid}))
    assert doc is not None
    sent = store.claim(doc, "1A2B", "s1", via={"transport": "tcp", "address": "10.0.0.1:4000"})
    assert sent is not None
    assert sent["sent_at"] == sent["history"][-1]["at"] == sent["sent_via"]["at"]
    done = store.acknowledge(sent, "+ACK:GTOUT,...")
    assert done is not None
    assert done["acknowledged_at"] == done["finished_at"] == done["history"][-1]["at"]

    late = db.commands.insert_one({"imei": "865083030000001", "type": "block",
                                   "expires_at": T0 - timedelta(hours=1)}).inserted_id
    pending = store.normalise(db.commands.find_one({"_id": late}))
    assert pending is not None and pending["status"] == "pending"
    expired = store.expire(late, T0 + timedelta(seconds=1))
    assert expired is not None and expired["finished_at"] == expired["history"][-1]["at"]


class NoLinks:
    def link(self, imei: str) -> None:
        return None


def test_used_serials_are_forgotten_once_stale_and_bounded(mongo: MongoClient, db_name: str) -> None:
    db = mongo.get_database(db_name, write_concern=durable())
    settings = Settings(_env_file=None, GATEWAY_ID="gw-serials")  # type: ignore[call-arg]
    service = CommandService(settings, db, NoLinks(), Devices(db, "gw-serials"))
    for n in range(40):
        service.used_serial("865083030000001", f"{n:04X}")
    service.used_serial("865083030000002", "ABCD")
    held = service.recent_serials("865083030000001")
    assert len(held) == store_module.RECENT_SERIALS and "0027" in held and "0000" not in held  # bounded per device
    assert service.prune_serials() == 0  # fresh: kept
    assert service.prune_serials(time.monotonic() + RECENT_SERIALS_KEEP_S + 1) == 2
    assert service.recent_serials("865083030000001") == set() and not service._recent_serials


class Commands(monitoring.CommandListener):
    def __init__(self) -> None:
        self.names: list[tuple[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.append((event.command_name, event.command.get(event.command_name)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_a_settings_dump_is_one_atomic_update(mongo_uri: str, db_name: str) -> None:
    listener = Commands()
    client: MongoClient = MongoClient(mongo_uri, tz_aware=True, event_listeners=[listener])
    try:
        db = client.get_database(db_name, write_concern=durable())
        devices = Devices(db, "gw-shadow")
        dump = [parse(line.rstrip("$")) for line in GTALM]
        imei = dump[0].imei
        at = datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc)
        sent_at = dump[-1].sent_at or at
        long_ago, future = datetime(2000, 1, 1, tzinfo=timezone.utc), datetime(2100, 1, 1, tzinfo=timezone.utc)
        db.devices.update_one({"_id": imei}, {"$set": {"config.fri": {"mode": 5, "source": "report", "at": long_ago}}},
                              upsert=True)
        listener.names.clear()
        devices.config.apply(imei, dump, at)  # type: ignore[arg-type]
        on_devices = [name for name, coll in listener.names if coll == "devices"]
        assert on_devices == ["findAndModify"]  # no read between which a command's write could slip
        stored = db.devices.find_one({"_id": imei})["config"]
        assert stored["fri"]["source"] == "report" and stored["fri"]["at"] == sent_at and stored["fri"]["mode"] != 5
        assert len(stored) > 1  # every block of the dump
        # A block from a newer dump stays: this one is older (a +BUFF replay).
        db.devices.update_one({"_id": imei}, {"$set": {"config.fri": {"mode": 5, "source": "report", "at": future}}})
        devices.config.apply(imei, dump, at)  # type: ignore[arg-type]
        after = db.devices.find_one({"_id": imei})["config"]
        assert after["fri"] == {"mode": 5, "source": "report", "at": future}
        assert {k: v for k, v in after.items() if k != "fri"} == {k: v for k, v in stored.items() if k != "fri"}
    finally:
        client.close()


def test_a_command_whose_ack_arrived_is_not_resent_while_the_ack_is_written(mongo: MongoClient,
                                                                             db_name: str) -> None:
    db = mongo.get_database(db_name, write_concern=durable())
    settings = Settings(_env_file=None, GATEWAY_ID="gw-resend", COMMAND_ACK_TIMEOUT_S=1)  # type: ignore[call-arg]
    service = CommandService(settings, db, NoLinks(), Devices(db, "gw-resend"))
    imei = "865083030000009"
    link = FakeLink("s1", imei=imei, connected_at=store_module.utcnow() - timedelta(minutes=1))
    cid = db.commands.insert_one({"imei": imei, "type": "block"}).inserted_id
    doc = service.store.normalise(db.commands.find_one({"_id": cid}))
    assert doc is not None
    sent = service.store.claim(doc, "00AA", link.id, via={"transport": "tcp", "address": link.remote_addr})
    assert sent is not None
    due = db.commands.find_one_and_update({"_id": cid}, {"$set": {"sent_at": store_module.utcnow() - timedelta(
        seconds=5)}}, return_document=True)  # its ACK timeout has passed
    worker = DeviceWorker(service, link)
    ack = parse(f"+ACK:GTOUT,090302,{imei},,00AA,20240101000000,0001")
    # The tracker's ACK has arrived on its connection and is being written (MongoDB is slow).
    service._acks[imei] = deque([_AckWork(link, ack, link.remote_addr)])  # type: ignore[arg-type]
    assert worker._step(due) == ACK_PENDING_RECHECK_S and link.sent == []
    # A forged ACK from elsewhere holds nothing back: the command is resent.
    forger = FakeLink("p9", transport="udp", imei=imei, remote_addr="10.6.6.6:1")
    service._acks[imei] = deque([_AckWork(forger, ack, forger.remote_addr)])  # type: ignore[arg-type]
    worker._step(due)
    assert len(link.sent) == 1 and db.commands.find_one({"_id": cid})["attempts"] == 2
