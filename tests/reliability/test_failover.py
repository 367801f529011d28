"""Failovers of a real 3-node replica set under load: a SACK still means the data survives.

The set is three `mongod` on loopback (tests/replset.py), shared by the tests of this module and
healed between them. The gateway is a real process whose MONGODB_URI names all three members and
the replica set, with SACK_MODE=all and the default WRITE_CONCERN=majority. Its load is the
simulator (`--sack --list-sacked`: every report kept until its +SACK, replayed as +BUFF after a
reconnect, and each SACKed line listed), so "every SACKed report is stored exactly once" is
checked line by line against `positions`.

* partition and rollback: both secondaries freeze (SIGSTOP, as a network partition looks to the
  primary), so the primary goes on applying writes it cannot replicate until it notices, about
  2 s later, and steps down; then it is killed, the secondaries are killed and restarted and
  elect a new primary, and the old primary restarts and rolls back what only it had. The test
  proves the rollback happened (the old primary's log and its rollback/ files hold positions),
  and that no SACKed report was among what was lost.
* `replSetStepDown` during ingest: nothing SACKed is lost.
* `replSetStepDown` during command delivery (trackers ACK 0.5 s late, so some commands await their
  ACK as it happens): every command inserted around it reaches its tracker exactly once, ends
  `acknowledged`, and the change stream resumes from its token (no new sweep).
* one secondary down (10 s; 30 s with `pytest --long`): SACKs keep coming every second.
* an ACK whose write fails (fail points) is retried until it gets through, and keeps the judgement
  of its link even when another gateway sends the command again meanwhile.

Each test prints its figures and writes them to $TMPDIR/gv50-failover-<test>.json.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from datetime import timedelta
from typing import Any

import pytest
from bson import ObjectId
from pymongo import MongoClient
from pymongo.errors import DuplicateKeyError, PyMongoError

from gv50_gevent.protocol.commands import decode_command
from tests.replset import ReplicaSet
from tests.support import GatewayProcess, free_port, wait_for

from .helpers import Simulator, check_exactly_once, duplicate_positions, figures, line_key, stored_keys, tracebacks

LONG = os.environ.get("GV50_LONG_TESTS") == "1"
IMEI_BASE = 866000000000000


@dataclass(frozen=True)
class Load:
    devices: int
    rate: float      # GTFRI/s, the whole fleet
    duration: float  # seconds of sending
    drain: float = 60.0

    def args(self, *extra: str) -> list[str]:
        return ["--devices", str(self.devices), "--rate", str(self.rate), "--duration", str(self.duration),
                "--drain", str(self.drain), "--imei-base", str(IMEI_BASE), "--sack", "--list-sacked",
                "--reconnect-delay", "1", *extra]


# A tracker keeps at most 600 unSACKed reports: at 20 reports/s each, a pause of SACKs of up to
# 30 s fits in every buffer, so nothing is dropped on the trackers' side.
PARTITION = Load(devices=50, rate=1000, duration=60 if LONG else 35)
STEPDOWN_INGEST = Load(devices=50, rate=1000, duration=45 if LONG else 20)
SECONDARY_DOWN_S = 30.0 if LONG else 10.0
SECONDARY_DOWN = Load(devices=50, rate=1000, duration=SECONDARY_DOWN_S + 15)
COMMAND_DEVICES = 20
COMMANDS = 200 if LONG else 80


def save(name: str, figures_: dict[str, Any]) -> None:
    path = Path(tempfile.gettempdir()) / f"gv50-failover-{name}.json"
    path.write_text(json.dumps(figures_, indent=1, default=str))
    print(f"\n{name}: {json.dumps(figures_, default=str)}")


@pytest.fixture(scope="module")
def replset() -> Iterator[ReplicaSet]:
    with ReplicaSet(name="gv50fo") as rs:
        yield rs


@pytest.fixture
def rs(replset: ReplicaSet) -> ReplicaSet:
    """The module's set, healthy: every member up, one primary (a previous test may have left it
    mid-failover if it failed)."""
    replset.heal()
    return replset


@pytest.fixture
def client(rs: ReplicaSet) -> Iterator[MongoClient[dict[str, Any]]]:
    c = rs.client()
    yield c
    c.close()


@contextmanager
def gateway_on(rs: ReplicaSet, client: MongoClient[dict[str, Any]], **extra: str) -> Iterator[GatewayProcess]:
    """A gateway on the set, SACK on; its database dropped after."""
    settings = {"MONGODB_URI": rs.uri, "MONGODB_DB": f"gv50_failover_{uuid.uuid4().hex[:8]}",
                "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(free_port()), "GATEWAY_ID": "gw-failover",
                "SACK_MODE": "all", "LOG_LEVEL": "INFO", "SHUTDOWN_GRACE_S": "3", **extra}
    gw = GatewayProcess(settings, client[settings["MONGODB_DB"]])
    gw.start(timeout=60)
    try:
        yield gw
    finally:
        gw.stop()
        client.drop_database(settings["MONGODB_DB"])


@pytest.fixture
def gateway(rs: ReplicaSet, client: MongoClient[dict[str, Any]]) -> Iterator[GatewayProcess]:
    with gateway_on(rs, client, LAST_SEEN_INTERVAL_S="1") as gw:
        yield gw


def ingest_started(gw: GatewayProcess, at_least: int) -> None:
    wait_for(lambda: gw.db.positions.estimated_document_count() >= at_least, timeout=30, interval=0.2,
             what="ingest to start")


def check_gateway(gw: GatewayProcess) -> str:
    assert gw.proc is not None
    log = gw.log()
    assert gw.proc.poll() is None, f"gateway exited:\n{log[-3000:]}"
    assert tracebacks(log) == [], "\n\n".join(tracebacks(log)[:3])
    return log


def positions_figures(gw: GatewayProcess, report: dict[str, Any]) -> dict[str, int]:
    """SACKed, stored, lost (SACKed and not stored) and duplicated (keys stored twice)."""
    sacked = {line_key(line) for lines in report["sacked_lines"].values() for line in lines}
    stored = stored_keys(gw.db, list(report["sacked_lines"]))
    return {"sacked": len(sacked), "stored": len(stored), "lost": len(sacked - set(stored)),
            "duplicated": len(stored) - len(set(stored)) + len(duplicate_positions(gw.db))}


def assert_stored_once(gw: GatewayProcess, report: dict[str, Any]) -> None:
    """Every SACKed report stored exactly once, and the fleet left nothing behind."""
    assert report["unsacked"] == 0, f"{report['unsacked']} reports never SACKed: {figures(report)}"
    assert report["buffer_dropped"] == 0, f"trackers dropped reports from full buffers: {figures(report)}"
    check_exactly_once(gw.db, report)


def test_partition_then_rollback_loses_nothing_sacked(rs: ReplicaSet, gateway: GatewayProcess) -> None:
    gw, load = gateway, PARTITION
    sim = Simulator(gw.port, *load.args())
    try:
        ingest_started(gw, int(load.rate * 2))
        time.sleep(3)
        old = rs.wait_primary(10)
        cut = [m for m in rs.members if m is not old]

        # The partition: the primary can reach neither secondary. It applies writes it can no
        # longer replicate (w=1 in effect) until it notices, then steps down.
        partitioned_at = time.monotonic()
        for member in cut:
            member.pause()
        # Only its own word counts: a `hello` that merely timed out (a busy machine) is no step-down.
        wait_for(lambda: (hello := old.hello(timeout_ms=5000)) is not None and not hello.get("isWritablePrimary"),
                 timeout=30, interval=0.05, what="the partitioned primary to step down")
        alone_s = time.monotonic() - partitioned_at
        old.kill()
        for member in cut:
            member.restart()
        new = rs.wait_primary(60, other_than=old)
        elected_s = time.monotonic() - partitioned_at
        old.start()
        summaries = old.wait_rollback(60)
        rs.wait_healthy(60)
        healed_s = time.monotonic() - partitioned_at

        report = sim.finish(timeout=load.duration + load.drain + 120)
    finally:
        sim.kill()

    check_gateway(gw)
    # The rollback happened, and it took positions with it: otherwise this test proves nothing.
    namespaces = {ns for summary in summaries for ns in summary.get("affectedNamespaces", [])}
    assert f"{gw.db.name}.positions" in namespaces, summaries
    rolled_back = [doc for doc in old.rolled_back() if isinstance(doc.get("_id"), dict) and "imei" in doc["_id"]]
    assert rolled_back, f"no position in {old.rollback_files()}"
    rolled_keys = {(d["_id"]["imei"], d["_id"]["report"], d["_id"]["sent_at"], d["_id"]["count"], d["_id"]["index"])
                   for d in rolled_back}

    counted = positions_figures(gw, report)
    # What the old primary alone had is stored again on the new one: the gateway had not SACKed
    # it (no majority), so it retried it, or the tracker replayed it.
    stored_again = len(rolled_keys & set(stored_keys(gw.db, list(report["sacked_lines"]))))
    result = {
        **counted, "rolled_back_positions": len(rolled_keys), "rolled_back_then_stored": stored_again,
        "rollback_ops": sum(sum(s.get("rollbackCommandCounts", {}).values()) for s in summaries),
        "pause_s": report["sack_timeline"]["gap_max_s"], "primary_alone_s": round(alone_s, 1),
        "new_primary_after_s": round(elected_s, 1), "healed_after_s": round(healed_s, 1),
        "old_primary": old.name, "new_primary": new.name, "sack_latency_ms": report["sack_latency_ms"],
        "reconnects": report["connects"] - report["devices"],
    }
    save("partition", result)
    assert_stored_once(gw, report)
    assert stored_again == len(rolled_keys), \
        f"{len(rolled_keys) - stored_again} rolled-back positions never stored again"


def test_step_down_during_ingest_loses_nothing_sacked(rs: ReplicaSet, gateway: GatewayProcess) -> None:
    gw, load = gateway, STEPDOWN_INGEST
    sim = Simulator(gw.port, *load.args())
    try:
        ingest_started(gw, int(load.rate * 2))
        time.sleep(3)
        before = rs.step_down()
        after = rs.wait_primary(60, other_than=before)
        if LONG:  # and back again
            time.sleep(10)
            rs.step_down()
            rs.wait_primary(60, other_than=after)
        report = sim.finish(timeout=load.duration + load.drain + 120)
    finally:
        sim.kill()

    check_gateway(gw)
    counted = positions_figures(gw, report)
    result = {**counted, "pause_s": report["sack_timeline"]["gap_max_s"], "from": before.name, "to": after.name,
              "sack_latency_ms": report["sack_latency_ms"], "reconnects": report["connects"] - report["devices"]}
    save("stepdown-ingest", result)
    assert_stored_once(gw, report)


class CommandInserter(threading.Thread):
    """The operator: inserts `count` commands, one every `interval` s, spread over the fleet,
    with its own `_id` so that an insert retried after an election cannot make two commands."""

    def __init__(self, uri: str, db_name: str, imeis: list[str], count: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=60_000)
        self.db_name, self.imeis, self.count, self.interval = db_name, imeis, count, interval
        self.ids: list[ObjectId] = []
        self.retries = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        commands = self.client[self.db_name].commands
        try:
            for k in range(self.count):
                command_id = ObjectId()
                doc = {"_id": command_id, "imei": self.imeis[k % len(self.imeis)],
                       "type": "block" if (k // len(self.imeis)) % 2 == 0 else "unblock"}
                for attempt in range(20):
                    try:
                        commands.insert_one(doc)
                        break
                    except DuplicateKeyError:
                        break  # the first try got through before its answer was lost
                    except PyMongoError:
                        self.retries += 1
                        time.sleep(0.5)
                else:
                    raise AssertionError(f"could not insert command {k}")
                self.ids.append(command_id)
                time.sleep(self.interval)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.client.close()


def test_step_down_during_command_delivery_sends_each_command_once(rs: ReplicaSet, gateway: GatewayProcess) -> None:
    gw = gateway
    fleet = [f"{IMEI_BASE + i:015d}" for i in range(COMMAND_DEVICES)]
    interval = 0.1
    inserting_s = COMMANDS * interval
    # Trackers acknowledge 0.5 s late, so the step-down also finds commands `sent` and awaiting
    # their ACK: the ACK's state change must then be written on the new primary.
    sim = Simulator(gw.port, "--devices", str(COMMAND_DEVICES), "--rate", "50", "--heartbeat", "5",
                    "--duration", str(inserting_s + 25), "--drain", "30", "--imei-base", str(IMEI_BASE), "--sack",
                    "--list-sacked", "--reconnect-delay", "1", "--ack-delay", "0.5")
    try:
        wait_for(lambda: gw.db.devices.count_documents({"online": True}) == COMMAND_DEVICES, timeout=30,
                 interval=0.2, what="the fleet to be online")
        sweeps_before = gw.log().count("commands sweep:")
        inserter = CommandInserter(rs.uri, gw.db.name, fleet, COMMANDS, interval)
        inserter.start()
        time.sleep(inserting_s / 3)
        inserted_before = len(inserter.ids)
        awaiting_ack = gw.db.commands.count_documents({"status": "sent"})
        before = rs.step_down()
        after = rs.wait_primary(60, other_than=before)
        inserted_by_election = len(inserter.ids)
        inserter.join(inserting_s + 120)
        assert inserter.error is None, inserter.error
        assert len(inserter.ids) == COMMANDS
        # Every command acknowledged, while the fleet is still connected.
        wait_for(lambda: gw.db.commands.count_documents({"_id": {"$in": inserter.ids}, "status": "acknowledged"})
                 == COMMANDS, timeout=90, interval=0.5, what="every command acknowledged")
        report = sim.finish(timeout=inserting_s + 25 + 30 + 120)
    finally:
        sim.kill()

    log = check_gateway(gw)
    docs = {doc["_id"]: doc for doc in gw.db.commands.find({"_id": {"$in": inserter.ids}})}
    # What the trackers received: AT+GT lines, counted per (imei, serial).
    received: Counter[tuple[str, str | None]] = Counter()
    for entry in report["command_log"]:
        received[(entry["imei"], decode_command(entry["line"]).serial)] += 1
    twice = {key: n for key, n in received.items() if n > 1}
    expected = Counter((doc["imei"], doc["serial"]) for doc in docs.values())
    missing = set(expected) - set(received)
    resent = [doc["history"] for doc in docs.values() if doc.get("attempts") != 1]
    sweeps = log.count("commands sweep:") - sweeps_before
    result = {"commands": COMMANDS, "acknowledged": sum(d["status"] == "acknowledged" for d in docs.values()),
              "lines_received": sum(received.values()), "sent_twice": len(twice), "missing": len(missing),
              "attempts_over_1": len(resent), "sweeps_after_start": sweeps,
              "watcher_reopened": log.count("commands change stream error"), "insert_retries": inserter.retries,
              "inserted_before_step_down": inserted_before, "inserted_by_new_primary": inserted_by_election,
              "awaiting_ack_at_step_down": awaiting_ack,
              "from": before.name, "to": after.name}
    save("stepdown-commands", result)
    assert len(docs) == COMMANDS and len(expected) == COMMANDS, "two commands with one serial on one device"
    assert not missing, f"{len(missing)} commands never reached their tracker, e.g. {sorted(missing)[:3]}"
    assert not twice, f"{len(twice)} commands reached their tracker more than once, e.g. {list(twice.items())[:3]}"
    assert sum(received.values()) == COMMANDS, result
    assert not resent, f"{len(resent)} commands were sent more than once, e.g. {resent[:2]}"
    assert sweeps == 0, "the change stream did not resume from its token: the gateway swept `commands` again"
    acked = Counter(entry["imei"] for entry in report["command_log"] if entry["acked_at"])
    assert sum(acked.values()) == COMMANDS, acked


def acknowledged_once_after_trouble(gw: GatewayProcess, imei: str, trouble: Callable[[], None]) -> None:
    """A block goes out; `trouble` strikes MongoDB; the tracker acknowledges. The +SACK of the ACK's
    frame comes only once the command's document says `acknowledged` (a majority write: the new
    primary has it), and the command, whose ACK timeout passes meanwhile, was never resent (an
    acknowledged command is never sent again: its one attempt says so)."""
    from tests.integration.test_commands import Device, insert, status_is, statuses

    with Device(gw, imei) as dev:
        dev.hello()
        cid = insert(gw, imei, "block")
        cmd = dev.command(10)
        status_is(gw, cid, "sent", timeout=10)
        trouble()
        line = dev.ack(cmd)
        frames = dev.frames_until(f"+SACK:{line.rsplit(',', 1)[1]}$", timeout=60)
        doc = gw.db.commands.find_one({"_id": cid})
        assert doc["status"] == "acknowledged" and doc["ack"] == line, doc
        assert not [f for f in frames if f.startswith("AT+GT")], frames
    doc = gw.db.commands.find_one({"_id": cid})
    assert doc["attempts"] == 1 and statuses(doc) == ["sent", "acknowledged"] and len(dev.commands) == 1


def test_step_down_as_an_ack_arrives_the_command_ends_acknowledged_once(
        rs: ReplicaSet, client: MongoClient[dict[str, Any]]) -> None:
    """The primary steps down just before a tracker's +ACK arrives: the ACK's state change waits
    for the new primary."""
    from tests.integration.test_commands import imei_of

    with gateway_on(rs, client, COMMAND_ACK_TIMEOUT_S="3") as gw:
        acknowledged_once_after_trouble(gw, imei_of(300), lambda: rs.step_down())
        check_gateway(gw)


def test_an_ack_whose_write_fails_is_retried_not_dropped(rs: ReplicaSet, client: MongoClient[dict[str, Any]]) -> None:
    """MongoDB refuses the ACK's write three times in a row (a fail point on the primary, for the
    connections the command room writes ACKs on, `gv50_gevent-commands-claim`): the write is
    retried until it gets through."""
    from tests.integration.test_commands import imei_of

    admin = rs.wait_primary(30).client(10_000)

    def refuse_three_writes() -> None:
        admin.admin.command("configureFailPoint", "failCommand", mode={"times": 3}, data={
            "failCommands": ["findAndModify"], "errorCode": 6, "appName": "gv50_gevent-commands-claim"})

    try:
        with gateway_on(rs, client, COMMAND_ACK_TIMEOUT_S="2") as gw:
            acknowledged_once_after_trouble(gw, imei_of(301), refuse_three_writes)
            assert "_handle_ack failed (try 1), retrying" in check_gateway(gw)
    finally:
        admin.admin.command("configureFailPoint", "failCommand", mode="off")
        admin.close()


def test_an_ack_judged_before_another_gateway_resends_the_command_still_counts(
        rs: ReplicaSet, client: MongoClient[dict[str, Any]]) -> None:
    """Gateway A judges a tracker's +ACK (it came on the connection the command went out on), but
    its write fails while MongoDB is in trouble (a fail point for A's connections only). Meanwhile
    the tracker reconnects to gateway B, which takes the command over and sends it again there (the
    same serial, a new `sent_via`). A's retry keeps its judgement: the command ends acknowledged by
    the ACK A got, and nothing is recorded as a forged ACK."""
    import gevent

    from gv50_gevent.commands.service import CommandService
    from gv50_gevent.commands.store import CommandStore, utcnow
    from gv50_gevent.config import Settings
    from gv50_gevent.protocol import parse
    from gv50_gevent.storage.database import durable
    from gv50_gevent.storage.devices import Devices
    from tests.integration.test_command_room import FakeLink, NoLinks

    app = "gv50-judged-once"
    db_name = f"gv50_failover_{uuid.uuid4().hex[:8]}"
    a_client: MongoClient[dict[str, Any]] = MongoClient(rs.uri, appname=app, tz_aware=True)
    admin = rs.wait_primary(30).client(10_000)
    imei = "865083030000301"
    try:
        db_a = a_client.get_database(db_name, write_concern=durable())
        settings = Settings(_env_file=None, GATEWAY_ID="gw-a")  # type: ignore[call-arg]
        service = CommandService(settings, db_a, NoLinks(), Devices(db_a, "gw-a"))  # type: ignore[arg-type]
        link = FakeLink("a1", imei=imei, connected_at=utcnow() - timedelta(minutes=1))
        cid = db_a.commands.insert_one({"imei": imei, "type": "block"}).inserted_id
        doc = service.store.normalise(db_a.commands.find_one({"_id": cid}))
        assert doc is not None
        sent = service.store.claim(doc, "0A0B", link.id, via={"transport": "tcp", "address": link.remote_addr})
        assert sent is not None

        admin.admin.command("configureFailPoint", "failCommand", mode="alwaysOn", data={
            "failCommands": ["findAndModify"], "errorCode": 6, "appName": app})
        line = f"+ACK:GTOUT,090302,{imei},,0A0B,20240101000000,0005"
        settled = service.ack(link, parse(line), link.remote_addr)  # type: ignore[arg-type]
        with gevent.Timeout(30, AssertionError("A's write never failed")):
            while service.stats["write_retries"] == 0:
                gevent.sleep(0.02)
        # Gateway B: the tracker's next connection is there; it takes the command over.
        store_b = CommandStore(client.get_database(db_name, write_concern=durable()), "gw-b", 3600, 3)
        current = store_b.get(cid)
        assert current is not None and current["status"] == "sent"
        taken = store_b.claim(current, "0A0B", "b1", via={"transport": "tcp", "address": "10.0.0.2:4000"},
                              takeover_from="gw-a")
        assert taken is not None and taken["attempts"] == 2
        admin.admin.command("configureFailPoint", "failCommand", mode="off")

        assert settled.done.wait(30), "A's ACK was never written"
        done = client[db_name].commands.find_one({"_id": cid})
        assert done["status"] == "acknowledged" and done["ack"] == line, done
        assert service.stats["acks_matched"] == 1 and service.stats["acks_rejected"] == 0, service.stats
        assert client[db_name].events.count_documents({"type": "ack_rejected"}) == 0
        service._stopping.set()
        service._writes.kill()
    finally:
        admin.admin.command("configureFailPoint", "failCommand", mode="off")
        admin.close()
        a_client.close()
        client.drop_database(db_name)


def test_a_settings_dump_is_written_before_its_sack(rs: ReplicaSet, client: MongoClient[dict[str, Any]]) -> None:
    """MongoDB refuses the config shadow's write of a settings dump three times (a fail point for
    the gateway's main connections): the dump's +SACK comes only once `devices.config` holds it."""
    from tests.integration.test_commands import VERSION, Device, imei_of

    admin = rs.wait_primary(30).client(10_000)
    imei = imei_of(302)
    try:
        with gateway_on(rs, client) as gw, Device(gw, imei) as dev:
            dev.hello()
            admin.admin.command("configureFailPoint", "failCommand", mode={"times": 3}, data={
                "failCommands": ["findAndModify"], "errorCode": 6, "appName": "gv50_gevent"})
            dev.tracker.send_line(f"+RESP:GTALS,{VERSION},{imei},,FRI,0,1,,1,0000,0000,,30,1000,1000,,0,600,,,,,"
                                  "20240101000010,00A1")
            dev.frames_until("+SACK:00A1$", timeout=30)
            doc = gw.db.devices.find_one({"_id": imei}, {"config.fri": 1}) or {}
            assert (doc.get("config") or {}).get("fri", {}).get("source") == "report", doc
            log = check_gateway(gw)
            assert "could not store its reported settings yet" in log, "the fail point did not strike the dump"
    finally:
        admin.admin.command("configureFailPoint", "failCommand", mode="off")
        admin.close()


def test_one_secondary_down_ingest_and_sacks_go_on(rs: ReplicaSet, gateway: GatewayProcess) -> None:
    gw, load = gateway, SECONDARY_DOWN
    sim = Simulator(gw.port, *load.args())
    try:
        ingest_started(gw, int(load.rate * 2))
        time.sleep(2)
        down = rs.secondaries()[0]
        down_at = time.time()
        down.kill()
        time.sleep(SECONDARY_DOWN_S)
        up_at = time.time()
        down.start()
        report = sim.finish(timeout=load.duration + load.drain + 120)
    finally:
        sim.kill()

    check_gateway(gw)
    counted = positions_figures(gw, report)
    timeline = report["sack_timeline"]
    per_second = dict(timeline["per_second"])
    first, last = int(down_at - timeline["started_at"]) + 1, int(up_at - timeline["started_at"]) - 1
    outage = {second: per_second.get(second, 0) for second in range(first, last)}
    quiet = [second for second, n in outage.items() if n == 0]
    result = {**counted, "down": down.name, "down_s": round(up_at - down_at, 1),
              "sacks_per_s_during": round(sum(outage.values()) / max(1, len(outage))),
              "quiet_seconds": len(quiet), "pause_s": timeline["gap_max_s"],
              "sack_latency_ms": report["sack_latency_ms"]}
    save("secondary-down", result)
    assert len(outage) >= SECONDARY_DOWN_S - 3, outage
    assert not quiet, f"no SACK in {len(quiet)} of the {len(outage)} seconds the secondary was down: {outage}"
    assert_stored_once(gw, report)
