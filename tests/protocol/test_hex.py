"""HEX frames (spec 1.7, V4.01 chapter 4): every vendor example field by field, each HEX report
against its ASCII twin, replay through the framer, a round-trip property over random values and
masks, and malformed frames."""

from __future__ import annotations

import string
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from gv50_gevent.protocol import (
    Ack, Framer, Heartbeat, InvalidMessage, ProtocolError, Report, Unknown, encode_hex, hex_crc_ok, parse, parse_hex,
)
from gv50_gevent.protocol import hex_layout as hl
from gv50_gevent.protocol.hex import DEFAULT_MASKS, fields_for, read_hex
from gv50_gevent.protocol.hex_types import ACK_TYPES, EVT_TYPES, INF_TYPES, MOTION, RSP_TYPES, SATS
from tests.data import device_lines, hex_examples

EXAMPLES = hex_examples()


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def pos(acc: int, speed: float, azimuth: int, alt: float, lon: float, lat: float, fix: datetime,
        mcc: str, mnc: str, lac: str, cell: str) -> dict[str, Any]:
    return {"gps_accuracy": acc, "speed_kmh": speed, "azimuth": azimuth, "altitude_m": alt, "longitude": lon,
            "latitude": lat, "fix_time": fix, "mcc": mcc, "mnc": mnc, "lac": lac, "cell_id": cell}


def example(page: int, name: str = "") -> bytes:
    return next(data for comment, data in EXAMPLES if (f"page {page}" in comment or f"-{page}:" in comment) and name in comment)


def head(type_: str, version: str = "090103", imei: str = "868034001000397", header: str = "+RESP") -> dict[str, Any]:
    return {"header": header, "type": type_, "protocol_version": version, "imei": imei, "device_name": None,
            "warnings": ()}


# -- every V4.01 example, field by field ---------------------------------------------------------


def test_the_examples_are_all_there() -> None:
    assert len(EXAMPLES) == 15
    assert sorted({data[:4] for _, data in EXAMPLES}) == [b"+ACK", b"+EVT", b"+HBD", b"+INF", b"+RSP"]
    for _, data in EXAMPLES:
        assert data.endswith(b"\r\n")


def test_ack_example_p141() -> None:
    m = parse_hex(example(141))
    assert isinstance(m, Ack) and m.kind == "ack" and m.command == "GTSRI"
    assert m.model_dump() == {
        **head("GTSRI", header="+ACK"), "raw": example(141).hex().upper(),
        "sub": None, "serial": "07F9", "sent_at": utc(2013, 1, 30, 10, 21, 10), "count": "0101",
    }


def test_heartbeat_example_p172() -> None:
    m = parse_hex(example(172))
    assert isinstance(m, Heartbeat) and m.kind == "heartbeat"
    assert m.model_dump(exclude={"raw"}) == {
        **head("GTHBD", header="+ACK"), "sent_at": utc(2013, 1, 29, 20, 2, 19), "count": "0039"}


def test_fri_example_p144() -> None:
    m = parse_hex(example(144))
    # Mask 00FE0FBF: no external power (bit 12), no CSQ (bit 26); report ID 3 (mileage), type 0.
    assert m.model_dump(exclude={"raw"}) == {
        **head("GTFRI"), "sent_at": utc(2013, 1, 30, 8, 20, 5), "count": "00C7",
        "positions": (pos(1, 36.0, 174, 40.0, 117.182214, 31.84794, utc(2013, 1, 30, 0, 20, 4),
                          "0460", "0000", "550A", "1A11"),),
        "report_id_type": "30", "external_power_mv": None, "number": 1, "mileage_km": 7.0,
        "hour_meter_s": 12 * 3600 + 12 * 60 + 35, "battery_percent": 95,
        "status": {"motion_state": "22", "inputs": 1, "outputs": 0}, "csq_rssi": None, "csq_ber": None,
        "satellites": 8,
    }
    assert type(m).__name__ == "FixedReport" and m.ignition is True and not m.buffered


def test_lbc_example_p148() -> None:
    m = parse_hex(example(148))
    assert m.model_dump(exclude={"raw"}) == {
        **head("GTLBC"), "sent_at": utc(2013, 1, 30, 11, 40, 9), "count": "0182",
        "positions": (pos(1, 0.3, 129, 64.0, 117.201286, 31.833133, utc(2013, 1, 30, 3, 40, 8),
                          "0460", "0000", "5678", "5D7B"),),
        "call_number": "02154450293",  # number length 7, type 0 (no `+`), `3F` padded
    }


