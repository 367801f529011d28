"""Over a real socket and a real mongod: HEX frames whose masks leave out the versions or the send
time are stored and SACKed; a count wrap without a send time is never a duplicate, a resend still
is; every message is SACKed once archived; every HEX frame's CRC is counted."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from gv50_gevent.protocol.hex import encode_hex
from gv50_gevent.storage.documents import EventDoc, PositionDoc
from tests.data import family_lines
from tests.protocol.test_hex_masks import MASKS, RSP_VALUES, frame
from tests.support import Tracker, wait_for

IMEI = "865083030004642"


def sacked(device: Tracker, data: bytes, count: str) -> None:
    """Send `data` and wait for its SACK (the gateway sends it once the frame is stored)."""
    device.received = b""
    device.send(data)
    device.read_until(f"+SACK:{count}$".encode())


def test_hex_frames_without_versions_are_stored_and_sacked_as_a_connections_first_frames(start_gateway) -> None:
    gw = start_gateway(SACK_MODE="all")
    db = gw.db
    counts = [f"{n:04X}" for n in range(1, 6)]
    for name, imei in (("RSP 00FE10BF", "865083030004651"), ("EVT 00F000BF", "865083030004652"),
                       ("RSP 00000020", "865083030004653")):  # the last: the count only, not even the Length
        with gw.connect() as device:
            device.send(b"".join(frame(name, imei=imei, count=c) for c in counts))  # the first bytes it sends
            device.read_until(b"+SACK:0005$")
            assert device.received == b"".join(f"+SACK:{c}$".encode() for c in counts), name
        assert db.positions.count_documents({"imei": imei}) == 5, name  # SACKed: stored before
        assert db.messages.count_documents({"imei": imei, "direction": "in", "status": "ok"}) == 5
    assert db.events.count_documents({"imei": "865083030004652", "type": "ignition_on"}) == 5
    device_doc = wait_for(lambda: db.devices.find_one({"_id": "865083030004651", "config.protocol_format": "hex"}),
                          what="the device noted")
    assert "protocol_version" not in device_doc  # from nowhere: the frames did not say
    for doc in db.positions.find({"imei": "865083030004651"}):
        PositionDoc.model_validate(doc)


def test_a_count_wrap_without_a_send_time_is_never_a_duplicate_and_a_resend_still_is(start_gateway) -> None:
    gw = start_gateway(SACK_MODE="all")
    db = gw.db
    week = {"fix_time": MASKS["RSP 00FE17AF"][3]["fix_time"].replace(day=19)}
    ign_week = {"fix_time": MASKS["EVT 00FE17AF"][3]["fix_time"].replace(day=28)}
    fri, fri_wrapped = frame("RSP 00FE17AF", count="0001"), frame("RSP 00FE17AF", count="0001", **week)
    ign, ign_wrapped = frame("EVT 00FE17AF", count="0002"), frame("EVT 00FE17AF", count="0002", **ign_week)
    # The public +BUFF GTFRI with an empty send-time field, and the same after a count wrap.
    line = family_lines()[170].removesuffix("$")
    ascii_imei = line.split(",")[2]
    wrapped_line = line.replace(",20140818105815,", ",20140825105815,")
    with gw.connect() as device:
        for data, count in ((fri, "0001"), (fri, "0001"), (fri_wrapped, "0001"),
                            (ign, "0002"), (ign_wrapped, "0002"), (ign, "0002")):
            sacked(device, data, count)
    with gw.connect() as device:
        for text in (line, line, wrapped_line):
            sacked(device, text.encode() + b"$", "000C")

    positions = list(db.positions.find({"imei": IMEI, "report": "GTFRI"}).sort("fix_time", 1))
    assert [p["fix_time"].day for p in positions] == [12, 19]  # the wrap is kept, the resend is not
    assert all(p["sent_at"] is None and p["count"] == "0001" for p in positions)
    assert [p["_id"]["key_time"] for p in positions] == [p["fix_time"] for p in positions]
    events = list(db.events.find({"imei": IMEI, "report": "GTIGN"}).sort("key_time", 1))
    assert [e["key_time"].day for e in events] == [28, 31]  # the fix times: the wrap is kept, the resend is not
    assert db.positions.count_documents({"imei": IMEI, "report": "GTIGN"}) == 2
    for doc in events:
        EventDoc.model_validate(doc)
    stored = list(db.positions.find({"imei": ascii_imei}).sort("fix_time", 1))
    assert [p["fix_time"].day for p in stored] == [18, 25]
    archived = db.messages.find_one({"raw": line, "direction": "in"})
    assert archived["warnings"] == ["sent_at empty: no send time"] and stored[0]["warnings"] == archived["warnings"]
    # With a send time the key is what it always was: no key_time.
    with gw.connect() as device:
        sacked(device, frame("RSP 00FE10BF", count="0003"), "0003")
    with_send_time = db.positions.find_one({"imei": IMEI, "count": "0003"})
    assert set(with_send_time["_id"]) == {"imei", "report", "sent_at", "count", "index"}


def test_reports_that_repeat_an_old_fix_without_a_send_time_are_all_stored(start_gateway) -> None:
    """A tracker without a new fix (GPS accuracy 0) repeats its last fix time; with a mask that also
    leaves out the count (00FE178F) nothing else tells its reports apart. Each is stored: keyed by
    the second it was received, never taken for a resend of the one before."""
    gw = start_gateway(SACK_MODE="all")
    db = gw.db
    no_count = encode_hex("+RSP", "GTFRI", {**RSP_VALUES, "imei": "865083030004661"}, 0x00FE178F)
    stale = frame("RSP 00FE17AF", imei="865083030004662", gps_accuracy=0, count="0001")
    with gw.connect() as first, gw.connect() as second:
        for n in (1, 2):
            if n == 2:
                time.sleep(1.05)  # the next report, at least a second later (as a tracker sends them)
            first.send(no_count)  # no count: no SACK, the stored position is the signal
            wait_for(lambda: db.positions.count_documents({"imei": "865083030004661"}) == n,
                     what=f"report {n} without a count stored")
            sacked(second, stale, "0001")  # the same count again: it wrapped
    assert db.positions.count_documents({"imei": "865083030004662"}) == 2
    both = {"imei": {"$in": ["865083030004661", "865083030004662"]}}
    assert len({p["fix_time"] for p in db.positions.find(both)}) == 1  # one fix, four reports


def test_every_message_is_sacked_once_archived(start_gateway) -> None:
    gw = start_gateway(SACK_MODE="all")
    db = gw.db
    zzz = f"+RESP:GTZZZ,090302,{IMEI},,1,2,0C1D"
    invalid = f"+RESP:GTFRI,090302,{IMEI},,1,2,3,0A0B"
    broken = frame("RSP 00FE10BF", count="0B0C")
    broken = broken[:11] + b"\xff" + broken[12:]  # an IMEI byte above 99: does not decode
    with gw.connect() as device:
        sacked(device, frame("RSP 00FE10BF", count="0001"), "0001")
        for data, count in ((zzz.encode() + b"$", "0C1D"), (invalid.encode() + b"$", "0A0B"), (broken, "0B0C")):
            sacked(device, data, count)
            # SACKed once archived: its archive entry is already there.
            raw = data.hex().upper() if data is broken else data.decode()[:-1]
            archived: dict[str, Any] = db.messages.find_one({"raw": raw, "direction": "in"})
            assert archived is not None and archived["imei"] == IMEI
            assert archived["status"] == ("unknown_type" if data.startswith(b"+RESP:GTZZZ") else "invalid")
    # A +RSP whose Number is above 1 (V4.01: 0-1) is stored, with a warning, and SACKed.
    with gw.connect() as device:
        sacked(device, frame("RSP 00FE10BF", count="0D0E", number=2), "0D0E")
    position = db.positions.find_one({"imei": IMEI, "count": "0D0E"})
    assert position["number"] == 2 and position["warnings"] == ["number 2 outside 0-1"]


def test_every_hex_frame_in_one_write_has_its_crc_counted(start_gateway) -> None:
    gw = start_gateway(SACK_MODE="all", GATEWAY_ALIVE_INTERVAL_S="0.5", GATEWAY_ID="gw-crc")
    frames = [frame("RSP 00FE10BF", count=f"{n:04X}") for n in range(1, 5)]
    bad = [f[:-4] + bytes([f[-4] ^ 0xFF]) + f[-3:] for f in frames]
    with gw.connect() as device:
        device.send(b"".join(bad))  # one write: the four frames come in one read
        device.read_until(b"+SACK:0004$")

    def counted() -> int | None:
        stats = (gw.db.gateway_state.find_one({"_id": "gateway:gw-crc"}) or {}).get("stats") or {}
        return stats.get("hex_crc_mismatches")

    wait_for(lambda: counted() == 4, timeout=15, what="4 CRC mismatches counted")


def test_an_existing_event_key_index_is_replaced_at_startup(start_gateway, mongo, db_name: str) -> None:
    db = mongo[db_name]
    db.events.create_index([("imei", 1), ("report", 1), ("sent_at", 1), ("count", 1)], unique=True, name="event_key")
    old = {"imei": IMEI, "type": "ignition_on", "report": "GTIGN", "sent_at": None, "count": "0002"}
    db.events.insert_one(dict(old))
    gw = start_gateway(SACK_MODE="all")
    indexes = gw.db.events.index_information()
    assert "event_key" not in indexes and indexes["event_key_time"]["unique"]
    with gw.connect() as device:
        sacked(device, frame("EVT 00FE17AF", count="0002"), "0002")  # same key but for key_time: kept
    assert gw.db.events.count_documents({"imei": IMEI, "count": "0002"}) == 2


def test_a_hex_tracker_without_versions_is_answered_with_the_version_its_device_record_knows(start_gateway) -> None:
    """The version comes from the frame, or the device record, or nowhere: a HEX heartbeat whose mask
    leaves it out (0xE9: the default 0xEF without bits 1-2) is answered with the version the tracker
    gave on an earlier connection."""
    gw = start_gateway()
    imei = "865083030004661"
    with gw.connect() as device:  # an earlier connection in ASCII, with its version
        device.send_line(f"+ACK:GTHBD,090302,{imei},,20240101000000,0001")
        device.read_until(b"+SACK:GTHBD,090302,0001$")
    wait_for(lambda: gw.db.devices.find_one({"_id": imei, "protocol_version": "090302", "online": False}),
             what="the version and the end of the first connection stored")
    values = {"device_type": 9, "protocol": "0302", "firmware": "020E", "imei": imei,
              "sent_at": datetime(2024, 1, 1, tzinfo=timezone.utc)}
    with gw.connect() as device:
        device.send(encode_hex("+HBD", None, {**values, "count": "0002"}, 0xE9))
        device.read_until(b"+SACK:GTHBD,,0002$")  # the frame that binds the connection: nothing known yet
        device.send(encode_hex("+HBD", None, {**values, "count": "0003"}, 0xE9))
        device.read_until(b"+SACK:GTHBD,090302,0003$")
