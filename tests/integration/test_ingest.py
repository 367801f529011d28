"""Ingest against a real mongod and a real gateway process: what lands in MongoDB, field by field."""

from __future__ import annotations

from datetime import datetime, timezone

from gv50_gevent.storage.documents import EventDoc, MessageDoc, PositionDoc
from tests.support import wait_for

FRI = ("+RESP:GTFRI,090302,865083030004642,,13337,10,1,1,18.6,272,30.8,117.201342,31.855243,20170712074622,"
       "0460,0001,5504,29CF,00,347.8,00021:54:10,,,,220101,23,0,15,20170712154623,1854")
IGN = ("+RESP:GTIGN,090302,865083030004642,,1377,0,0.0,24,63.3,117.201525,31.833040,20170731080420,"
       "0460,0001,5504,582B,00,,0.1,20170731160423,0233")
HBD = "+ACK:GTHBD,090302,865083030004642,,20170718163021,252F"
BUFF_OLD = ("+BUFF:GTFRI,090302,865083030004642,GV50,13501,31,1,1,40.6,15,50.7,117.246848,31.815552,20170711071842,"
            "0460,0001,5504,34B5,00,591.8,00032:07:37,,,,220101,20,0,10,20170711151842,24CD")
IMEI = "865083030004642"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def test_report_lands_in_every_collection(start_gateway) -> None:
    gw = start_gateway()
    with gw.connect() as device:
        device.send_line(FRI)
        device.send_line(IGN)
        device.send_line(HBD)
        device.read_until(b"+SACK:GTHBD,090302,252F$")
        db = gw.db
        pos = wait_for(lambda: db.positions.find_one({"imei": IMEI, "report": "GTFRI"}), what="GTFRI position")
        assert pos["buffered"] is False and pos["count"] == "1854" and pos["index"] == 0
        assert pos["fix_time"] == utc(2017, 7, 12, 7, 46, 22)
        assert pos["sent_at"] == utc(2017, 7, 12, 15, 46, 23)
        assert pos["location"] == {"type": "Point", "coordinates": [117.201342, 31.855243]}
        assert (pos["speed_kmh"], pos["azimuth"], pos["altitude_m"], pos["gps_accuracy"]) == (18.6, 272, 30.8, 1)
        assert pos["valid"] is True and pos["ignition"] is True and pos["mileage_km"] == 347.8
        assert pos["cell"] == {"mcc": "0460", "mnc": "0001", "lac": "5504", "cell_id": "29CF"}
        assert pos["external_power_mv"] == 13337 and pos["hour_meter_s"] == 21 * 3600 + 54 * 60 + 10
        assert pos["satellites"] == 15 and pos["csq_rssi"] == 23
        assert abs((datetime.now(timezone.utc) - pos["received_at"]).total_seconds()) < 30

        ev = wait_for(lambda: db.events.find_one({"imei": IMEI, "report": "GTIGN"}), what="ignition event")
        assert ev["type"] == "ignition_on" and ev["buffered"] is False
        assert ev["occurred_at"] == utc(2017, 7, 31, 16, 4, 23)
        assert ev["location"] == {"type": "Point", "coordinates": [117.201525, 31.83304]}
        # The event's own position block (last known fix, accuracy 0) is stored as a position too.
        ign_pos = db.positions.find_one({"imei": IMEI, "report": "GTIGN"})
        assert ign_pos is not None and ign_pos["valid"] is False

        dev = wait_for(lambda: (d := db.devices.find_one({"_id": IMEI})) and "last_position" in d and d, what="device")
        assert dev["online"] is True and dev["protocol_version"] == "090302" and dev["model"] == "GV50"
        assert dev["gateway_id"] and dev["remote_addr"].startswith("127.0.0.1:")
        assert dev["last_position"]["fix_time"] == utc(2017, 7, 31, 8, 4, 20)  # the newer fix (GTIGN)
        veh = db.vehicles.find_one({"_id": IMEI})
        assert veh["enabled"] is True and veh["auto_registered"] is True

        archived = wait_for(lambda: list(db.messages.find({"imei": IMEI}).sort("at", 1)) if db.messages.count_documents({"imei": IMEI}) >= 3 else None, what="archive")
        by_raw = {m["raw"]: m for m in archived}
        assert by_raw[FRI]["kind"] == "report" and by_raw[FRI]["status"] == "ok" and by_raw[FRI]["direction"] == "in"
        assert "reply" not in by_raw[FRI]  # SACK_MODE=off: nothing went out for it
        # The heartbeat's reply is recorded on the heartbeat's own archive entry, not as a document of its own.
        assert by_raw[HBD]["kind"] == "heartbeat"
        assert by_raw[HBD]["reply"] == "+SACK:GTHBD,090302,252F" and by_raw[HBD]["reply_when"] == "at_once"
        assert len(archived) == 3 and all(m["direction"] == "in" for m in archived)
        assert all(m["gateway_id"] == gw.settings.get("GATEWAY_ID", m["gateway_id"]) for m in archived)

        # Every stored document fits its schema model.
        for model, coll in ((PositionDoc, db.positions), (EventDoc, db.events), (MessageDoc, db.messages)):
            for doc in coll.find({"imei": IMEI}, {"_id": 0}):
                model.model_validate(doc)


