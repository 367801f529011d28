"""MongoDB goes away under load and comes back: nothing SACKed is lost, nothing is stored twice.

A gateway with SACK_MODE=all ingests 2,000 GTFRI/s from a simulated fleet (`--sack`: every report
is kept until its +SACK and replayed as +BUFF after a reconnect). The test's own mongod is stopped
for 30 s (120 s with `pytest --long`), then started again on the same port and data directory.
Midway through the outage every simulated tracker drops its connection and reconnects, so its
unSACKed reports come back as +BUFF while MongoDB is still down.

What must hold: the gateway keeps running without a traceback; it SACKs nothing while MongoDB is
down; it stops reading (bytes pile up in the kernel's receive queues) instead of growing its
memory; afterwards every SACKed report is in `positions` exactly once, and commands inserted
during the outage are delivered.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pytest
from pymongo import MongoClient

from gv50_gevent.storage.mongod import EmbeddedMongod
from tests.support import GatewayProcess, free_port, wait_for

from .helpers import Probe, Simulator, check_exactly_once, figures, rss_mb, tracebacks, unread_bytes

LONG = os.environ.get("GV50_LONG_TESTS") == "1"
IMEI_BASE = 861000000000000
PROBE_IMEI = "861999000000001"
RSS_LIMIT_MB = 400


@dataclass(frozen=True)
class Plan:
    devices: int
    rate: float      # GTFRI/s, the whole fleet
    before_s: float  # ingest before the outage
    outage_s: float
    after_s: float   # ingest after MongoDB is back
    drain_s: float   # the simulator's wait for the last SACKs

    @property
    def per_device(self) -> float:
        return self.rate / self.devices

    @property
    def disconnect_after(self) -> int:
        # Messages on a tracker's first connection (hello included) until it drops, mid-outage.
        return int(self.per_device * (self.before_s + self.outage_s / 2)) + 1


# Trackers buffer at most 600 reports (BUFFER_LIMIT): the outage must fit in each one's buffer.
SHORT = Plan(devices=200, rate=2000, before_s=5, outage_s=30, after_s=15, drain_s=90)
LONGER = Plan(devices=1000, rate=2000, before_s=10, outage_s=120, after_s=40, drain_s=120)
PLAN = LONGER if LONG else SHORT


class RestartableMongod:
    """The test's own single-node replica set, stopped and started on one port and data directory."""

    def __init__(self) -> None:
        self.data_dir = tempfile.mkdtemp(prefix="gv50-outage-mongod-")
        self.port = free_port()
        self.mongod: EmbeddedMongod | None = None
        self.uri = ""

    def start(self) -> None:
        self.mongod = EmbeddedMongod(self.data_dir, self.port, cache_gb=0.25)
        self.uri = self.mongod.start()

    def stop(self) -> None:
        if self.mongod is not None:
            self.mongod.stop()
            self.mongod = None


@pytest.fixture
def own_mongod() -> Iterator[RestartableMongod]:
    mongod = RestartableMongod()
    mongod.start()
    try:
        yield mongod
    finally:
        mongod.stop()
        shutil.rmtree(mongod.data_dir, ignore_errors=True)


@pytest.fixture
def gateway(own_mongod: RestartableMongod) -> Iterator[GatewayProcess]:
    client: MongoClient[dict[str, Any]] = MongoClient(own_mongod.uri, tz_aware=True, serverSelectionTimeoutMS=30_000)
    settings = {"MONGODB_URI": own_mongod.uri, "MONGODB_DB": f"gv50_outage_{uuid.uuid4().hex[:8]}",
                "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(free_port()), "GATEWAY_ID": "gw-outage",
                "SACK_MODE": "all", "LOG_LEVEL": "INFO", "SHUTDOWN_GRACE_S": "3"}
    gw = GatewayProcess(settings, client[settings["MONGODB_DB"]])
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()
        client.close()


class PatientInsert(threading.Thread):
    """Insert a command with a client that waits (server selection) until MongoDB is back."""

    def __init__(self, uri: str, db_name: str, doc: dict[str, Any], patience_s: float) -> None:
        super().__init__(daemon=True)
        self.client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=int(patience_s * 1000))
        self.db_name = db_name
        self.doc = doc
        self.inserted_id: Any = None
        self.done_at: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.inserted_id = self.client[self.db_name].commands.insert_one(self.doc).inserted_id
            self.done_at = time.monotonic()
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.client.close()