def test_geo_example_p150() -> None:
    m = parse_hex(example(150))
    # Report ID/type 0x33: bit 0 = 1 enter, bits 4-7 = 3 (low ID bits), bits 1-3 = 1 (high) -> fence 19.
    assert m.model_dump(exclude={"raw"}) == {
        **head("GTGEO", "090300", "865083030002646"), "sent_at": utc(2017, 6, 12, 9, 43, 46), "count": "161E",
        "positions": (pos(1, 4.9, 67, 32.0, 117.201642, 31.83314, utc(2017, 6, 12, 1, 43, 45),
                          "0460", "0001", "5504", "582B"),),
        "report_id_type": "131", "number": 1, "mileage_km": 88924.3,
    }
    assert (m.fence_id, m.entered) == (19, True)


def test_inf_example_p152() -> None:
    """216 bytes, report mask FFFD (every group, IMEI), expansion 0031 (GSV, RSV, BSV). It decodes
    only with 2-byte IGN/IGF intervals, not the table's 4 (spec 1.7 [DOC-ERR]); the reserved byte
    between the VER and IOS groups is read with IOS (it belongs to neither group in the table)."""
    data = example(152)
    m = parse_hex(data)
    assert m.model_dump(exclude={"raw"}) == {
        **head("GTINF", "090301", "865083030002554"), "sent_at": utc(2017, 6, 15, 16, 20, 34), "count": "03B6",
        "positions": (), "state": "11", "iccid": "89860116830009014012", "csq_rssi": 25, "csq_ber": 0,
        "external_power_mv": 0, "backup_battery_v": 4.187, "led_on": 1, "last_fix_time": utc(2017, 6, 15, 8, 20, 32),
        "inputs": 0, "outputs": 0, "time_zone": "+0800", "daylight_saving": False,
    }
    # What GTINF has no field for, field by field at the wire level.
    w = read_hex(data).values
    assert (w["hardware_version"], w["firmware"], w["report_mask"], w["ign_interval_s"], w["igf_interval_s"]) == (
        "0105", "020B", "007F", 30, 600)
    assert (w["satellites"], w["fri_discard_no_fix"], w["power_saving"], w["gir_trigger"]) == (13, 1, 0, 0)
    assert [c["cell_id"] for c in w["cells"]] == ["67F4", "4EE9", "582C", "67F3", "5DAD", "582D", "582B"]
    assert w["cells"][-1] == {"mcc": "0460", "mnc": "0001", "lac": "5504", "cell_id": "582B", "ta": 0, "rx_level": 25}
    assert (len(w["gsv"]), w["gsv"][0], w["rsv"], len(w["bsv"]), w["bsv"][-1]) == (
        8, {"sv_id": 28, "power": 30}, [], 11, {"sv_id": 5, "power": 34})


def test_stt_example_p157() -> None:
    m = parse_hex(example(157))
    assert m.model_dump(exclude={"raw"}) == {
        **head("GTSTT"), "sent_at": utc(2013, 1, 29, 20, 52, 49), "count": "0053",
        "positions": (pos(0, 0.2, 40, 53.0, 117.202488, 31.842532, utc(2013, 1, 29, 12, 52, 48),
                          "0460", "0000", "550A", "0358"),),
        "state": "22",
    }


IGN_EXAMPLE = {
    **head("GTIGN"), "sent_at": utc(2013, 1, 29, 20, 7, 39), "count": "003E",
    "positions": (pos(0, 0.4, 107, 56.0, 117.201277, 31.833088, utc(2013, 1, 29, 12, 7, 36),
                      "0460", "0000", "5678", "5D7B"),),
    "duration_s": 0, "hour_meter_s": 0, "mileage_km": 0.0,
}


def test_ign_example_p160() -> None:
    m = parse_hex(example(160))
    assert m.model_dump(exclude={"raw"}) == IGN_EXAMPLE
    assert m.event_type == "ignition_on"


def test_vgn_example_p161_is_the_ign_example() -> None:
    """V4.01 prints the GTIGN frame again as the GTVGN example (type 13, without the reserved,
    report type and duration fields of its own table). It decodes as the GTIGN it is; the VGN
    layout of the table is tested by the round trip below."""
    assert example(161) == example(160)
    assert parse_hex(example(161)).model_dump(exclude={"raw"}) == IGN_EXAMPLE


def test_upd_example_p163() -> None:
    m = parse_hex(example(163))
    assert type(m).__name__ == "FirmwareUpdate" and m.event_type == "firmware_update"
    assert m.model_dump(exclude={"raw"}) == {
        **head("GTUPD", imei="868034001149921"), "sent_at": utc(2013, 1, 31, 3, 0, 48), "count": "0027",
        "positions": (pos(0, 0.1, 0, 67.0, 117.201389, 31.833097, utc(2013, 1, 31, 10, 5, 14),
                          "0460", "0001", "5504", "582B"),),
        "code": 300, "retry": 0, "mileage_km": 3.4,
    }