def test_heartbeat_gets_exact_sack_and_no_count_sack_when_off(start_gateway) -> None:
    gw = start_gateway(SACK_MODE="off")
    with gw.connect() as device:
        device.send_line(FRI)
        device.send_line(HBD)
        assert device.read_until(b"$") == b"+SACK:GTHBD,090302,252F$"
        # SACK_MODE=off: the report gets nothing, only the heartbeat was answered.
        assert not device.is_closed(0.3)
        assert device.received == b"+SACK:GTHBD,090302,252F$"


def test_sack_all_acknowledges_only_what_is_stored(start_gateway) -> None:
    gw = start_gateway(SACK_MODE="all")
    imei = "865083030009999"
    with gw.connect() as device:
        lines = []
        for i in range(50):
            count = f"{i:04X}"
            lines.append(FRI.replace(IMEI, imei).replace("20170712154623,1854", f"2017071215{i // 60:02d}{i % 60:02d},{count}"))
        device.send("".join(line + "$" for line in lines))
        for i in range(50):
            count = f"{i:04X}".encode()
            device.read_until(b"+SACK:" + count + b"$")
            # At the moment the SACK arrived the position is already readable: stored before acknowledged.
            assert gw.db.positions.count_documents({"imei": imei, "count": count.decode()}) == 1
            assert gw.db.messages.count_documents({"imei": imei, "raw": lines[i]}) == 1
        assert device.received.count(b"+SACK:") == 50


def test_a_sacked_report_costs_two_documents_and_its_sack_is_on_its_frame(start_gateway) -> None:
    gw = start_gateway(SACK_MODE="all")
    imei = "865083030008888"
    lines = [FRI.replace(IMEI, imei).replace("154623,1854", f"1546{i:02d},{i:04X}") for i in range(20)]
    with gw.connect() as device:
        device.send("".join(line + "$" for line in lines))
        device.read_until(b"+SACK:0013$")
        device.send_line(HBD.replace(IMEI, imei))
        device.read_until(b"+SACK:GTHBD,090302,252F$")
    db = gw.db
    wait_for(lambda: db.messages.count_documents({"imei": imei}) == 21, what="the archive")
    # One position and one archive entry per report: the SACK is on the entry, not a third document.
    assert db.positions.count_documents({"imei": imei}) == 20
    assert db.messages.count_documents({"imei": imei, "direction": "out"}) == 0
    for i, line in enumerate(lines):
        entry = db.messages.find_one({"imei": imei, "raw": line})
        assert entry["reply"] == f"+SACK:{i:04X}" and entry["reply_when"] == "once_stored"
        MessageDoc.model_validate({k: v for k, v in entry.items() if k != "_id"})
    beat = db.messages.find_one({"imei": imei, "kind": "heartbeat"})
    assert beat["reply"] == "+SACK:GTHBD,090302,252F" and beat["reply_when"] == "at_once"


def test_same_frame_twice_gives_one_position(start_gateway) -> None:
    gw = start_gateway(SACK_MODE="all")
    with gw.connect() as device:
        device.send_line(FRI)
        device.read_until(b"+SACK:1854$")
        device.send_line(FRI)
        device.received = b""
        device.read_until(b"+SACK:1854$")
    assert gw.db.positions.count_documents({"imei": IMEI, "report": "GTFRI"}) == 1
    assert gw.db.messages.count_documents({"imei": IMEI, "raw": FRI}) == 2  # the archive keeps both arrivals


def test_older_buff_does_not_move_last_position(start_gateway) -> None:
    gw = start_gateway(SACK_MODE="all")
    with gw.connect() as device:
        device.send_line(FRI)
        device.read_until(b"+SACK:1854$")
        wait_for(lambda: (gw.db.devices.find_one({"_id": IMEI}) or {}).get("last_position"), what="last_position")
        device.send_line(BUFF_OLD)
        device.read_until(b"+SACK:24CD$")
        device.send_line(HBD)  # a long connection (heartbeats): offline as soon as it closes
        device.read_until(b"+SACK:GTHBD")
    buffered = wait_for(lambda: gw.db.positions.find_one({"imei": IMEI, "buffered": True}), what="+BUFF position")
    assert buffered["fix_time"] == utc(2017, 7, 11, 7, 18, 42)
    wait_for(lambda: (gw.db.devices.find_one({"_id": IMEI}) or {}).get("online") is False, what="offline")
    dev = gw.db.devices.find_one({"_id": IMEI})
    assert dev["last_position"]["fix_time"] == utc(2017, 7, 12, 7, 46, 22)
    assert dev["last_position"]["count"] == "1854"
