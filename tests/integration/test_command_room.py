"""The command room in-process, against the real mongod: the link rule, one clock read per
transition, the bounded memory of used serials, and the config shadow's single atomic update."""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from pymongo import MongoClient, monitoring
from pymongo.errors import (
    AutoReconnect, BulkWriteError, DuplicateKeyError, ExecutionTimeout, InvalidOperation, NetworkTimeout,
    NotPrimaryError, OperationFailure, ServerSelectionTimeoutError, WriteConcernError, WriteError,
)

from gv50_gevent.commands import store as store_module
from gv50_gevent.commands.link import link_refusal, sent_via, to_ms
from gv50_gevent.commands.dispatcher import ACK_PENDING_RECHECK_S, DeviceWorker
from gv50_gevent.commands.service import REJECTED_ADDRESSES, RECENT_SERIALS_KEEP_S, CommandService, _AckWork
from gv50_gevent.commands.store import CommandStore
from gv50_gevent.config import Settings
from gv50_gevent.protocol import parse
from gv50_gevent.protocol.commands import CommandError
from gv50_gevent.storage.database import TRANSIENT_CODES, durable, transient
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
    # One left `sent` by an older version, without `sent_via`: it may have gone out over TCP or UDP,
    # so any trusted link answers it; never HTTP, never a packet that claims a tracker live on TCP.
    older = sent_via({"session_id": "p1", "sent_at": sent})
    assert older["transport"] is None
    assert link_refusal(older, FakeLink("s5", connected_at=T0), "10.0.0.1:4000", now, 60) is None
    assert link_refusal(older, FakeLink("p1", transport="udp"), "10.0.0.2:5000", now, 60) is None
    assert link_refusal(older, UntrustedPeer("p2", transport="udp"), "10.6.6.6:1", now, 60) is not None
    assert link_refusal(older, FakeLink("h", transport="http"), "10.0.0.2:5000", now, 60) is not None


@dataclass
class UntrustedPeer(FakeLink):
    trusted: bool = False  # a datagram that claims an IMEI live on TCP (gateway.packet.PacketPeer)


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