def test_idf_example_p164() -> None:
    m = parse_hex(example(164))
    assert m.model_dump(exclude={"raw"}) == {
        **head("GTIDF"), "sent_at": utc(2013, 1, 30, 17, 28, 10), "count": "03C9",
        "positions": (pos(0, 1.1, 153, 33.0, 117.201269, 31.833021, utc(2013, 1, 30, 9, 28, 7),
                          "0460", "0000", "5678", "5D7B"),),
        "state": "12", "duration_s": 1023, "mileage_km": 11.7,
    }
    assert read_hex(example(164)).values["outputs"] == 3  # outside the documented 00-01, kept as sent


def test_gss_example_p166() -> None:
    """The table puts 4 reserved bytes after the total hour meter; the example has none and decodes
    without them (spec 1.7 [DOC-ERR])."""
    m = parse_hex(example(166))
    assert m.model_dump(exclude={"raw"}) == {
        **head("GTGSS"), "sent_at": utc(2013, 1, 30, 18, 4, 25), "count": "03D7",
        "positions": (pos(0, 2.4, 42, 53.0, 117.201306, 31.833132, utc(2013, 1, 30, 9, 37, 36),
                          "0460", "0000", "5678", "5D7B"),),
        "state": "1A", "gps_signal": False, "satellites": 5,
    }


def test_dos_example_p167_168() -> None:
    m = parse_hex(example(168, "GTDOS"))
    assert m.model_dump(exclude={"raw"}) == {
        **head("GTDOS", "090105", "868034001591460"), "sent_at": utc(2013, 7, 11, 16, 7, 43), "count": "020D",
        "positions": (pos(0, 0.0, 133, 56.0, 117.201322, 31.833038, utc(2013, 7, 11, 8, 7, 41),
                          "0460", "0000", "5678", "2079"),),
        "output_id": 1, "output_active": True,
    }


def test_ges_example_p169() -> None:
    """The table gives a 2-byte fence ID and a 1-byte enable; the example has one byte `01`, high
    nibble the ID, low nibble the enable (spec 1.7 [DOC-ERR]); the frame decodes only so."""
    m = parse_hex(example(169))
    assert m.model_dump(exclude={"raw"}) == {
        **head("GTGES", "090105", "868034001591460"), "sent_at": utc(2013, 7, 11, 16, 28, 17), "count": "0217",
        "positions": (pos(1, 0.0, 133, 55.0, 117.201306, 31.833047, utc(2013, 7, 11, 8, 28, 17),
                          "0460", "0000", "5678", "2079"),),
        "report_id_type": "01", "trigger_mode": 21, "radius_m": 50, "check_interval_s": 30, "number": 1,
        "mileage_km": 0.2,
    }
    assert (m.fence_id, m.active) == (0, True)


def test_rmd_example_p171() -> None:
    m = parse_hex(example(171))
    assert m.model_dump(exclude={"raw"}) == {
        **head("GTRMD", "090106", "868034001591460"), "sent_at": utc(2014, 1, 6, 14, 11, 44), "count": "1C7B",
        "positions": (pos(0, 0.0, 0, 48.0, 88.888888, 88.888888, utc(2014, 1, 6, 6, 10, 0),
                          "0000", "0000", "0000", "0000"),),
        "roaming_state": 1,
    }


def test_every_example_uses_all_its_bytes_and_its_length_field() -> None:
    for comment, data in EXAMPLES:
        frame = read_hex(data)
        assert frame.values["length"] == len(data), comment
        assert parse_hex(data).raw == data.hex().upper()


def test_crc_matches_only_the_two_2017_examples() -> None:
    """CRC-16/CCITT-FALSE from the message type through the count matches GEO (p. 150) and INF
    (p. 152) only, as spec 1.7 found; the other 13 were probably edited by hand. They decode all
    the same: a CRC mismatch never stops decoding."""
    matching = [comment for comment, data in EXAMPLES if hex_crc_ok(data)]
    assert matching == ["section 4.3 page 150: +RSP GTGEO", "section 4.4 page 152: +INF GTINF (printed without spaces)"]
    assert hex_crc_ok(example(150)[:-4] + b"\x00\x00\r\n") is False
    assert hex_crc_ok(b"+HBD") is False


# -- each HEX report against its ASCII twin -------------------------------------------------------