def test_mongodb_outage_under_ingest(own_mongod: RestartableMongod, gateway: GatewayProcess) -> None:
    plan, gw, db = PLAN, gateway, gateway.db
    assert gw.proc is not None
    pid = gw.proc.pid
    fleet = [f"{IMEI_BASE + i:015d}" for i in range(plan.devices)]

    probe = Probe(gw.port, PROBE_IMEI)
    probe.hello()
    _, first = probe.report()
    assert probe.wait_sack(first, 10), "no SACK while MongoDB is up"

    sim = Simulator(gw.port, "--devices", str(plan.devices), "--rate", str(plan.rate),
                    "--duration", str(plan.before_s + plan.outage_s + plan.after_s), "--drain", str(plan.drain_s),
                    "--imei-base", str(IMEI_BASE), "--sack", "--list-sacked", "--reconnect-delay", "1",
                    "--disconnect-after", str(plan.disconnect_after))
    try:
        wait_for(lambda: db.positions.estimated_document_count() > plan.rate / 2, timeout=30, interval=0.2,
                 what="ingest to start")
        time.sleep(plan.before_s - 1)
        stored_before = db.positions.estimated_document_count()
        rss_before = rss_mb(pid)

        # --- MongoDB goes away ---
        down_at = time.monotonic()  # mongod refuses new work from its SIGTERM on
        own_mongod.stop()
        stop_s = time.monotonic() - down_at
        _, held = probe.report()
        # Commands are inserted during the outage by a client that waits for the server: the insert
        # itself happens once mongod is back, while the gateway's watcher may still be in backoff.
        during = PatientInsert(own_mongod.uri, db.name, {"imei": fleet[0], "type": "block", "params": {}},
                               patience_s=plan.outage_s + 120)
        during.start()
        assert not probe.wait_sack(held, min(10.0, plan.outage_s / 3)), "SACKed a report while MongoDB was down"
        rss_peak = rss_before
        while time.monotonic() - down_at < plan.outage_s - 1:
            assert gw.proc.poll() is None, f"gateway exited during the outage:\n{gw.log()[-3000:]}"
            rss_peak = max(rss_peak, rss_mb(pid))
            time.sleep(0.5)
        assert held.upper() not in probe.sacks, "SACKed a report while MongoDB was down"
        unread = unread_bytes(gw.port)
        rss_end = rss_mb(pid)
        rss_peak = max(rss_peak, rss_end)
        while time.monotonic() - down_at < plan.outage_s:
            time.sleep(0.05)

        # --- MongoDB is back ---
        own_mongod.start()
        up_at, up_wall = time.monotonic(), datetime.now(timezone.utc)
        outage = up_at - down_at
        after = db.commands.insert_one({"imei": fleet[1], "type": "unblock", "params": {}}).inserted_id
        assert probe.wait_sack(held, 60), "the report held during the outage was never SACKed"
        during.join(60)
        assert during.error is None and during.inserted_id is not None, during.error

        report = sim.finish(timeout=plan.after_s + plan.drain_s + plan.outage_s + 60)
    finally:
        sim.kill()
        probe.close()

    # The gateway survived, quietly.
    log = gw.log()
    assert gw.proc.poll() is None, f"gateway exited:\n{log[-3000:]}"
    assert tracebacks(log) == [], "\n\n".join(tracebacks(log)[:3])
    assert log.count("MongoDB cannot confirm writes now") >= 1, "the writer never saw the outage: was MongoDB really down?"
    # Said once per outage, plainly; not once per failed flush.
    assert log.count("MongoDB cannot confirm writes now") <= 2, log.count("MongoDB cannot confirm writes now")
    assert "MongoDB confirms writes again" in log
    assert "refused a document" not in log

    # It held its readers and its memory while MongoDB was down.
    assert rss_peak < RSS_LIMIT_MB, f"RSS {rss_before:.0f} MB before, {rss_peak:.0f} MB peak"
    assert rss_peak - rss_before < 200, f"RSS {rss_before:.0f} MB before, {rss_peak:.0f} MB peak"
    assert unread > 0, "the gateway kept reading with MongoDB down: where did the data go?"
    assert report["sack_latency_ms"]["max"] > 0.8 * plan.outage_s * 1000, report["sack_latency_ms"]

    # The fleet: it reconnected mid-outage and replayed; nothing lost on its side, everything SACKed.
    assert report["connected"] == plan.devices, figures(report)
    assert report["disconnects"] >= plan.devices and report["connects"] > plan.devices, figures(report)
    assert report["replayed"] > 0, figures(report)
    assert report["buffer_dropped"] == 0, f"the plan overflows the trackers' buffers: {figures(report)}"
    assert report["unsacked"] == 0, figures(report)
    counted = check_exactly_once(db, report)
    assert counted["sacked"] == report["sacked"] == counted["stored"], (counted, figures(report))
    made = plan.rate * (plan.before_s + plan.outage_s + plan.after_s)
    assert counted["sacked"] >= 0.98 * made, (counted, figures(report))  # none stuck in a write that failed
    assert db.positions.count_documents({"imei": PROBE_IMEI}) == 2

    # Commands inserted during the outage (served once mongod was back) and right after it: delivered.
    delivered = []
    for command_id in (during.inserted_id, after):
        doc = wait_for(lambda: db.commands.find_one({"_id": command_id, "status": "acknowledged"}), timeout=5,
                       what=f"command {command_id} acknowledged")
        # A second attempt is right when the first went to a connection the tracker had already
        # left (it reconnected while the gateway, waiting for MongoDB, could not notice).
        assert doc["attempts"] <= 2, doc["history"]
        delivered.append((doc["sent_at"] - up_wall).total_seconds())
    acked = {entry["imei"] for entry in report["command_log"] if entry["acked_at"]}
    assert {fleet[0], fleet[1]} <= acked

    print(f"\noutage {outage:.1f}s (mongod took {stop_s:.1f}s to stop); fleet {figures(report)}; positions {counted}; before the outage "
          f"{stored_before} stored; RSS {rss_before:.0f} -> {rss_peak:.0f} MB (end {rss_end:.0f}); "
          f"unread in kernel at the end of the outage {unread / 1e6:.1f} MB; "
          f"patient insert done {during.done_at - up_at if during.done_at else float('nan'):.1f}s after restart; "
          f"commands sent {delivered[0]:.1f}s and {delivered[1]:.1f}s after restart; "
          f"{log.count('commands sweep:')} sweep(s) of commands; "
          f"{db.positions.count_documents({'imei': {'$in': fleet}, 'buffered': True})} stored from +BUFF")