class Heard(monitoring.CommandListener):
    """The writes (by the status they set) and reads of `commands` a client sent."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name in ("findAndModify", "update"):
            status = ((event.command.get("update") or {}).get("$set") or {}).get("status")
            self.writes.append(str(status))
        elif event.command_name == "find" and event.command.get("find") == "commands":
            self.writes.append("read")

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def test_a_claim_an_ack_and_the_read_of_the_next_command_go_through_their_own_client(
        mongo: MongoClient, mongo_uri: str, db_name: str) -> None:
    # The claim, the one durable write between an operator's insert and the bytes on the wire,
    # does not wait for a connection behind the command room's other work; nor do the ACK and
    # the dispatcher's read of a device's next command (which waits for that ACK).
    heard = Heard()
    claims: MongoClient = MongoClient(mongo_uri, event_listeners=[heard])
    try:
        db = mongo.get_database(db_name, write_concern=durable())
        store = CommandStore(db, "gw-claim", 3600, 3, claim_db=claims.get_database(db_name, write_concern=durable()))
        cid = db.commands.insert_one({"imei": "865083030000001", "type": "block"}).inserted_id
        sent = store.claim(db.commands.find_one({"_id": cid}), "1A2B", "s1")
        assert sent is not None and sent["status"] == "sent" and sent["attempts"] == 1
        done = store.acknowledge(sent, "+ACK:GTOUT,...")
        assert done is not None and done["status"] == "acknowledged"
        # The ACK's write too: the device's next command waits for it.
        assert heard.writes == ["sent", "acknowledged"]
        assert db.commands.find_one({"_id": cid})["status"] == "acknowledged"
        assert store.next_open("865083030000001") is None
        assert heard.writes[2:] == ["read"]
        store.normalise(db.commands.find_one({"_id": db.commands.insert_one(
            {"imei": "865083030000001", "type": "block"}).inserted_id}))
        assert heard.writes[3:] == []  # the command room's other writes go through its own client
    finally:
        claims.close()


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


def test_transient_tells_errors_that_clear_from_those_that_never_do(mongo: MongoClient, mongo_uri: str,
                                                                    db_name: str) -> None:
    from pymongo import helpers_shared

    # pymongo's own lists (private names, hence this check): an election, a node shutting down, the network.
    assert helpers_shared._RETRYABLE_ERROR_CODES <= TRANSIENT_CODES
    for code in (6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436, 63, 150, 134, 133):
        assert transient(OperationFailure("x", code=code)), code
    assert transient(AutoReconnect("connection reset")) and transient(NotPrimaryError("not primary"))
    assert transient(NetworkTimeout("timed out")) and transient(ServerSelectionTimeoutError("no primary"))
    assert transient(WriteConcernError("waiting for replication timed out", code=64))
    assert transient(ExecutionTimeout("operation exceeded time limit", code=50))
    assert transient(OperationFailure("x", code=1, details={"errorLabels": ["RetryableWriteError"]}))
    assert not transient(OperationFailure("not authorized", code=13))
    assert not transient(DuplicateKeyError("E11000", code=11000))
    assert not transient(ValueError("a bug")) and not transient(CommandError("type", "unknown"))
    assert transient(BulkWriteError({"writeErrors": [], "writeConcernErrors": [{"code": 64}]}))
    assert not transient(BulkWriteError({"writeErrors": [{"code": 121}], "writeConcernErrors": []}))

    # Real ones from the real server: a document the collection's validator refuses ...
    db = mongo.get_database(db_name, write_concern=durable())
    db.create_collection("strict", validator={"n": {"$type": "int"}})
    try:
        db.strict.insert_one({"n": "one"})
        raise AssertionError("the validator let it in")
    except WriteError as exc:
        assert exc.code == 121 and not transient(exc)
    # ... and a client closed at shutdown.
    closed: MongoClient = MongoClient(mongo_uri)
    closed.close()
    try:
        closed[db_name].commands.find_one({})
        raise AssertionError("a closed client answered")
    except InvalidOperation as exc:
        assert not transient(exc)


@pytest.fixture
def room(mongo: MongoClient, db_name: str) -> Iterator[Callable[..., tuple[CommandService, Any]]]:
    """`room(gateway_id, db=None)`: a command service in this process on the real mongod (not
    started: no watcher, no housekeeping), and its database; its writers are stopped after."""
    made: list[CommandService] = []

    def make(gateway_id: str, db: Any = None) -> tuple[CommandService, Any]:
        db = db if db is not None else mongo.get_database(db_name, write_concern=durable())
        settings = Settings(_env_file=None, GATEWAY_ID=gateway_id)  # type: ignore[call-arg]
        made.append(CommandService(settings, db, NoLinks(), Devices(db, gateway_id)))
        return made[-1], db

    yield make
    for service in made:
        service._stopping.set()
        service._writes.kill()


def sent_command(service: CommandService, db: Any, imei: str, serial: str,
                 type_: str = "block") -> tuple[FakeLink, dict[str, Any]]:
    """A command sent over a TCP connection of a minute ago: the link, and the command."""
    link = FakeLink("s1", imei=imei, connected_at=store_module.utcnow() - timedelta(minutes=1))
    cid = db.commands.insert_one({"imei": imei, "type": type_}).inserted_id
    doc = service.store.normalise(db.commands.find_one({"_id": cid}))
    assert doc is not None
    sent = service.store.claim(doc, serial, link.id, via={"transport": link.transport, "address": link.remote_addr})
    assert sent is not None
    if type_ == "get_version":
        service.expect_answer(imei, "GTVER", sent)
    return link, sent


def test_an_ack_whose_write_fails_for_good_is_not_retried_and_releases_its_frame(room: Any) -> None:
    """A permanent error (here the collection's validator refuses `acknowledged`) never clears:
    the ACK's frame is released at once (its +SACK may go out), counted and logged once."""
    service, db = room("gw-permanent")
    imei = "865083030000011"
    link, sent = sent_command(service, db, imei, "00BB")
    db.command("collMod", "commands", validator={"status": {"$ne": "acknowledged"}})
    settled = service.ack(link, parse(f"+ACK:GTOUT,090302,{imei},,00BB,20240101000000,0001"),  # type: ignore
                          link.remote_addr)
    assert settled.done.wait(5), "the ACK's frame is still held"
    assert service.stats["writes_failed"] == 1 and service.stats["write_retries"] == 0
    assert db.commands.find_one({"_id": sent["_id"]})["status"] == "sent"


def test_writes_after_the_client_closed_at_shutdown_are_not_retried(room: Any, mongo_uri: str,
                                                                    db_name: str) -> None:
    client: MongoClient = MongoClient(mongo_uri, tz_aware=True)
    service, _ = room("gw-closed", client.get_database(db_name, write_concern=durable()))
    imei = "865083030000012"
    link = FakeLink("s1", imei=imei)
    client.close()
    settled = service.ack(link, parse(f"+ACK:GTOUT,090302,{imei},,00CC,20240101000000,0001"),  # type: ignore
                          link.remote_addr)
    assert settled.done.wait(5), "the ACK's frame is still held"
    assert service.stats["writes_failed"] == 1


def test_refused_answer_reports_are_counted_but_logged_once_a_minute_per_address(room: Any, caplog: Any) -> None:
    service, db = room("gw-answers")
    imei = "865083030000013"
    sent_command(service, db, imei, "00DD", "get_version")
    forged = parse(f"+RESP:GTVER,090302,{imei},,GV50,FFFF,FFFF,20240101000000,0A0A")
    caplog.set_level("WARNING", logger="gv50_gevent.commands.service")
    for n in range(50):
        address = "10.6.6.6:1" if n < 30 else f"10.6.6.{n}:1"  # one forger, then 20 more addresses
        forger = FakeLink(f"p{n}", transport="udp", imei=imei, remote_addr=address)
        assert service.report(forger, forged, address, store_module.utcnow()) is None  # type: ignore[arg-type]
    warnings = [r for r in caplog.records if "does not answer command" in r.getMessage()]
    assert service.stats["answers_rejected"] == 50
    assert len(warnings) == REJECTED_ADDRESSES  # the first forger once, then one each for the next addresses
    assert "GTVER" in service.answers[imei]  # still waiting for the real one


def test_an_answer_is_stamped_with_the_time_its_frame_was_read(room: Any) -> None:
    service, db = room("gw-answer-time")
    imei = "865083030000014"
    link, sent = sent_command(service, db, imei, "00EE", "get_version")
    read_at = store_module.utcnow() - timedelta(seconds=7)  # read then; handled now (a slow turn)
    report = parse(f"+RESP:GTVER,090302,{imei},,GV50,020E,0105,20240101000000,0002")
    settled = service.report(link, report, link.remote_addr, read_at)  # type: ignore[arg-type]
    assert settled is not None and settled.done.wait(5)
    assert db.commands.find_one({"_id": sent["_id"]})["answer"]["received_at"] == to_ms(read_at)