# The vendor's ASCII FRI, with the altitude in whole metres as HEX carries it.
ASCII_FRI = ("+RESP:GTFRI,090302,865083030004642,,13337,10,1,1,18.6,272,31,117.201342,31.855243,20170712074622,"
             "0460,0001,5504,29CF,00,347.8,00021:54:10,,,,220101,23,0,15,20170712154623,1854")
FRI_VALUES: dict[str, Any] = {
    "device_type": 9, "protocol": "0302", "firmware": "020E", "imei": "865083030004642", "external_power_mv": 13337,
    "inputs": 1, "outputs": 1, "motion": "22", "satellites": 15, "report_id_type": 0x10, "number": 1,
    "gps_accuracy": 1, "speed_kmh": 18.6, "azimuth": 272, "altitude_m": 31, "longitude": 117.201342,
    "latitude": 31.855243, "fix_time": utc(2017, 7, 12, 7, 46, 22), "mcc": "0460", "mnc": "0001", "lac": "5504",
    "cell_id": "29CF", "mileage_km": 347.8, "hour_meter_s": 21 * 3600 + 54 * 60 + 10, "csq_rssi": 23, "csq_ber": 0,
    "sent_at": utc(2017, 7, 12, 15, 46, 23), "count": "1854",
}


def bits(*numbers: int) -> int:
    return sum(1 << n for n in numbers)


# Speed, azimuth, altitude, cell, send time, count, length, type, protocol, firmware, external
# power, I/O, motion, satellites, total mileage, total hour meter, CSQ: what the ASCII line has.
FRI_MASK = bits(0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 12, 17, 18, 19, 21, 23, 26)


def same_as_ascii(frame: bytes, line: str) -> Any:
    hex_message = parse_hex(frame)
    ascii_message = parse(line)
    assert type(hex_message) is type(ascii_message)
    assert hex_message.model_dump(exclude={"raw"}) == ascii_message.model_dump(exclude={"raw"})
    return hex_message


def test_fri_equals_its_ascii_twin() -> None:
    m = same_as_ascii(encode_hex("+RSP", "GTFRI", FRI_VALUES, FRI_MASK), ASCII_FRI)
    assert m.extra() == parse(ASCII_FRI).extra()  # what storage spreads into its documents
    # Buffered: +BSP is +BUFF:GTFRI.
    late = same_as_ascii(encode_hex("+BSP", "GTFRI", FRI_VALUES, FRI_MASK), "+BUFF:" + ASCII_FRI[6:])
    assert late.buffered and late.header == "+BUFF"


def test_fri_with_default_masks_and_battery() -> None:
    line = ASCII_FRI.replace(",,,,220101,", ",,,80,220101,")
    # The default +RSP mask FE17BF carries no CSQ, the battery and the trip counters.
    values = {**FRI_VALUES, "battery_percent": 80, "trip_km": 1.5, "trip_hour_meter_s": 600}
    frame = encode_hex("+RSP", "GTFRI", values, DEFAULT_MASKS["RSP"] | bits(11, 26))
    same_as_ascii(frame, line)


def test_ign_event_equals_its_ascii_twin() -> None:
    line = ("+RESP:GTIGN,090302,865083030002554,,1377,0,0.0,24,63,117.201525,31.833040,20170731080420,"
            "0460,0001,5504,582B,00,,0.1,20170731160423,0233")
    values = {"device_type": 9, "protocol": "0302", "imei": "865083030002554", "duration_s": 1377, "number": 1,
              "gps_accuracy": 0, "speed_kmh": 0.0, "azimuth": 24, "altitude_m": 63, "longitude": 117.201525,
              "latitude": 31.83304, "fix_time": utc(2017, 7, 31, 8, 4, 20), "mcc": "0460", "mnc": "0001",
              "lac": "5504", "cell_id": "582B", "mileage_km": 0.1, "sent_at": utc(2017, 7, 31, 16, 4, 23),
              "count": "0233"}
    frame = encode_hex("+EVT", "GTIGN", values, bits(0, 1, 2, 3, 4, 5, 7, 8, 9, 21))
    assert same_as_ascii(frame, line).event_type == "ignition_on"


def test_geo_equals_its_ascii_twin_fence_19() -> None:
    line = ("+RESP:GTGEO,090300,865083030002646,,,131,1,1,4.9,67,32,117.201642,31.833140,20170612014345,"
            "0460,0001,5504,582B,00,88924.3,20170612094346,161E")
    same_as_ascii(example(150), line)


