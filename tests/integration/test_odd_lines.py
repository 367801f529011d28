"""Real devices' odd lines through a real gateway and a real mongod: a value only outside its
documented range is stored with `warnings` (positions, events, archive) and counted in the
statistics, in ASCII and in HEX; a truly broken line is archived as invalid with its reason."""

from __future__ import annotations

from gv50_gevent.protocol import encode_hex
from gv50_gevent.storage.documents import EventDoc, MessageDoc, PositionDoc
from tests.data import family_lines
from tests.protocol.test_hex import FRI_MASK, FRI_VALUES
from tests.support import wait_for

DOC_IMEI = "135790246811220"
INF_IMEI = "869653060997976"


def _line(number: int) -> str:
    """A line of tests/data/gl200_family_lines.txt (1-based), without its `$`."""
    return family_lines()[number - 1].removesuffix("$")


FRI_00 = _line(106)  # GTFRI with report ID/type 00
DOG_0 = _line(163)  # GTDOG with report ID/type 0
INF_LED_0 = _line(19)  # GTINF with LED on 0
# FRI_00 again with a latitude off the globe, and its own count: refused.
FRI_LAT_95 = FRI_00.replace(",31.222073,", ",95.000000,").replace(",11F0", ",11F1")


def test_odd_lines_are_stored_with_their_warnings(start_gateway) -> None:
    gw = start_gateway(SACK_MODE="all", GATEWAY_ALIVE_INTERVAL_S="0.5", GATEWAY_ID="gw-odd")
    db = gw.db
    with gw.connect() as device:
        # FRI_00 and DOG_0 share their count (11F0): each SACK is waited for in turn.
        for line in (FRI_00, DOG_0):
            device.received = b""
            device.send_line(line)
            device.read_until(b"+SACK:11F0$")
        device.send_line(FRI_LAT_95)
        device.read_until(b"+SACK:11F1$")
    with gw.connect() as device:
        device.send_line(INF_LED_0)
        device.read_until(b"+SACK:06D6$")

    fri = db.positions.find_one({"imei": DOC_IMEI, "report": "GTFRI"})
    assert fri is not None and fri["warnings"] == ["report_id_type 00 outside 1-5/0-6"]
    assert fri["report_id_type"] == "00" and fri["count"] == "11F0" and fri["battery_percent"] == 80
    assert fri["location"] == {"type": "Point", "coordinates": [121.354335, 31.222073]}
    assert (fri["gps_accuracy"], fri["speed_kmh"], fri["azimuth"], fri["valid"]) == (1, 4.3, 92, True)
    assert db.events.count_documents({"imei": DOC_IMEI, "report": "GTFRI"}) == 0  # a GTFRI is no event

    dog_position = db.positions.find_one({"imei": DOC_IMEI, "report": "GTDOG"})
    dog_event = db.events.find_one({"imei": DOC_IMEI, "report": "GTDOG"})
    assert dog_position["warnings"] == ["report_id_type 0 outside 0-4/0-5"]
    assert dog_event["type"] == "watchdog_reboot" and dog_event["warnings"] == ["report_id_type 0 outside 0-4/0-5"]
    assert dog_event["report_id_type"] == "0" and dog_event["location"]["coordinates"] == [121.354335, 31.222073]

    inf = db.events.find_one({"imei": INF_IMEI, "report": "GTINF"})
    assert inf["type"] == "device_info" and inf["led_on"] == 0 and inf["warnings"] == ["led_on 0 outside 1-2"]

    archive = {m["raw"]: m for m in db.messages.find({"direction": "in"})}
    assert archive[FRI_00]["status"] == "ok" and archive[FRI_00]["warnings"] == ["report_id_type 00 outside 1-5/0-6"]
    assert archive[DOG_0]["status"] == "ok" and archive[DOG_0]["warnings"] == ["report_id_type 0 outside 0-4/0-5"]
    assert archive[INF_LED_0]["status"] == "ok" and archive[INF_LED_0]["warnings"] == ["led_on 0 outside 1-2"]
    broken = archive[FRI_LAT_95]
    assert broken["status"] == "invalid" and "warnings" not in broken
    assert broken["error"] == "GTFRI: positions.0.latitude: Input should be less than or equal to 90"
    assert db.positions.count_documents({"count": "11F1"}) == 0
    # The answers the gateway sent have nothing to warn about.
    assert db.messages.count_documents({"direction": "out", "warnings": {"$exists": True}}) == 0

    # Every stored document still fits its schema model.
    for model, coll in ((PositionDoc, db.positions), (EventDoc, db.events), (MessageDoc, db.messages)):
        for doc in coll.find({}, {"_id": 0}):
            model.model_validate(doc)

    def stats() -> dict | None:
        doc = db.gateway_state.find_one({"_id": "gateway:gw-odd"}) or {}
        figures = doc.get("stats") or {}
        return figures if figures.get("invalid") == 1 and figures.get("warnings") == 3 else None

    wait_for(stats, timeout=15, what="statistics counting 3 messages with warnings and 1 invalid")


def test_a_hex_frame_with_an_odd_value_is_stored_with_its_warning(start_gateway) -> None:
    """The HEX twin of FRI_00's oddity: a HEX GTFRI whose report ID/type is 00."""
    imei = "865083030004644"
    gw = start_gateway(SACK_MODE="all")
    frame = encode_hex("+RSP", "GTFRI", {**FRI_VALUES, "report_id_type": 0x00, "imei": imei}, FRI_MASK)
    with gw.connect() as device:
        device.send(frame)
        position = wait_for(lambda: gw.db.positions.find_one({"imei": imei}), what="the HEX position")
    assert position["warnings"] == ["report_id_type 00 outside 1-5/0-6"]
    assert position["report_id_type"] == "00" and position["location"]["coordinates"] == [117.201342, 31.855243]
    archived = wait_for(lambda: gw.db.messages.find_one({"imei": imei, "direction": "in"}), what="the archive entry")
    assert archived["raw"] == frame.hex().upper() and archived["status"] == "ok"
    assert archived["warnings"] == ["report_id_type 00 outside 1-5/0-6"]
