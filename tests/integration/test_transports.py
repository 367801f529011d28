"""Every way a GV50 reaches us besides the long TCP connection: UDP (report modes 4 and 6), short TCP
connections (modes 1 and 2) and HTTP GET (mode 8). Real gateway processes, a real mongod, real
sockets: what lands in MongoDB, what the tracker gets back, and where commands go."""

from __future__ import annotations

import http.client
import re
import socket
import time
from datetime import datetime, timezone

from gv50_gevent.protocol.commands import decode_command
from tests.integration.test_ingest import FRI, HBD, IMEI
from tests.support import free_port, wait_for

IGN = ("+RESP:GTIGN,090302,865083030004642,,1377,0,0.0,24,63.3,117.201525,31.833040,20170731080420,"
       "0460,0001,5504,582B,00,,0.1,20170731160423,0233")


class UdpTracker:
    """A tracker in UDP mode: datagrams from one local port, replies read from it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.gateway = ("127.0.0.1", port)

    @property
    def addr(self) -> str:
        host, port = self.sock.getsockname()
        return f"{host}:{port}"

    def send(self, *lines: str) -> None:
        self.sock.sendto("".join(line if line.endswith("$") else line + "$" for line in lines).encode(), self.gateway)

    def receive(self, timeout: float = 5.0) -> bytes | None:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recvfrom(65536)[0]
        except (socket.timeout, TimeoutError):
            return None

    def receive_until(self, needle: bytes, timeout: float = 5.0) -> list[bytes]:
        got: list[bytes] = []
        deadline = time.monotonic() + timeout
        while not any(needle in d for d in got):
            left = deadline - time.monotonic()
            data = self.receive(left) if left > 0 else None
            assert data is not None, f"no {needle!r} within {timeout}s; got {got!r}"
            got.append(data)
        return got

    def close(self) -> None:
        self.sock.close()


def test_udp_datagrams_are_stored_like_tcp_and_answered_to_their_source(start_gateway) -> None:
    gw = start_gateway(SACK_MODE="all")
    db = gw.db
    tracker = UdpTracker(gw.port)
    try:
        tracker.send(FRI, HBD)  # two frames in one datagram
        got = tracker.receive_until(b"+SACK:1854$")
        assert b"+SACK:GTHBD,090302,252F$" in b"".join(got)
        pos = wait_for(lambda: db.positions.find_one({"imei": IMEI}), what="UDP position")
        assert pos["location"] == {"type": "Point", "coordinates": [117.201342, 31.855243]}
        assert (pos["speed_kmh"], pos["count"], pos["buffered"]) == (18.6, "1854", False)
        frame = db.messages.find_one({"raw": FRI})
        assert frame["remote_addr"] == tracker.addr and frame["status"] == "ok" and frame["imei"] == IMEI
        dev = wait_for(lambda: db.devices.find_one({"_id": IMEI, "transport": "udp"}), what="udp device")
        assert dev["online"] is True and dev["remote_addr"] == tracker.addr

        tracker.send(FRI)  # a duplicate: SACKed again, stored once
        tracker.receive_until(b"+SACK:1854$")
        assert db.positions.count_documents({"imei": IMEI}) == 1
        assert db.messages.count_documents({"raw": FRI, "direction": "in"}) == 2

        tracker.sock.sendto(b"\x00garbage that is no frame$", tracker.gateway)  # archived, not answered
        wait_for(lambda: db.messages.find_one({"raw": {"$regex": "garbage"}}), what="garbage archived")
        assert tracker.receive(0.5) is None
        tracker.send(IGN)
        tracker.receive_until(b"+SACK:0233$")  # the others are still served
        assert wait_for(lambda: db.events.find_one({"imei": IMEI, "type": "ignition_on"}))["report"] == "GTIGN"
    finally:
        tracker.close()


def test_udp_never_answers_with_more_bytes_than_it_received(start_gateway) -> None:
    gw = start_gateway(SACK_MODE="all")
    tracker = UdpTracker(gw.port)
    try:
        # The shortest frame that still parses: a heartbeat without device name and version is
        # refused; a bare unknown type is kept but gets no reply at all.
        tracker.sock.sendto(b"+X$", tracker.gateway)
        wait_for(lambda: gw.db.messages.find_one({"raw": "+X"}), what="tiny datagram archived")
        assert tracker.receive(0.5) is None
        tracker.send(HBD)
        reply = tracker.receive()
        assert reply is not None and len(reply) <= len(HBD) + 1
    finally:
        tracker.close()


def test_a_silent_udp_tracker_goes_offline(start_gateway) -> None:
    gw = start_gateway(UDP_OFFLINE_AFTER_S="2")
    tracker = UdpTracker(gw.port)
    try:
        tracker.send(HBD)
        tracker.receive_until(b"+SACK:GTHBD")
        wait_for(lambda: gw.db.devices.find_one({"_id": IMEI, "online": True, "transport": "udp"}), what="online")
        dev = wait_for(lambda: gw.db.devices.find_one({"_id": IMEI, "online": False}), timeout=15, what="offline")
        assert dev["disconnected_at"] >= dev["last_seen_at"]
    finally:
        tracker.close()


def test_commands_reach_a_udp_tracker_at_its_fresh_address_and_are_acknowledged(start_gateway) -> None:
    gw = start_gateway(UDP_ADDRESS_TTL_S="2", COMMAND_ACK_TIMEOUT_S="30")
    db = gw.db
    tracker = UdpTracker(gw.port)
    try:
        tracker.send(HBD)
        tracker.receive_until(b"+SACK:GTHBD")
        first = db.commands.insert_one({"imei": IMEI, "type": "reboot"}).inserted_id
        data = tracker.receive_until(b"AT+GTRTO")[-1]
        line = decode_command(data)
        tracker.send(f"+ACK:GTRTO,090302,{IMEI},,REBOOT,{line.serial},20240101000000,0001")
        done = wait_for(lambda: db.commands.find_one({"_id": first, "status": "acknowledged"}), what="acknowledged")
        assert done["attempts"] == 1 and done["ack"].startswith("+ACK:GTRTO")

        # After UDP_ADDRESS_TTL_S without a datagram the address is stale (mobile NAT mappings
        # expire): a command waits for the next datagram instead of going into the void.
        time.sleep(2.5)
        second = db.commands.insert_one({"imei": IMEI, "type": "get_version"}).inserted_id
        assert tracker.receive(1.0) is None
        wait_for(lambda: db.commands.find_one({"_id": second, "status": "pending"}), what="pending, not sent")
        tracker.send(HBD)
        data = tracker.receive_until(b"AT+GTRTO")[-1]
        assert decode_command(data).type == "GTRTO"
        wait_for(lambda: db.commands.find_one({"_id": second, "status": "sent"}), what="sent on the next datagram")
    finally:
        tracker.close()


def test_a_udp_datagram_for_an_imei_live_on_tcp_is_a_conflict_and_gets_no_commands(start_gateway) -> None:
    gw = start_gateway()
    db = gw.db
    device = gw.connect()
    spoofer = UdpTracker(gw.port)
    try:
        device.send_line(HBD)
        device.read_until(b"+SACK:GTHBD")
        spoofer.send(HBD.replace("252F", "2530"))
        event = wait_for(lambda: db.events.find_one({"imei": IMEI, "type": "imei_conflict"}), what="conflict event")
        assert event["remote_addr"] == spoofer.addr and event["level"] == "warning"
        cid = db.commands.insert_one({"imei": IMEI, "type": "get_version"}).inserted_id
        device.read_until(b"AT+GTRTO")  # the command goes to the TCP connection
        assert spoofer.receive(1.0) in (None, b"+SACK:GTHBD,090302,2530$")
        assert not any(b"AT+GT" in (spoofer.receive(0.3) or b"") for _ in range(2))
        assert db.commands.find_one({"_id": cid})["status"] == "sent"
    finally:
        device.close()
        spoofer.close()


def test_a_tracker_that_moves_from_tcp_to_udp_takes_its_commands_along(start_gateway) -> None:
    gw = start_gateway()
    db = gw.db
    with gw.connect() as device:
        device.send_line(HBD)
        device.read_until(b"+SACK:GTHBD")
    wait_for(lambda: db.devices.find_one({"_id": IMEI, "online": False}), what="offline after TCP")
    tracker = UdpTracker(gw.port)
    try:
        tracker.send(HBD)
        tracker.receive_until(b"+SACK:GTHBD")
        cid = db.commands.insert_one({"imei": IMEI, "type": "get_version"}).inserted_id
        data = tracker.receive_until(b"AT+GTRTO")[-1]
        serial = decode_command(data).serial
        tracker.send(f"+ACK:GTRTO,090302,{IMEI},,VER,{serial},20240101000000,0002")
        wait_for(lambda: db.commands.find_one({"_id": cid, "status": "acknowledged"}), what="acknowledged over UDP")
        assert db.devices.find_one({"_id": IMEI})["transport"] == "udp"
    finally:
        tracker.close()


def test_short_tcp_connections_store_everything_and_stay_online_while_fresh(start_gateway) -> None:
    gw = start_gateway(SACK_MODE="all", UDP_OFFLINE_AFTER_S="5")
    db = gw.db
    for count, line in (("1854", FRI), ("0233", IGN)):
        with gw.connect() as device:  # report mode 1: connect, send, half-close, wait for the SACK
            device.send_line(line)
            device.sock.shutdown(socket.SHUT_WR)
            device.read_until(f"+SACK:{count}$".encode())
            assert device.is_closed(5)
        wait_for(lambda: db.devices.find_one({"_id": IMEI, "transport": "tcp_short"}), what="short transport")
        assert db.devices.find_one({"_id": IMEI})["online"] is True  # not flapping with every report
    assert db.positions.count_documents({"imei": IMEI}) == 2 and db.events.count_documents({"imei": IMEI}) == 1
    # The SACKs sent are archived on the frames they answer.
    assert sorted(d["reply"] for d in db.messages.find({"imei": IMEI, "reply": {"$exists": True}})) == [
        "+SACK:0233", "+SACK:1854"]
    wait_for(lambda: db.devices.find_one({"_id": IMEI, "online": False}), timeout=30, what="offline once silent")
    log = gw.log()
    assert "Traceback" not in log and " ERROR " not in log


def http_get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers={"User-Agent": "Queclink_GV50"})
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_http_get_reports_are_stored_and_bad_ones_archived_with_a_reason(start_gateway) -> None:
    http_port = free_port()
    gw = start_gateway(HTTP_PORT=str(http_port))
    db = gw.db
    status, body = http_get(http_port, "/report/" + FRI[1:] + "$")
    assert (status, body) == (200, "stored\n")
    pos = db.positions.find_one({"imei": IMEI})  # stored before the 200
    assert pos["count"] == "1854" and pos["location"]["coordinates"] == [117.201342, 31.855243]
    assert db.devices.find_one({"_id": IMEI})["transport"] == "http"

    status, body = http_get(http_port, "/GV50/message/" + FRI[1:].replace(",18.6,", ",x,") + "$")
    assert status == 400 and "speed" in body and body.count("\n") == 1
    bad = db.messages.find_one({"status": "invalid", "imei": IMEI})
    assert bad is not None and bad["error"] and bad["raw"].startswith("+RESP:GTFRI")

    status, body = http_get(http_port, "/favicon.ico")
    assert status == 400 and "no @Track message" in body
    assert http_get(http_port, "/report/" + FRI[1:], method="POST")[0] == 405
    assert http_get(http_port, "/report/" + FRI[1:] + "$")[0] == 200  # a resend: stored once
    assert db.positions.count_documents({"imei": IMEI}) == 1


def test_http_get_refuses_an_unknown_tracker_when_auto_register_is_off(start_gateway) -> None:
    http_port = free_port()
    gw = start_gateway(HTTP_PORT=str(http_port), AUTO_REGISTER="false")
    status, body = http_get(http_port, "/report/" + FRI[1:] + "$")
    assert status == 403 and "not registered" in body
    assert gw.db.positions.count_documents({}) == 0
    assert gw.db.messages.find_one({"status": "rejected", "imei": IMEI}) is not None


def test_devices_record_the_transport(start_gateway) -> None:
    gw = start_gateway()
    with gw.connect() as device:
        device.send_line(HBD)
        device.read_until(b"+SACK:GTHBD")
        dev = wait_for(lambda: gw.db.devices.find_one({"_id": IMEI}), what="device")
        assert dev["transport"] == "tcp" and re.fullmatch(r"127\.0\.0\.1:\d+", dev["remote_addr"])
        assert dev["connected_at"] <= datetime.now(timezone.utc)


def test_the_simulator_plays_every_connectionless_mode_in_ascii_and_hex(start_gateway) -> None:
    """Short TCP connections and UDP, ASCII and HEX, and HTTP GET (ASCII only): every report the
    simulator sends is answered and stored once."""
    import json
    import subprocess
    import sys

    from tests.support import REPO

    http_port = free_port()
    # 15 new UDP and HTTP trackers, all from 127.0.0.1, within a minute.
    gw = start_gateway(SACK_MODE="all", HTTP_PORT=str(http_port), UDP_NEW_IMEI_PER_MIN="100")
    cases = [("short", False), ("short", True), ("udp", False), ("udp", True), ("http", False)]
    sent = 0
    for n, (mode, hex_mode) in enumerate(cases):
        cmd = [sys.executable, "-m", "gv50_gevent.simulator.connectionless", "--mode", mode, "--sack",
               "--port", str(http_port if mode == "http" else gw.port), "--devices", "5", "--rate", "20",
               "--duration", "1", "--imei-base", str(865000000000000 + n * 100), *(["--hex"] if hex_mode else [])]
        done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["sent"] >= 15 and report["answered"] == report["sent"] and report["failed"] == 0, (mode, report)
        sent += report["sent"]
    assert wait_for(lambda: gw.db.positions.count_documents({}) == sent, what="every report stored once")
    hex_in = gw.db.messages.count_documents({"direction": "in", "raw": {"$regex": "^2B525350"}})  # "+RSP"
    assert hex_in >= 30