def test_inf_equals_its_ascii_twin() -> None:
    line = ("+RESP:GTINF,090302,865083030002554,,11,89860116830009013972,26,0,,0,,3.98,,1,,,20170731074323,"
            ",,,00,00,+0800,0,20170731154326,020C")
    values = {"device_type": 9, "protocol": "0302", "firmware": "020E", "imei": "865083030002554", "inputs": 0,
              "outputs": 0, "motion": "11", "satellites": 9, "power_saving": 0, "last_fix_time": utc(2017, 7, 31, 7, 43, 23),
              "fri_discard_no_fix": 0, "report_mask": "003F", "ign_interval_s": 30, "igf_interval_s": 600,
              "led": 0x10, "external_power_mv": 0, "backup_battery_mv": 3980, "iccid": "89860116830009013972",
              "csq_rssi": 26, "csq_ber": 0, "tz_flags": 0, "tz_offset": "0800",
              "sent_at": utc(2017, 7, 31, 15, 43, 26), "count": "020C"}
    # Header bits 0, 2-6 and the IOS, GPS, BAT, CID, CSQ and TMZ groups (9-14).
    frame = encode_hex("+INF", "GTINF", values, bits(0, 2, 3, 4, 5, 6, 9, 10, 11, 12, 13, 14))
    same_as_ascii(frame, line)
    negative = parse_hex(encode_hex("+INF", "GTINF", {**values, "tz_flags": 3, "tz_offset": "0330"},
                                    bits(0, 2, 3, 4, 5, 6, 9, 10, 11, 12, 13, 14)))
    assert (negative.time_zone, negative.daylight_saving, negative.utc_offset_minutes) == ("-0330", True, -210)


def test_inf_answers_carry_their_own_group_only() -> None:
    """Types 2-22 include only their own group, whatever the mask's group bits say (p. 152)."""
    common = {"device_type": 9, "protocol": "0302", "imei": "865083030002554", "count": "021E",
              "sent_at": utc(2017, 7, 31, 15, 56, 7)}
    ver = encode_hex("+INF", "GTVER", {**common, "firmware": "020E", "hardware_version": "0105"},
                     DEFAULT_MASKS["INF"])
    same_as_ascii(ver, "+RESP:GTVER,090302,865083030002554,,GV50,020E,0105,20170731155607,021E")
    gsv = encode_hex("+INF", "GTGSV", {**common, "firmware": "020E", "gsv": [
        {"sv_id": 19, "power": 33}, {"sv_id": 6, "power": 34}]}, 0xFFFD, 0xFFFF)
    same_as_ascii(gsv, "+RESP:GTGSV,090302,865083030002554,,2,19,33,6,34,20170731155607,021E")
    cells = [{"mcc": "0460", "mnc": "0000", "lac": "560A", "cell_id": "0981", "ta": 0, "rx_level": 33},
             {"mcc": "0460", "mnc": "0000", "lac": "560A", "cell_id": "091D", "ta": 0, "rx_level": 18}]
    gir = parse_hex(encode_hex("+INF", 10, {**common, "firmware": "020E", "gir_trigger": 6, "cells": cells},
                               DEFAULT_MASKS["INF"]))
    assert (gir.type, gir.fix_type, len(gir.neighbours), gir.serving.cell_id) == ("GTGSM", "GIR", 1, "091D")


def test_heartbeat_and_ack_equal_their_ascii_twins() -> None:
    hbd = encode_hex("+HBD", None, {"device_type": 9, "protocol": "0302", "firmware": "020E",
                                    "imei": "865083030004642", "sent_at": utc(2017, 7, 18, 16, 30, 21),
                                    "count": "252F"}, DEFAULT_MASKS["HBD"])
    same_as_ascii(hbd, "+ACK:GTHBD,090302,865083030004642,,20170718163021,252F")
    ack_values = {"device_type": 9, "protocol": "0200", "firmware": "0100", "imei": "135790246811220",
                  "sub_id": 0, "serial": "0004", "sent_at": utc(2009, 2, 14, 9, 32, 54), "count": "11F0"}
    ack = same_as_ascii(encode_hex("+ACK", "GTOUT", ack_values, DEFAULT_MASKS["ACK"]),
                        "+ACK:GTOUT,090200,135790246811220,,0004,20090214093254,11F0")
    assert ack.serial == "0004"  # commands match their ACK by serial, as in ASCII
    same_as_ascii(encode_hex("+ACK", "GTRTO", {**ack_values, "sub_id": 10, "serial": "0015", "count": "11F1"},
                             DEFAULT_MASKS["ACK"]),
                  "+ACK:GTRTO,090200,135790246811220,,IOS,0015,20090214093254,11F1")
    same_as_ascii(encode_hex("+ACK", "GTGEO", {**ack_values, "serial": "000A"}, DEFAULT_MASKS["ACK"]),
                  "+ACK:GTGEO,090200,135790246811220,,0,000A,20090214093254,11F0")


