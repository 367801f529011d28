"""A flood of datagrams with random IMEIs from one source address, against a real gateway with
AUTO_REGISTER=true, while real UDP trackers keep reporting: the flood registers at most
UDP_NEW_IMEI_PER_MIN new trackers, the rest is archived as refused, and the real trackers are
stored and SACKed throughout. 1,000 datagrams by default, 10,000 with --long. Every datagram the
gateway's socket received is archived: what the kernel dropped for a full receive buffer (its
own count, /proc/net/udp) never reached the gateway, and a real tracker resends an unanswered
report as a GV50 does."""

from __future__ import annotations

import os
import random
import socket
import time

from gv50_gevent.gateway.trackers import NewImeiLimit
from tests.integration.test_ingest import FRI, HBD, IMEI
from tests.integration.test_transports import UdpTracker
from tests.support import FakeClock, wait_for

LONG = os.environ.get("GV50_LONG_TESTS") == "1"
FLOOD = 10_000 if LONG else 1_000
CHUNK = 200  # datagrams sent before the test waits for the gateway to have archived them
PER_MIN = 10
FLOOD_HOST = "127.0.1.2"  # another /24 than the real trackers' 127.0.0.1
REAL = ["865083030007001", "865083030007002", "865083030007003"]


def flood_frame(rng: random.Random, i: int) -> tuple[str, bytes]:
    imei = f"86{rng.randrange(10 ** 13):013d}"
    count = f"{i % 0xFFFF:04X}"
    kind = i % 10
    if kind == 0:  # a type nobody knows: never registers anything
        line = f"+RESP:GTZZZ,090302,{imei},,1,2,3,{count}"
    elif kind < 4:
        line = HBD.replace(IMEI, imei)[:-4] + count
    else:
        line = FRI.replace(IMEI, imei)[:-4] + count
    return imei, (line + "$").encode()


def from_flood(db) -> int:
    return db.messages.count_documents({"direction": "in", "remote_addr": {"$regex": r"^127\.0\.1\.2:"}})


def kernel_drops(port: int) -> int:
    """Datagrams the kernel dropped on the UDP sockets bound to `port` (their receive buffer was full)."""
    drops = 0
    with open("/proc/net/udp") as table:
        next(table)
        for row in table:
            fields = row.split()
            if int(fields[1].rpartition(":")[2], 16) == port:
                drops += int(fields[-1])
    return drops


def report_until_sacked(tracker: UdpTracker, line: str, count: str) -> None:
    """A report and its SACK; sent again when none comes (the datagram may have been dropped)."""
    for _ in range(5):
        tracker.send(line)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            data = tracker.receive(max(0.01, deadline - time.monotonic()))
            if data is not None and f"+SACK:{count}$".encode() in data:
                return
    raise AssertionError(f"no +SACK:{count}$ after 5 tries")


def test_random_imeis_from_one_address_register_at_most_the_limit(start_gateway) -> None:
    gw = start_gateway(SACK_MODE="all", AUTO_REGISTER="true", UDP_NEW_IMEI_PER_MIN=str(PER_MIN))
    db = gw.db
    real = {imei: UdpTracker(gw.port) for imei in REAL}
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flood.bind((FLOOD_HOST, 0))
    rng = random.Random(16)
    unknown_type: set[str] = set()
    reports = 0
    started = time.monotonic()
    try:
        for start in range(0, FLOOD, CHUNK):
            for i in range(start, min(FLOOD, start + CHUNK)):
                imei, data = flood_frame(rng, i)
                if i % 10 == 0:
                    unknown_type.add(imei)
                flood.sendto(data, ("127.0.0.1", gw.port))
            # The real trackers report in the middle of the flood and get their SACKs.
            reports += 1
            count = f"{reports:04X}"
            for imei, tracker in real.items():
                report_until_sacked(tracker, FRI.replace(IMEI, imei)[:-4] + count, count)
            sent = min(FLOOD, start + CHUNK)
            wait_for(lambda: from_flood(db) >= sent - kernel_drops(gw.port), timeout=30,
                     what=f"{sent} flood datagrams archived")
        elapsed_min = (time.monotonic() - started) / 60

        for imei in REAL:
            assert db.positions.count_documents({"imei": imei}) == reports, imei
        fake = {"_id": {"$nin": REAL}}
        registered = db.vehicles.count_documents(fake)
        devices = db.devices.count_documents(fake)
        refused = db.messages.count_documents({"status": "rejected", "remote_addr": {"$regex": r"^127\.0\.1\.2:"}})
        archived = from_flood(db)
        dropped = kernel_drops(gw.port)
        print(f"\n{FLOOD} random-IMEI datagrams in {elapsed_min * 60:.1f}s: archived {archived}, "
              f"refused {refused}, vehicles created {registered}, devices created {devices}, dropped by the "
              f"kernel {dropped}; {len(REAL)} real trackers stored and SACKed {reports} reports each")
        assert dropped < FLOOD // 10, "the test sends too fast for this machine"
        assert archived == FLOOD - dropped  # every datagram the gateway received is in the archive, once
        assert 1 <= registered <= PER_MIN + PER_MIN * elapsed_min + 1
        assert devices == registered
        assert refused == archived - registered
        assert db.vehicles.count_documents({"_id": {"$in": sorted(unknown_type)}}) == 0
        assert db.vehicles.count_documents({"_id": {"$in": REAL}}) == len(REAL)
        why = db.messages.find_one({"status": "rejected", "error": {"$regex": "UDP_NEW_IMEI_PER_MIN"}})
        assert why is not None and why["error"].startswith(f"127.0.1.0/24 registered {PER_MIN} new IMEIs")
        assert db.messages.find_one({"status": "rejected", "error": {"$regex": "only a message of a known type"}})
        log = gw.log()
        assert "Traceback" not in log
        assert log.count("sends new IMEIs faster than UDP_NEW_IMEI_PER_MIN") <= 1 + elapsed_min
    finally:
        for tracker in real.values():
            tracker.close()
        flood.close()



