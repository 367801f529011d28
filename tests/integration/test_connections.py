"""Connection handling: bad input, takeover, idle timeout, refusal, shutdown."""

from __future__ import annotations

import socket
import time

from tests.support import Tracker, wait_for

FRI = ("+RESP:GTFRI,090302,{imei},,13337,10,1,1,18.6,272,30.8,117.201342,31.855243,20170712074622,"
       "0460,0001,5504,29CF,00,347.8,00021:54:10,,,,220101,23,0,15,20170712154623,{count}")
HBD = "+ACK:GTHBD,090302,{imei},,20170718163021,{count}"
# The vendor's reference HEX heartbeat (spec 1.7, p. 172): framed by its Length byte (0x20 = 32).
HEX_HBD = bytes.fromhex("2B484244EF200901030302565022000A0027070 7DD011D14021300 39D25B0D0A".replace(" ", ""))


def fri(imei: str, count: str = "0001") -> str:
    return FRI.format(imei=imei, count=count)


def test_garbage_oversize_and_hex_are_archived_and_others_keep_being_served(start_gateway) -> None:
    gw = start_gateway(MAX_FRAME_BYTES="512", SACK_MODE="all")
    good = gw.connect()
    good.send_line(fri("860000000000001", "0001"))
    good.read_until(b"+SACK:0001$")

    with gw.connect() as garbage:
        garbage.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nhello$")
        wait_for(lambda: gw.db.messages.find_one({"raw": {"$regex": "^GET /"}}), what="garbage archived")
        assert not garbage.is_closed(0.2)  # a bad frame is recorded, not punished with a disconnect

    with gw.connect() as hexdev:
        hexdev.send_line(fri("860000000000002", "0002"))
        hexdev.read_until(b"+SACK:0002$")
        hexdev.send(HEX_HBD)  # spec 1.7's reference heartbeat: another IMEI than this connection's
        doc = wait_for(lambda: gw.db.messages.find_one({"raw": HEX_HBD.hex().upper()}), what="HEX archived")
        assert doc["status"] == "rejected" and "bound to 860000000000002" in doc["error"]
        hexdev.send(HEX_HBD[:9] + b"\x00" * (len(HEX_HBD) - 9))  # framed by its Length, but no heartbeat
        wait_for(lambda: gw.db.messages.find_one({"status": "invalid", "error": {"$regex": "^HEX frame"}}),
                 what="undecodable HEX archived")
        hexdev.send_line(fri("860000000000002", "0003"))  # the session carries on after HEX
        hexdev.read_until(b"+SACK:0003$")

    with gw.connect() as flood:
        flood.send(b"+RESP:GTFRI," + b"9" * 2000)
        assert flood.is_closed(5)
    doc = wait_for(lambda: gw.db.messages.find_one({"error": {"$regex": "oversize"}}), what="oversize archived")
    assert doc["status"] == "invalid" and len(doc["raw"]) == 512

    good.send_line(fri("860000000000001", "0004"))
    good.read_until(b"+SACK:0004$")
    assert gw.db.positions.count_documents({"imei": "860000000000001"}) == 2
    invalid = gw.db.messages.find_one({"raw": "GET / HTTP/1.1\r\nHost: x\r\n\r\nhello"})
    assert invalid["status"] == "invalid" and invalid["error"] and invalid["imei"] is None
    good.close()


def test_invalid_line_is_archived_with_reason_and_session_continues(start_gateway) -> None:
    gw = start_gateway(SACK_MODE="all")
    imei = "860000000000010"
    with gw.connect() as device:
        device.send_line(fri(imei, "0001"))
        device.read_until(b"+SACK:0001$")
        bad = fri(imei, "0002").replace("20170712074622", "2017071207462X")
        device.send_line(bad)
        device.read_until(b"+SACK:0002$")  # stored raw, so acknowledged: a resend would not fix it
        doc = gw.db.messages.find_one({"raw": bad})
        assert doc["status"] == "invalid" and "fix_time" in doc["error"]
        device.send_line(fri(imei, "0003"))
        device.read_until(b"+SACK:0003$")
    assert gw.db.positions.count_documents({"imei": imei}) == 2


def test_second_connection_with_same_imei_replaces_first(start_gateway) -> None:
    gw = start_gateway()
    imei = "860000000000020"
    first = gw.connect()
    first.send_line(HBD.format(imei=imei, count="0001"))
    first.read_until(b"+SACK:GTHBD,090302,0001$")
    second = gw.connect()
    second.send_line(HBD.format(imei=imei, count="0002"))
    second.read_until(b"+SACK:GTHBD,090302,0002$")
    assert first.is_closed(5)
    second.send_line(HBD.format(imei=imei, count="0003"))
    second.read_until(b"+SACK:GTHBD,090302,0003$")
    dev = wait_for(lambda: gw.db.devices.find_one({"_id": imei, "online": True}), what="online")
    assert dev["remote_addr"] == "127.0.0.1:%d" % second.sock.getsockname()[1]
    first.close()
    second.close()


def test_idle_connection_is_closed(start_gateway) -> None:
    gw = start_gateway(IDLE_TIMEOUT_S="1")
    imei = "860000000000030"
    with gw.connect() as device:
        device.send_line(HBD.format(imei=imei, count="0001"))
        device.read_until(b"+SACK:GTHBD")
        assert device.is_closed(4)
    dev = wait_for(lambda: gw.db.devices.find_one({"_id": imei, "online": False}), what="offline after idle")
    assert dev["disconnected_at"] >= dev["connected_at"]
    with gw.connect() as silent:  # never sends a byte
        assert silent.is_closed(4)