def test_buffered_forms_of_every_example() -> None:
    """V4.01 4.7: a buffered frame is the same frame with its second byte replaced by `B`."""
    for comment, data in EXAMPLES:
        if data[:4] in (b"+RSP", b"+EVT", b"+INF"):
            late = parse_hex(data[:1] + b"B" + data[2:])
            live = parse_hex(data)
            assert isinstance(late, Report) and late.buffered and not live.buffered, comment
            assert late.model_dump(exclude={"raw", "header"}) == live.model_dump(exclude={"raw", "header"})


def test_every_hex_type_has_the_ascii_model() -> None:
    from gv50_gevent.protocol import REPORTS
    for table in (RSP_TYPES, EVT_TYPES, INF_TYPES):
        for hex_type in table.values():
            if hex_type.ascii != "GTUPD":
                assert hex_type.model is REPORTS[hex_type.ascii].model
    assert len(ACK_TYPES) == 32


# -- replay through the framer ---------------------------------------------------------------------

FRAMES = [data for _, data in EXAMPLES] + [data[:1] + b"B" + data[2:] for _, data in EXAMPLES
                                           if data[:4] in (b"+RSP", b"+EVT", b"+INF")]
STREAM = b"".join(FRAMES)


def frames_of(framer: Framer, chunks: list[bytes]) -> list[bytes]:
    out = []
    for chunk in chunks:
        framer.feed(chunk)
        while (frame := framer.next_frame()) is not None:
            assert frame.binary == (frame.data[4:5] != b":" and not frame.data.startswith(b"+RESP:"))
            out.append(frame.data)
    return out


@pytest.mark.parametrize("step", [len(STREAM), 1, 7, 64])
def test_replay_whole_byte_by_byte_and_packed(step: int) -> None:
    chunks = [STREAM[i:i + step] for i in range(0, len(STREAM), step)]
    frames = frames_of(Framer(), chunks)
    assert frames == FRAMES
    assert [parse_hex(f).raw for f in frames] == [data.hex().upper() for data in FRAMES]


def test_hex_and_ascii_interleaved() -> None:
    ascii_lines = [line.encode() for line in device_lines()[:5]]
    mixed = [x for pair in zip(ascii_lines, (d for _, d in EXAMPLES)) for x in pair]
    frames = frames_of(Framer(), [b"".join(mixed)])
    assert frames == mixed


# -- round trip: random values, random masks --------------------------------------------------------

HEX4 = st.text("0123456789ABCDEF", min_size=4, max_size=4)
TIMES = st.one_of(st.none(), st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31)).map(
    lambda d: d.replace(microsecond=0, tzinfo=timezone.utc)))


def _tenths(top: int) -> st.SearchStrategy[float]:
    return st.integers(0, top * 10 + 9).map(lambda n: n / 10)


def _hms(top: int) -> st.SearchStrategy[int]:
    return st.tuples(st.integers(0, top), st.integers(0, 59), st.integers(0, 59)).map(
        lambda t: t[0] * 3600 + t[1] * 60 + t[2])


def _records(names: tuple[str, ...], limit: int) -> st.SearchStrategy[list[dict[str, Any]]]:
    value = {"mcc": HEX4, "mnc": HEX4, "lac": HEX4, "cell_id": HEX4, "ta": st.integers(0, 255),
             "rx_level": st.integers(0, 255), "sv_id": st.integers(0, 255), "power": st.integers(0, 255)}
    return st.lists(st.fixed_dictionaries({n: value[n] for n in names}), max_size=limit)