def test_the_limit_refills_and_remembers_a_bounded_number_of_addresses() -> None:
    clock = FakeClock()
    limit = NewImeiLimit(6, max_sources=100, clock=clock)
    assert [limit.take("10.0.0.1") for _ in range(7)][:6] == [None] * 6
    assert "10.0.0.0/24 registered 6 new IMEIs" in (limit.take("10.0.0.1") or "")
    clock.now += 10  # a minute's sixth: one more
    assert limit.take("10.0.0.1") is None and limit.take("10.0.0.1") is not None
    for i in range(200):  # many networks, each using one
        limit.take(f"10.{i // 256}.{i % 256}.1")
    assert len(limit) == 100  # bounded; the networks past it were refused
    assert "networks are registering new IMEIs at once" in (limit.take("10.9.9.9") or "")
    clock.now += 61  # everyone's bucket is full again: forgotten, room for new addresses
    assert limit.take("10.9.9.9") is None and len(limit) == 1


def test_with_no_new_imeis_over_udp_a_tracker_registers_over_tcp(start_gateway) -> None:
    gw = start_gateway(SACK_MODE="all", AUTO_REGISTER="true", UDP_NEW_IMEI_PER_MIN="0")
    db = gw.db
    imei = "865083030007009"
    udp = UdpTracker(gw.port)
    try:
        udp.send(FRI.replace(IMEI, imei)[:-4] + "0001")
        refused = wait_for(lambda: db.messages.find_one({"imei": imei, "status": "rejected"}), what="refused")
        assert "UDP_NEW_IMEI_PER_MIN=0" in refused["error"]
        assert db.vehicles.find_one({"_id": imei}) is None and db.devices.find_one({"_id": imei}) is None
        with gw.connect() as tcp:  # TCP registers as before
            tcp.send_line(FRI.replace(IMEI, imei)[:-4] + "0002")
            tcp.read_until(b"+SACK:0002$")
        assert db.vehicles.find_one({"_id": imei})["auto_registered"] is True
        udp.send(FRI.replace(IMEI, imei)[:-4] + "0003")  # known now: served over UDP too
        udp.receive_until(b"+SACK:0003$")
        assert db.positions.count_documents({"imei": imei}) == 2
    finally:
        udp.close()


def test_all_sources_together_register_at_most_the_total() -> None:
    """Forged datagrams from ever new addresses: each network is under its own limit, all of them
    together meet the total. Addresses of one /24 (IPv4) or /64 (IPv6) share one bucket."""
    clock = FakeClock()
    limit = NewImeiLimit(2, clock=clock, total_per_minute=5)
    got = [limit.take(f"10.{i}.0.1") for i in range(8)]
    assert got[:5] == [None] * 5
    assert all("UDP_NEW_IMEI_TOTAL_PER_MIN=5" in (why or "") for why in got[5:])
    clock.now += 12  # a fifth of a minute: one more, from any network
    assert limit.take("10.99.0.1") is None and limit.take("10.98.0.1") is not None
    clock.now += 60
    rotating = [limit.take(f"192.0.2.{i}") for i in range(1, 5)]  # one /24
    assert rotating[:2] == [None, None] and "192.0.2.0/24 registered 2" in (rotating[2] or "")
    assert limit.take("2001:db8::1") is None and limit.take("2001:db8::ffff:1") is None
    assert "2001:db8::/64 registered 2" in (limit.take("2001:db8::2") or "")
    assert "192.0.2.0/24" in (limit.take("::ffff:192.0.2.77") or "")  # an IPv4 address in IPv6 form


def test_rotating_source_addresses_meet_the_total_limit(start_gateway) -> None:
    gw = start_gateway(SACK_MODE="all", AUTO_REGISTER="true", UDP_NEW_IMEI_PER_MIN="3", UDP_NEW_IMEI_TOTAL_PER_MIN="4")
    db = gw.db
    senders = []
    try:
        for n in range(1, 5):  # four /24 networks, three new IMEIs each
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((f"127.0.{n}.2", 0))
            senders.append(sock)
            for i in range(3):
                sock.sendto((FRI.replace(IMEI, f"8650830300{n}{i:04d}")[:-4] + f"{n}{i:03d}$").encode(),
                            ("127.0.0.1", gw.port))
                time.sleep(0.01)  # paced: twelve datagrams, none lost to a full buffer
        sent = {"direction": "in", "remote_addr": {"$regex": r"^127\.0\.[1-4]\.2:"}}
        wait_for(lambda: db.messages.count_documents(sent) == 12, what="all 12 archived")
        assert db.vehicles.count_documents({}) == 4 and db.devices.count_documents({}) == 4
        refused = db.messages.find({"direction": "in", "status": "rejected"})
        assert sorted(r["error"] for r in refused) == \
            ["4 new IMEIs were registered over UDP and HTTP in the last minute (UDP_NEW_IMEI_TOTAL_PER_MIN=4)"] * 8
    finally:
        for sock in senders:
            sock.close()
