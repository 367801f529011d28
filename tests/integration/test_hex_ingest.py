"""HEX over real sockets: a tracker in HEX mode and its ASCII twin send the same values (reports,
an event, buffered frames, a heartbeat); what is stored is the same, apart from the raw archive.
Two masks are tried: the one that carries what the ASCII line has, and the device's default."""

from __future__ import annotations

from typing import Any

import pytest

from gv50_gevent.protocol import encode_hex
from gv50_gevent.protocol.hex import DEFAULT_MASKS
from tests.protocol.test_hex import ASCII_FRI, FRI_MASK, FRI_VALUES, bits, utc
from tests.support import wait_for

ASCII_IMEI, HEX_IMEI = "865083030004642", "865083030004643"
IGN_LINE = ("+RESP:GTIGN,090302,865083030004642,,1377,0,0.0,24,63,117.201525,31.833040,20170731080420,"
            "0460,0001,5504,582B,00,,0.1,20170731160423,0233")
IGN_VALUES = {"device_type": 9, "protocol": "0302", "duration_s": 1377, "number": 1, "gps_accuracy": 0,
              "speed_kmh": 0.0, "azimuth": 24, "altitude_m": 63, "longitude": 117.201525, "latitude": 31.83304,
              "fix_time": utc(2017, 7, 31, 8, 4, 20), "mcc": "0460", "mnc": "0001", "lac": "5504",
              "cell_id": "582B", "mileage_km": 0.1, "sent_at": utc(2017, 7, 31, 16, 4, 23), "count": "0233"}
HBD_LINE = "+ACK:GTHBD,090302,865083030004642,,20170718163021,252F"
HBD_VALUES = {"device_type": 9, "protocol": "0302", "firmware": "020E", "sent_at": utc(2017, 7, 18, 16, 30, 21),
              "count": "252F"}
LATER = ",20170712154723,1855"  # the buffered report: sent a minute later, the next count
BATTERY_LINE = ASCII_FRI.replace(",,,,220101,", ",,,80,220101,")
MASKS = {
    "as in the ASCII line": (FRI_MASK, ASCII_FRI, {}),
    # The device's default +RSP mask has no CSQ; with bit 11 the battery comes too.
    "default, with battery": (DEFAULT_MASKS["RSP"] | bits(11, 26), BATTERY_LINE,
                              {"battery_percent": 80, "trip_km": 1.5, "trip_hour_meter_s": 600}),
}


def stored(db: Any, collection: str, imei: str) -> list[dict[str, Any]]:
    docs = []
    for doc in db[collection].find({"imei": imei}).sort([("report", 1), ("buffered", 1)]):
        for volatile in ("_id", "imei", "received_at"):
            doc.pop(volatile, None)
        docs.append(doc)
    return docs


@pytest.mark.parametrize("mask_name", sorted(MASKS))
def test_a_hex_tracker_stores_what_its_ascii_twin_stores(start_gateway, mask_name: str) -> None:
    mask, fri_line, extra = MASKS[mask_name]
    gw = start_gateway(SACK_MODE="all")
    db = gw.db
    with gw.connect() as twin:
        for line in (fri_line, "+BUFF:" + fri_line[6:].replace(",20170712154623,1854", LATER), IGN_LINE):
            twin.send_line(line)
        twin.send_line(HBD_LINE)
        twin.read_until(b"+SACK:GTHBD,090302,252F$")
        twin.read_until(b"+SACK:0233$")
    with gw.connect() as device:
        values = {**FRI_VALUES, **extra, "imei": HEX_IMEI}
        late = {**values, "sent_at": utc(2017, 7, 12, 15, 47, 23), "count": "1855"}
        frames = [encode_hex("+RSP", "GTFRI", values, mask), encode_hex("+BSP", "GTFRI", late, mask),
                  encode_hex("+EVT", "GTIGN", {**IGN_VALUES, "imei": HEX_IMEI}, bits(0, 1, 2, 3, 4, 5, 7, 8, 9, 21))]
        device.send(b"".join(frames))  # packed in one write, as TCP may deliver them
        device.send(encode_hex("+HBD", None, {**HBD_VALUES, "imei": HEX_IMEI}, DEFAULT_MASKS["HBD"]))
        device.read_until(b"+SACK:GTHBD,090302,252F$")  # the heartbeat's reply is ASCII, as spec 1.5 says
        device.read_until(b"+SACK:0233$")
        assert b"+SACK:1854$+SACK:1855$" in device.received  # a SACK per stored frame, as for ASCII

    wait_for(lambda: db.positions.count_documents({"imei": HEX_IMEI}) == 3, what="HEX positions")
    wait_for(lambda: db.positions.count_documents({"imei": ASCII_IMEI}) == 3, what="ASCII positions")
    assert stored(db, "positions", HEX_IMEI) == stored(db, "positions", ASCII_IMEI)
    assert stored(db, "events", HEX_IMEI) == stored(db, "events", ASCII_IMEI)
    assert sorted((d["report"], d["buffered"]) for d in stored(db, "positions", HEX_IMEI)) == [
        ("GTFRI", False), ("GTFRI", True), ("GTIGN", False)]

    archived = wait_for(lambda: (docs := list(db.messages.find({"imei": HEX_IMEI, "direction": "in"}))) and
                        len(docs) == 4 and docs, what="the four HEX frames archived")
    assert all(d["status"] == "ok" for d in archived)
    assert {d["raw"] for d in archived} == {f.hex().upper() for f in frames} | {
        encode_hex("+HBD", None, {**HBD_VALUES, "imei": HEX_IMEI}, DEFAULT_MASKS["HBD"]).hex().upper()}
    device_doc = wait_for(lambda: db.devices.find_one({"_id": HEX_IMEI, "config.protocol_format": "hex"}),
                          what="protocol format noted")
    assert device_doc["protocol_version"] == "090302"
    assert db.devices.find_one({"_id": ASCII_IMEI})["config"]["protocol_format"] == "ascii"