STRATEGIES: dict[Any, st.SearchStrategy[Any]] = {
    hl.U8: st.integers(0, 0xFF), hl.U16: st.integers(0, 0xFFFF), hl.U32: st.integers(0, 0xFFFFFFFF),
    hl.HEX2: HEX4, hl.TIME: TIMES, hl.IMEI: st.text(string.digits, min_size=15, max_size=15),
    hl.NAME: st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=8),
    hl.SPEED: _tenths(0xFFFF), hl.KM3: _tenths(0xFFFF), hl.KM5: _tenths(0xFFFFFFFF),
    hl.HMS3: _hms(255), hl.HMS6: _hms(0xFFFFFFFF),
    hl.DEGREES: st.integers(-2**31, 2**31 - 1).map(lambda n: n / 1_000_000),
    hl.METRES: st.integers(-2**15, 2**15 - 1).map(float),
    hl.ICCID: st.text(string.digits, min_size=19, max_size=20),
    hl.HHMM: st.tuples(st.integers(0, 99), st.integers(0, 99)).map(lambda t: f"{t[0]:02d}{t[1]:02d}"),
    MOTION: st.text("0123456789ABCDEF", min_size=2, max_size=2), SATS: st.integers(0, 15),
    hl.PHONE: st.one_of(st.none(), st.text(string.digits, min_size=1, max_size=20),
                        st.text(string.digits, min_size=1, max_size=19).map(lambda s: "+" + s)),
    hl.CELLS: _records(("mcc", "mnc", "lac", "cell_id", "ta", "rx_level"), 8),
    hl.SVS: _records(("sv_id", "power"), 12),
}
FRAME_TYPES = (
    [("+HBD", None), ("+ACK", "GTSRI"), ("+ACK", "GTRTO")]
    + [(h, code) for h in ("+RSP", "+BSP") for code in RSP_TYPES]
    + [(h, code) for h in ("+EVT", "+BVT") for code in EVT_TYPES]
    + [(h, code) for h in ("+INF", "+BNF") for code in INF_TYPES]
)


@st.composite
def frames(draw: st.DrawFn) -> tuple[str, Any, int, int, dict[str, Any]]:
    header, type_ = draw(st.sampled_from(FRAME_TYPES))
    width = {"+HBD": 8, "+ACK": 8, "+INF": 16, "+BNF": 16}.get(header, 32)
    mask = draw(st.integers(0, 2**width - 1))
    expansion = draw(st.integers(0, 0xFFFF)) if width == 16 else 0
    values = {name: draw(STRATEGIES[codec], label=name)
              for name, codec in fields_for(header, type_, mask, expansion) if name != "length"}
    return header, type_, mask, expansion, values