def test_auto_register_false_refuses_unknown_and_disabled(start_gateway, mongo, db_name) -> None:
    db = mongo[db_name]
    db.vehicles.insert_many([{"_id": "860000000000041", "enabled": True, "plate": "AB-123"},
                             {"_id": "860000000000042", "enabled": False}])
    gw = start_gateway(AUTO_REGISTER="false")
    for imei in ("860000000000040", "860000000000042"):
        with gw.connect() as device:
            device.send_line(HBD.format(imei=imei, count="0001"))
            assert device.is_closed(5)
            assert b"SACK" not in device.received
        doc = wait_for(lambda: db.messages.find_one({"imei": imei}), what="rejected frame archived")
        assert doc["status"] == "rejected" and doc["error"]
    assert db.vehicles.find_one({"_id": "860000000000040"}) is None  # not auto-registered
    with gw.connect() as device:
        device.send_line(HBD.format(imei="860000000000041", count="0001"))
        device.read_until(b"+SACK:GTHBD,090302,0001$")
    assert db.vehicles.find_one({"_id": "860000000000041"}) == {"_id": "860000000000041", "enabled": True,
                                                                "plate": "AB-123"}


def test_connections_over_max_are_refused(start_gateway) -> None:
    gw = start_gateway(MAX_CONNECTIONS="3")
    held = [gw.connect() for _ in range(3)]
    for i, device in enumerate(held):
        device.send_line(HBD.format(imei=f"86000000000005{i}", count="0001"))
        device.read_until(b"+SACK:GTHBD")
    extra = gw.connect()
    assert extra.is_closed(3)
    held[0].close()
    wait_for(lambda: gw.db.devices.find_one({"_id": "860000000000050", "online": False}), what="slot freed")

    def served() -> Tracker | None:
        # The slot frees when the old session's greenlet has ended, a moment after it went offline.
        again = gw.connect()
        try:
            again.send_line(HBD.format(imei="860000000000059", count="0001"))
            again.read_until(b"+SACK:GTHBD", timeout=1)
            return again
        except (AssertionError, OSError):
            again.close()
            return None

    again = wait_for(served, timeout=5, what="a freed slot")
    for device in [*held[1:], extra, again]:
        device.close()


def test_sigterm_marks_devices_offline_and_exits_zero(start_gateway) -> None:
    gw = start_gateway(SACK_MODE="all")
    devices = []
    for i in range(5):
        device = gw.connect()
        device.send_line(fri(f"86000000000006{i}", "0001"))
        device.read_until(b"+SACK:0001$")
        devices.append(device)
    wait_for(lambda: gw.db.devices.count_documents({"online": True}) == 5, what="5 online")
    assert gw.terminate() == 0
    assert gw.db.devices.count_documents({"online": True}) == 0
    assert gw.db.devices.count_documents({"online": False, "disconnected_at": {"$exists": True}}) == 5
    assert "stopped" in gw.log()
    for device in devices:
        assert device.is_closed(2)
        device.close()
    # Nothing listens any more.
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", gw.port)) != 0


def test_slow_drip_frame_is_cut_off(start_gateway) -> None:
    gw = start_gateway(FRAME_TIMEOUT_S="1", IDLE_TIMEOUT_S="30")
    imei = "860000000000070"
    with gw.connect() as device:
        device.send_line(HBD.format(imei=imei, count="0001"))
        device.read_until(b"+SACK:GTHBD")
        line = fri(imei, "0002").encode()
        closed = False
        for i in range(12):  # one byte every 0.3 s: the idle timeout alone would never fire
            try:
                device.send(line[i:i + 1])
            except OSError:
                closed = True
                break
            time.sleep(0.3)
        assert closed or device.is_closed(2)
    doc = wait_for(lambda: gw.db.messages.find_one({"imei": imei, "status": "invalid"}), what="cut-off frame")
    assert "not completed" in doc["error"] and line.decode().startswith(doc["raw"])


def test_same_imei_from_a_second_address_is_a_warning_event(start_gateway) -> None:
    gw = start_gateway()
    imei = "860000000000080"
    first = gw.connect(source="127.0.0.1")
    first.send_line(HBD.format(imei=imei, count="0001"))
    first.read_until(b"+SACK:GTHBD")
    second = gw.connect(source="127.0.0.2")
    second.send_line(HBD.format(imei=imei, count="0002"))
    second.read_until(b"+SACK:GTHBD")
    event = wait_for(lambda: gw.db.events.find_one({"imei": imei, "type": "imei_conflict"}), what="conflict event")
    assert event["level"] == "warning" and event["remote_addr"].startswith("127.0.0.2:")
    assert event["previous_addr"].startswith("127.0.0.1:")
    assert "imei_conflict" not in gw.log() and "while live at" in gw.log()
    # A plain reconnect from the same address is not a conflict.
    third = gw.connect(source="127.0.0.2")
    third.send_line(HBD.format(imei=imei, count="0003"))
    third.read_until(b"+SACK:GTHBD")
    # The reply came after the session was taken as online, where a conflict is noted. A graceful
    # stop writes out everything the gateway had queued: whatever it noted is stored by then.
    assert gw.terminate() == 0
    assert gw.db.events.count_documents({"imei": imei, "type": "imei_conflict"}) == 1
    for device in (first, second, third):
        device.close()