@settings(max_examples=600, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(frames())
def test_encode_then_decode_gives_the_values_back(case: tuple[str, Any, int, int, dict[str, Any]]) -> None:
    header, type_, mask, expansion, values = case
    frame = encode_hex(header, type_, values, mask, expansion)
    assert hex_crc_ok(frame)
    decoded = read_hex(frame)
    assert decoded.header == header
    assert decoded.masks == ((mask, expansion) if header in ("+INF", "+BNF") else (mask,))
    got = dict(decoded.values)
    if "length" in got:
        assert got.pop("length") == len(frame)
    assert got == values
    # Into a message: either the model accepts the values, or it says which one it refuses.
    try:
        message = parse_hex(frame, imei="865083030004642", protocol_version="090302")
    except InvalidMessage as exc:
        assert exc.frame == frame and exc.reason
    else:
        assert message.raw == frame.hex().upper()
        assert message.header == ("+BUFF" if header[1] == "B" else
                                  "+ACK" if header in ("+ACK", "+HBD") else "+RESP")
        assert message.imei == values.get("imei", "865083030004642")
        assert message.count == values.get("count")


def test_device_name_and_missing_uid_use_what_the_connection_knows() -> None:
    values = {"device_type": 9, "protocol": "0302", "firmware": "020E", "device_name": "gv50",
              "sent_at": None, "count": "0001"}
    named = encode_hex("+HBD", None, values, DEFAULT_MASKS["HBD"] | bits(4))
    assert read_hex(named).values["device_name"] == "gv50"
    with pytest.raises(InvalidMessage, match="no IMEI"):
        parse_hex(named)
    m = parse_hex(named, imei="865083030004642")
    assert (m.imei, m.device_name, m.sent_at) == ("865083030004642", "gv50", None)
    bare = encode_hex("+HBD", None, {"count": "0002"}, bits(6))  # only the count
    m = parse_hex(bare, imei="865083030004642")  # the layout does not depend on the version
    assert (m.protocol_version, m.count) == (None, "0002")
    m = parse_hex(bare, imei="865083030004642", protocol_version="090302")
    assert (m.protocol_version, m.count) == ("090302", "0002")
    m = parse_hex(encode_hex("+HBD", None, {}, 0), imei="865083030004642")
    assert (m.protocol_version, m.sent_at, m.count) == (None, None, None)


# -- malformed frames ---------------------------------------------------------------------------------


def reject(data: bytes, match: str) -> None:
    with pytest.raises(InvalidMessage, match=match) as info:
        parse_hex(data)
    assert info.value.frame == data


def test_malformed_frames() -> None:
    fri = example(144)
    reject(fri[:-1], "CR LF")
    reject(fri[:40] + fri[41:], "bytes where the masks give")
    reject(fri[:10] + bytes([fri[10] + 1]) + fri[11:], "Length field")
    reject(b"+RSP\x07\r\n", "too short")
    reject(b"+XYZ" + fri[4:], "not a HEX frame")
    reject(b"+ACK:GTHBD,090302,865083030004642,,20170718163021,252F$", "not a HEX frame")
    reject(fri[:16] + b"\xff" + fri[17:], "IMEI")  # a byte above 99
    reject(fri[:49] + b"\x0d" + fri[50:], "month")  # GPS time month 13
    lbc = example(148)
    reject(lbc[:32] + b"\xc0" + lbc[33:], "phone")
    geo = example(150)
    reject(geo[:71] + b"\x0a" + geo[72:], "fraction")  # total mileage tenths byte 10
    inf = example(152)
    reject(inf[:-20] + inf[-19:], "year")  # a byte short: the send time slides


def test_values_the_model_refuses() -> None:
    reject(encode_hex("+RSP", "GTFRI", {**FRI_VALUES, "latitude": 91.0}, FRI_MASK), "latitude")


def test_values_only_outside_their_documented_range_are_kept_with_a_warning() -> None:
    """As for an ASCII line (tests/protocol/test_odd_lines.py)."""
    m = parse_hex(encode_hex("+RSP", "GTFRI", {**FRI_VALUES, "csq_rssi": 45}, FRI_MASK))
    assert (m.csq_rssi, m.warnings) == (45, ("csq_rssi 45 outside 0-31 or 99",))
    m = parse_hex(encode_hex("+EVT", "GTSTT", {**FRI_VALUES, "motion": "33"}, FRI_MASK))
    assert (m.state, m.motion, m.warnings) == ("33", None, ("state 33 outside 16/1A/11/12/21/22/41/42",))
    m = parse_hex(encode_hex("+RSP", "GTGEO", {**FRI_VALUES, "report_id_type": 0xFE}, FRI_MASK))
    assert (m.fence_id, m.entered, m.warnings) == (0x7F, False, ("report_id_type 7F0 outside 0-13h/0-1",))
    # A +RSP Number above 1 (V4.01: 0-1): the frame carries one position whatever it says, and
    # its size agrees with its layout, so it is decoded, with a warning.
    for type_ in ("GTFRI", "GTGEO", "GTSPD"):
        m = parse_hex(encode_hex("+RSP", type_, {**FRI_VALUES, "number": 2}, FRI_MASK))
        assert (m.number, len(m.positions), m.warnings) == (2, 1, ("number 2 outside 0-1",)), type_
    # ... but only when its Length agrees.
    frame = encode_hex("+RSP", "GTFRI", {**FRI_VALUES, "number": 2}, FRI_MASK)
    reject(frame[:10] + bytes([frame[10] + 1]) + frame[11:], "Length field")


def test_unknown_types_are_messages_not_errors() -> None:
    frame = encode_hex("+RSP", 0, FRI_VALUES | {"report_id_type": 0}, FRI_MASK)
    unknown = frame[:4] + b"\x11" + frame[5:]  # type 17: "..." in the V4.01 table
    m = parse_hex(unknown)
    assert isinstance(m, Unknown) and (m.header, m.type, m.raw) == ("+RESP", "HEXRSP17", unknown.hex().upper())
    assert m.imei == "865083030004642"  # the unique ID comes before the type's own fields
    ack = example(141)
    m = parse_hex(ack[:4] + b"\x03" + ack[5:])  # command ID 3 is reserved
    assert isinstance(m, Unknown) and (m.type, m.imei) == ("HEXACK3", "868034001000397")
    inf = example(152)
    m = parse_hex(inf[:4] + b"\x03" + inf[5:])
    assert isinstance(m, Unknown) and (m.type, m.imei) == ("HEXINF3", "865083030002554")
    evt = example(157)
    m = parse_hex(evt[:4] + b"\x05" + evt[5:20] + b"\x00\x00\r\n")  # cut inside the IMEI: no IMEI, no error
    assert isinstance(m, Unknown) and (m.type, m.imei) == ("HEXEVT5", None)
    with pytest.raises(InvalidMessage):
        read_hex(unknown)


def test_only_protocol_errors_escape() -> None:
    for _, data in EXAMPLES:
        for cut in range(len(data)):
            for mutated in (data[:cut] + b"\r\n", data[:cut] + bytes([data[cut] ^ 0xFF]) + data[cut + 1:]):
                try:
                    m = parse_hex(mutated)
                except ProtocolError as exc:
                    assert exc.frame == mutated
                else:
                    assert isinstance(m, (Report, Ack, Heartbeat, Unknown))
