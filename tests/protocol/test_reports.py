"""`parse()` against the vendor's examples (every field of the main reports), real sibling-model
lines, and malformed input."""

from __future__ import annotations

import re
from collections import Counter
from datetime import datetime, timezone
from typing import Any

import pytest

from gv50_gevent.protocol import REPORTS, Ack, Heartbeat, InvalidMessage, ProtocolError, Report, Unknown, parse
from gv50_gevent.protocol.reports_info import SETTING_TAGS

IMEI_2554 = "865083030002554"
IMEI_4642 = "865083030004642"
DOC_IMEI = "135790246811220"

# The 45 `+RESP` types of spec section 4.
SPEC_TYPES = set(
    "TOW SPD RTL DOG IGL VGL HBM FRI EPS LBC GEO GES INF GPS ALM ALC ALS CID CSQ VER BAT IOS TMZ GSV RSV BSV "
    "PNA PFA PDP MPN MPF STT IGN IGF VGN VGF IDN STR STP LSP IDF GSM GSS DOS RMD".split()
)


def frame_text(line: str) -> str:
    """What `parse()` takes: the line without its `$` (some Traccar lines have none)."""
    return line[:-1] if line.endswith("$") else line


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def pos(acc: int, speed: float, azimuth: int, alt: float, lon: float, lat: float, fix: datetime,
        mcc: str, mnc: str, lac: str, cell: str) -> dict[str, Any]:
    return {"gps_accuracy": acc, "speed_kmh": speed, "azimuth": azimuth, "altitude_m": alt, "longitude": lon,
            "latitude": lat, "fix_time": fix, "mcc": mcc, "mnc": mnc, "lac": lac, "cell_id": cell}


def head(line: str, imei: str = IMEI_2554, version: str = "090302", name: str | None = None) -> dict[str, Any]:
    header, _, type_ = line.split(",", 1)[0].partition(":")
    return {"raw": line, "header": header, "type": type_, "protocol_version": version, "imei": imei,
            "device_name": name, "warnings": ()}


def by_type(lines: list[str], type_: str, header: str = "+RESP") -> str:
    return next(frame_text(line) for line in lines if line.startswith(f"{header}:{type_},"))


# -- every vendor line ------------------------------------------------------------------------


def test_every_vendor_device_line_parses(vendor_lines: list[str]) -> None:
    kinds: Counter[str] = Counter()
    types: set[str] = set()
    for line in vendor_lines:
        message = parse(frame_text(line))
        assert not isinstance(message, Unknown), line
        assert message.raw == frame_text(line)
        kinds[message.kind] += 1
        if isinstance(message, Report):
            types.add(message.type[2:])
    print(f"vendor examples: {sum(kinds.values())} device lines parsed: {dict(kinds)}")
    assert sum(kinds.values()) == 85
    assert kinds == {"report": 54, "ack": 30, "heartbeat": 1}  # 53 +RESP and 1 +BUFF
    assert types == SPEC_TYPES  # one example of each of the 45 types


def test_table_covers_the_spec_and_nothing_else() -> None:
    assert {t[2:] for t in REPORTS} == SPEC_TYPES
    assert len(REPORTS) == 45
    for type_, layout in REPORTS.items():
        event = layout.model.event
        assert event is None or re.fullmatch(r"[a-z][a-z0-9_]*", event), (type_, event)
    pure_positions = {t for t, layout in REPORTS.items() if layout.model.event is None}
    assert pure_positions == {"GTFRI", "GTRTL"}


def test_every_vendor_report_also_parses_as_buff(vendor_lines: list[str]) -> None:
    for line in vendor_lines:
        if not line.startswith("+RESP:"):
            continue
        live = parse(frame_text(line))
        late = parse("+BUFF:" + frame_text(line)[6:])
        assert isinstance(late, Report) and late.buffered and not live.buffered  # type: ignore[attr-defined]
        assert late.model_dump(exclude={"raw", "header"}) == live.model_dump(exclude={"raw", "header"})


def test_event_extras_do_not_collide_with_storage_document_fields(vendor_lines: list[str]) -> None:
    """Storage spreads `extra()` into its position and event documents next to these names."""
    reserved = {"imei", "type", "report", "buffered", "count", "index", "fix_time", "sent_at", "received_at",
                "occurred_at", "speed_kmh", "azimuth", "altitude_m", "gps_accuracy", "valid", "ignition", "cell",
                "location"}
    for line in vendor_lines:
        message = parse(frame_text(line))
        if isinstance(message, Report):
            assert not reserved & set(message.extra()), line


# -- field by field ---------------------------------------------------------------------------

FRI_FIX = pos(1, 18.6, 272, 30.8, 117.201342, 31.855243, utc(2017, 7, 12, 7, 46, 22), "0460", "0001", "5504", "29CF")


def test_gtfri(vendor_lines: list[str]) -> None:
    line = by_type(vendor_lines, "GTFRI")
    m = parse(line)
    assert m.model_dump() == {
        **head(line, IMEI_4642),
        "sent_at": utc(2017, 7, 12, 15, 46, 23), "count": "1854",
        "positions": (FRI_FIX,),
        "external_power_mv": 13337, "report_id_type": "10", "number": 1, "mileage_km": 347.8,
        "hour_meter_s": 21 * 3600 + 54 * 60 + 10, "battery_percent": None,
        "status": {"motion_state": "22", "inputs": 0x01, "outputs": 0x01},
        "csq_rssi": 23, "csq_ber": 0, "satellites": 15,
    }
    assert type(m).__name__ == "FixedReport"
    assert (m.report_id, m.report_type) == (1, 0)  # time-based, normal
    assert m.ignition is True and m.status.moving is True and m.status.motion == "ignition_on_moving"
    assert m.status.ignition_input and m.status.output1 and not m.status.main_power
    assert m.event_type is None and not m.buffered and m.positions[0].valid


def test_gtfri_buffered(vendor_lines: list[str]) -> None:
    line = by_type(vendor_lines, "GTFRI", "+BUFF")
    m = parse(line)
    assert m.buffered and m.header == "+BUFF" and m.device_name == "GV50"
    assert (m.report_id_type, m.external_power_mv, m.hour_meter_s) == ("31", 13501, 32 * 3600 + 7 * 60 + 37)
    assert m.positions[0].fix_time == utc(2017, 7, 18, 7, 18, 42) and m.sent_at == utc(2017, 7, 18, 15, 18, 42)
    assert m.count == "24CD"


def test_gtfri_two_points_moves_the_tail_by_12(vendor_lines: list[str]) -> None:
    fields = by_type(vendor_lines, "GTFRI").split(",")
    second = "1,20.5,275,31.0,117.201000,31.856000,20170712074652,0460,0001,5504,29d0,00".split(",")
    fields[6] = "2"
    line = ",".join(fields[:19] + second + fields[19:])
    assert len(line.split(",")) == 30 + 12
    m = parse(line)
    assert m.number == 2
    assert m.model_dump()["positions"] == (
        FRI_FIX,
        pos(1, 20.5, 275, 31.0, 117.201, 31.856, utc(2017, 7, 12, 7, 46, 52), "0460", "0001", "5504", "29D0"),
    )
    # The tail is read after both blocks.
    assert (m.mileage_km, m.hour_meter_s, m.status.motion_state, m.satellites) == (347.8, 78850, "22", 15)
    assert (m.sent_at, m.count) == (utc(2017, 7, 12, 15, 46, 23), "1854")
    with pytest.raises(InvalidMessage):
        parse(",".join(fields))  # says 2 points, carries 1


def test_gtign(vendor_lines: list[str]) -> None:
    line = by_type(vendor_lines, "GTIGN")
    m = parse(line)
    assert m.model_dump() == {
        **head(line), "sent_at": utc(2017, 7, 31, 16, 4, 23), "count": "0233",
        "positions": (pos(0, 0.0, 24, 63.3, 117.201525, 31.83304, utc(2017, 7, 31, 8, 4, 20),
                          "0460", "0001", "5504", "582B"),),
        "duration_s": 1377, "hour_meter_s": None, "mileage_km": 0.1,
    }
    assert m.event_type == "ignition_on" and m.ignition is True
    assert not m.positions[0].valid  # event reports carry the last known fix


def test_gtigf(vendor_lines: list[str]) -> None:
    line = by_type(vendor_lines, "GTIGF")
    m = parse(line)
    assert m.model_dump() == {
        **head(line), "sent_at": utc(2017, 7, 31, 16, 6, 18), "count": "0238",
        "positions": (pos(0, 0.0, 24, 63.3, 117.201525, 31.83304, utc(2017, 7, 31, 8, 6, 17),
                          "0460", "0001", "5504", "582B"),),
        "duration_s": 115, "hour_meter_s": None, "mileage_km": 0.1,
    }
    assert m.event_type == "ignition_off" and m.ignition is False


def test_gtvgn_gtvgf_are_ignition_events(vendor_lines: list[str]) -> None:
    on, off = parse(by_type(vendor_lines, "GTVGN")), parse(by_type(vendor_lines, "GTVGF"))
    assert (on.event_type, on.ignition, on.report_type, on.detection) == ("ignition_on", True, 4, "accelerometer")
    assert (on.duration_s, on.hour_meter_s, on.mileage_km) == (824, 3609, 16.3)
    assert (off.event_type, off.ignition, off.duration_s, off.hour_meter_s) == ("ignition_off", False, 32, 3641)


def test_gtigl(vendor_lines: list[str]) -> None:
    line = by_type(vendor_lines, "GTIGL")
    m = parse(line)
    assert m.model_dump() == {
        **head(line), "sent_at": utc(2017, 7, 31, 15, 30, 40), "count": "01F0",
        "positions": (pos(1, 0.0, 132, 31.7, 117.201622, 31.833047, utc(2017, 7, 31, 7, 30, 39),
                          "0460", "0001", "5504", "582B"),),
        "report_id_type": "01", "number": 1, "mileage_km": 0.1,
    }
    # V4.01 p. 71: report type 1 = ignition on, 0 = off.
    assert (m.report_id, m.report_type, m.ignition, m.event_type) == (0, 1, True, "ignition_on_location")
    off = parse(line.replace(",,,01,1,", ",,,00,1,"))
    assert (off.ignition, off.event_type) == (False, "ignition_off_location")
    vgl = parse(by_type(vendor_lines, "GTVGL"))
    assert (vgl.report_id, vgl.ignition, vgl.event_type) == (4, True, "ignition_on_location")


def test_gtstt(vendor_lines: list[str]) -> None:
    line = by_type(vendor_lines, "GTSTT")
    m = parse(line)
    assert m.model_dump() == {
        **head(line), "sent_at": utc(2017, 7, 31, 16, 2, 36), "count": "022F",
        "positions": (pos(0, 0.0, 24, 63.3, 117.201525, 31.83304, utc(2017, 7, 31, 8, 2, 35),
                          "0460", "0001", "5504", "582B"),),
        "state": "41",
    }
    assert (m.event_type, m.motion, m.ignition, m.moving) == ("motion_state", "sensor_rest", None, False)
    assert parse(line.replace(",,41,", ",,16,")).motion == "tow"
    # A code outside the table is kept, with a warning; it names no motion.
    odd = parse(line.replace(",,41,", ",,33,"))
    assert (odd.state, odd.motion, odd.warnings) == ("33", None, ("state 33 outside 16/1A/11/12/21/22/41/42",))


def test_gtinf(vendor_lines: list[str]) -> None:
    line = by_type(vendor_lines, "GTINF")
    m = parse(line)
    assert m.model_dump() == {
        **head(line), "sent_at": utc(2017, 7, 31, 15, 43, 26), "count": "020C", "positions": (),
        "state": "11", "iccid": "89860116830009013972", "csq_rssi": 26, "csq_ber": 0,
        "external_power_mv": 0, "backup_battery_v": 3.98, "led_on": 1,
        "last_fix_time": utc(2017, 7, 31, 7, 43, 23), "inputs": 0, "outputs": 0,
        "time_zone": "+0800", "daylight_saving": False,
    }
    assert (m.event_type, m.motion, m.ignition, m.moving) == ("device_info", "ignition_off_rest", False, False)
    assert (m.main_power, m.ignition_input, m.output1, m.utc_offset_minutes) == (False, False, False, 480)
    powered = parse(line.replace(",00,00,+0800,", ",81,01,-0330,"))
    assert (powered.main_power, powered.ignition_input, powered.output1) == (True, True, True)
    assert powered.utc_offset_minutes == -210


@pytest.mark.parametrize(("type_", "sent_at", "count", "event"), [
    ("GTPNA", utc(2017, 7, 31, 15, 33, 18), "01F9", "power_on"),
    ("GTPFA", utc(2017, 7, 31, 15, 33, 4), "01F8", "power_off"),
    ("GTPDP", utc(2017, 7, 31, 15, 33, 26), "01FA", "pdp_connected"),
])
def test_power_and_pdp(vendor_lines: list[str], type_: str, sent_at: datetime, count: str, event: str) -> None:
    line = by_type(vendor_lines, type_)
    m = parse(line)
    assert m.model_dump() == {**head(line), "sent_at": sent_at, "count": count, "positions": ()}
    assert m.event_type == event and m.extra() == {}


def test_gtmpn(vendor_lines: list[str]) -> None:
    line = by_type(vendor_lines, "GTMPN")
    m = parse(line)
    assert m.model_dump() == {
        **head(line), "sent_at": utc(2017, 7, 31, 16, 1, 59), "count": "022E",
        "positions": (pos(0, 1.7, 30, 64.2, 117.201528, 31.833023, utc(2017, 7, 31, 8, 1, 56),
                          "0460", "0001", "5504", "582B"),),
    }
    assert m.event_type == "main_power_connected"


def test_gtmpf(vendor_lines: list[str]) -> None:
    line = by_type(vendor_lines, "GTMPF")
    m = parse(line)
    assert m.model_dump() == {
        **head(line), "sent_at": utc(2017, 7, 31, 16, 1, 55), "count": "022D",
        "positions": (pos(0, 0.0, 144, 66.7, 117.201548, 31.833038, utc(2017, 7, 31, 8, 1, 53),
                          "0460", "0001", "5504", "582B"),),
    }
    assert m.event_type == "main_power_lost"


def test_gtdog(vendor_lines: list[str]) -> None:
    line = by_type(vendor_lines, "GTDOG")
    m = parse(line)
    assert m.model_dump() == {
        **head(line), "sent_at": utc(2017, 7, 31, 15, 33, 1), "count": "01F7",
        "positions": (pos(1, 0.0, 11, 29.1, 117.201647, 31.833055, utc(2017, 7, 31, 7, 33, 0),
                          "0460", "0001", "5504", "582B"),),
        "report_id_type": "01", "number": 1, "mileage_km": 0.1,
    }
    assert (m.event_type, m.report_id, m.report_type, m.reason) == ("watchdog_reboot", 0, 1, "time")


def test_gtgeo(vendor_lines: list[str]) -> None:
    line = by_type(vendor_lines, "GTGEO")
    m = parse(line)
    assert m.model_dump() == {
        **head(line, IMEI_4642), "sent_at": utc(2017, 7, 31, 15, 26, 26), "count": "3E3C",
        "positions": (pos(1, 63.9, 324, 48.8, 117.206575, 31.823115, utc(2017, 7, 31, 7, 26, 26),
                          "0460", "0001", "5504", "6575"),),
        "report_id_type": "11", "number": 1, "mileage_km": 1054.9,
    }
    assert (m.event_type, m.fence_id, m.entered) == ("geofence", 1, True)
    fence19 = parse(line.replace(",,,11,1,", ",,,130,1,"))
    assert (fence19.fence_id, fence19.entered) == (0x13, False)
    # Fence IDs stop at 13h: fence 14h is kept, with a warning.
    fence20 = parse(line.replace(",,,11,1,", ",,,141,1,"))
    assert (fence20.fence_id, fence20.entered, fence20.warnings) == (0x14, True, ("report_id_type 141 outside 0-13h/0-1",))
    assert "report_id_type" in _reject(line.replace(",,,11,1,", ",,,1G1,1,")).reason  # not hex at all


def test_gtspd(vendor_lines: list[str]) -> None:
    line = by_type(vendor_lines, "GTSPD")
    m = parse(line)
    assert m.model_dump() == {
        **head(line), "sent_at": utc(2017, 7, 31, 15, 30, 43), "count": "01F1",
        "positions": (pos(1, 2.1, 132, 31.3, 117.20163, 31.833045, utc(2017, 7, 31, 7, 30, 42),
                          "0460", "0001", "5504", "582B"),),
        "report_id_type": "01", "number": 1, "mileage_km": 0.1,
    }
    assert (m.event_type, m.inside_range) == ("speed_alarm", True)


def test_other_report_types(vendor_lines: list[str]) -> None:
    hbm = parse(by_type(vendor_lines, "GTHBM"))
    assert (hbm.speed_band, hbm.behaviour, hbm.event_type) == ("medium", "acceleration", "harsh_behaviour")
    eps = parse(by_type(vendor_lines, "GTEPS"))
    assert (eps.external_power_mv, eps.inside_range, eps.positions[0].gps_accuracy) == (12478, True, 4)
    lbc = parse(by_type(vendor_lines, "GTLBC"))
    assert (lbc.call_number, lbc.event_type, lbc.positions[0].cell_id) == ("17756084712", "location_by_call", "582B")
    ges = parse(by_type(vendor_lines, "GTGES"))
    assert (ges.fence_id, ges.active, ges.trigger_mode, ges.radius_m, ges.check_interval_s) == (11, True, 21, 1000, 30)
    assert (ges.number, ges.mileage_km) == (1, 657.6)
    gps = parse(by_type(vendor_lines, "GTGPS"))
    assert (gps.report_mask, gps.last_fix_time) == ("003F", utc(2017, 7, 31, 7, 47, 8))
    assert parse(by_type(vendor_lines, "GTCID")).iccid == "89860116830009013972"
    csq = parse(by_type(vendor_lines, "GTCSQ"))
    assert (csq.csq_rssi, csq.csq_ber) == (23, 0)
    ver = parse(by_type(vendor_lines, "GTVER"))
    assert (ver.device_type, ver.software_version, ver.firmware, ver.hardware, ver.event_type) == (
        "GV50", "020E", "2.14", "1.05", "version")
    bat = parse(by_type(vendor_lines, "GTBAT"))
    assert (bat.external_power_mv, bat.backup_battery_v, bat.led_on) == (0, 3.98, 1)
    ios = parse(by_type(vendor_lines, "GTIOS"))
    assert (ios.inputs, ios.outputs, ios.main_power, ios.output1) == (0, 0, False, False)
    tmz = parse(by_type(vendor_lines, "GTTMZ"))
    assert (tmz.time_zone, tmz.daylight_saving, tmz.utc_offset_minutes) == ("+0800", False, 480)
    idf = parse(by_type(vendor_lines, "GTIDF"))
    assert (idf.state, idf.duration_s, idf.mileage_km, idf.ignition, idf.event_type) == (
        "22", 444, 1061.5, True, "idling_end")
    starts = {t: parse(by_type(vendor_lines, t)).event_type for t in ("GTIDN", "GTSTR", "GTSTP", "GTLSP")}
    assert starts == {"GTIDN": "idling_start", "GTSTR": "vehicle_start", "GTSTP": "vehicle_stop",
                      "GTLSP": "long_stop"}
    gss = parse(by_type(vendor_lines, "GTGSS"))
    assert (gss.gps_signal, gss.satellites, gss.state, gss.ignition) == (True, 5, "22", True)
    dos = parse(by_type(vendor_lines, "GTDOS"))
    assert (dos.output_id, dos.output_active, dos.event_type) == (1, True, "output_changed")
    rmd = parse(by_type(vendor_lines, "GTRMD"))
    assert (rmd.roaming_state, rmd.roaming, rmd.event_type) == (2, "unknown_roaming", "roaming")


def test_gtgsm_has_no_device_name(vendor_lines: list[str]) -> None:
    line = by_type(vendor_lines, "GTGSM")
    m = parse(line)
    assert (m.imei, m.device_name, m.fix_type, m.count) == ("865083030002117", None, "FRI", "0508")
    assert len(m.neighbours) == 6
    assert m.neighbours[0].model_dump() == {"mcc": "0460", "mnc": "0000", "lac": "560A", "cell_id": "0981",
                                            "rx_level": 33}
    assert m.serving.model_dump() == {"mcc": "0460", "mnc": "0000", "lac": "560A", "cell_id": "091D", "rx_level": 18}
    # A missing neighbour leaves its six fields empty; it is dropped, not stored as an empty cell.
    fields = line.split(",")
    fields[4:10] = [""] * 6
    assert len(parse(",".join(fields)).neighbours) == 5


def test_satellite_reports(vendor_lines: list[str]) -> None:
    gsv = parse(by_type(vendor_lines, "GTGSV"))
    assert gsv.sv_count == 12 and len(gsv.svs) == 12 and gsv.constellation == "gps"
    assert gsv.svs[0].model_dump() == {"sv_id": 19, "power": 33} and gsv.svs[-1].model_dump() == {"sv_id": 28,
                                                                                               "power": 0}
    assert parse(by_type(vendor_lines, "GTRSV")).svs == ()
    bsv = parse(by_type(vendor_lines, "GTBSV"))
    assert (bsv.sv_count, len(bsv.svs), bsv.svs[8].sv_id, bsv.constellation) == (9, 9, 7, "beidou")
    with pytest.raises(InvalidMessage, match="do not fit"):
        parse(by_type(vendor_lines, "GTRSV").replace(",,0,", ",,3,"))


def test_settings_reports(vendor_lines: list[str]) -> None:
    alm = [parse(frame_text(line)) for line in vendor_lines if line.startswith("+RESP:GTALM,")]
    assert [(m.total_packets, m.current_packet) for m in alm] == [(4, 1), (4, 2), (4, 3), (4, 4)]
    assert alm[3].settings == ("VVS", "13500", "600", "10", None, None, "AVS", "20", "30", None, None, None)
    assert alm[3].blocks() == {"VVS": ("13500", "600", "10", None, None), "AVS": ("20", "30", None, None, None)}
    assert list(alm[0].blocks())[:3] == ["BSI", "SRI", "CFG"] and len(alm[0].blocks()["RMD"]) == 155
    assert all(set(m.blocks()) <= SETTING_TAGS for m in alm)
    alc = [parse(frame_text(line)) for line in vendor_lines if line.startswith("+RESP:GTALC,")]
    assert [(m.config_mask, m.more_packets, m.current_packet) for m in alc] == [
        ("29B7EF7B", True, 1), ("140000000", True, 2), ("200000000", True, 3), ("1C000000000", False, 4)]
    assert alc[3].device_name == "GV50A02V14" and list(alc[3].blocks()) == ["GAM", "VVS", "AVS"]
    als = parse(by_type(vendor_lines, "GTALS"))
    assert als.command == "FRI" and len(als.settings) == 17 and als.settings[:3] == ("0", "1", None)
    assert als.blocks() == {"FRI": als.settings} and als.event_type == "settings"


# -- acknowledgements -------------------------------------------------------------------------


@pytest.mark.parametrize(("type_", "serial"), [("GTOUT", "0004"), ("GTSRI", "0001"), ("GTBSI", "0000")])
def test_command_acks(vendor_lines: list[str], type_: str, serial: str) -> None:
    line = by_type(vendor_lines, type_, "+ACK")
    m = parse(line)
    assert isinstance(m, Ack) and m.kind == "ack" and m.command == type_
    assert m.model_dump() == {
        **head(line, DOC_IMEI, "090200"), "sub": None, "serial": serial,
        "sent_at": utc(2009, 2, 14, 9, 32, 54), "count": "11F0",
    }


def test_ack_with_sub_command_and_stray_spaces(vendor_lines: list[str]) -> None:
    rto = parse(by_type(vendor_lines, "GTRTO", "+ACK"))
    assert (rto.sub, rto.serial, rto.count) == ("IOS", "0015", "11F1")
    geo = parse(by_type(vendor_lines, "GTGEO", "+ACK"))
    assert (geo.sub, geo.serial) == ("0", "000A")
    cmd = parse(by_type(vendor_lines, "GTCMD", "+ACK"))  # `+ACK:GTCMD, 090200,...` (spec 7)
    assert (cmd.protocol_version, cmd.serial, cmd.sent_at) == ("090200", "0005", utc(2010, 3, 10, 17, 28, 30))
    assert parse(by_type(vendor_lines, "GTHRM", "+ACK")).protocol_version == "390200"


def test_heartbeat(vendor_lines: list[str]) -> None:
    line = by_type(vendor_lines, "GTHBD", "+ACK")
    m = parse(line)
    assert isinstance(m, Heartbeat) and m.kind == "heartbeat"
    assert m.model_dump() == {
        **head(line, IMEI_4642), "sent_at": utc(2017, 7, 18, 16, 30, 21), "count": "252F",
    }


# -- sibling models' real lines ---------------------------------------------------------------


def test_traccar_lines_parse_or_are_unknown_or_rejected(traccar_lines: list[str]) -> None:
    """Every line of another @Track model either fits a GV50 layout, is a type GV50 does not
    have, or is rejected as a ProtocolError. Nothing else may escape."""
    outcome: Counter[str] = Counter()
    warned = 0
    for line in traccar_lines:
        try:
            message = parse(frame_text(line))
        except ProtocolError as exc:
            assert exc.frame == frame_text(line).encode("latin-1") and exc.reason
            outcome["invalid"] += 1
            continue
        assert message.raw == frame_text(line)
        outcome["unknown" if isinstance(message, Unknown) else "parsed"] += 1
        warned += bool(message.warnings)
    print(f"traccar_gl200_text.txt: {len(traccar_lines)} lines: parsed {outcome['parsed']} ({warned} with warnings), "
          f"unknown {outcome['unknown']}, invalid {outcome['invalid']}")
    assert len(traccar_lines) == 296
    # 8 lines with a value only outside its documented range and 1 with an empty send time parse with warnings
    # (tests/protocol/test_odd_lines.py).
    assert dict(outcome) == {"parsed": 85, "unknown": 112, "invalid": 99}
    assert warned == 9


def test_real_gv55_fri_with_blank_fields(traccar_lines: list[str]) -> None:
    """The one real GV55 line: no voltage, no altitude, no cell, no hour meter, no CSQ."""
    line = next(frame_text(x) for x in traccar_lines if x.startswith("+RESP:GTFRI,0F0106,862193020451183,"))
    m = parse(line)
    p = m.positions[0]
    assert (p.gps_accuracy, p.altitude_m, p.longitude, p.latitude, p.mcc, p.cell_id) == (
        1, None, -57.513617, -25.368191, None, None)
    assert (m.external_power_mv, m.mileage_km, m.hour_meter_s, m.battery_percent) == (None, 21235.0, None, 0)
    assert (m.status.motion_state, m.ignition, m.csq_rssi, m.satellites) == ("21", True, None, None)


def test_unknown_type_is_returned_not_raised(traccar_lines: list[str]) -> None:
    line = next(frame_text(x) for x in traccar_lines if x.startswith("+RESP:GTERI,"))
    m = parse(line)
    assert isinstance(m, Unknown) and m.type == "GTERI" and m.imei is not None
    assert m.fields == tuple(f or None for f in line.split(",")[1:])


# -- malformed lines --------------------------------------------------------------------------


def _reject(line: str) -> InvalidMessage:
    with pytest.raises(InvalidMessage) as info:
        parse(line)
    assert info.value.frame == line.encode("latin-1")
    return info.value


def test_wrong_field_count(vendor_lines: list[str]) -> None:
    line = by_type(vendor_lines, "GTIGN")
    assert "20 fields where the layout has 21" in _reject(line.rsplit(",", 1)[0]).reason
    assert "22 fields" in _reject(line + ",0000").reason
    # Traccar's negative vector: a GTFRI with fields missing at the end.
    short = ("+RESP:GTFRI,350302,867844003012625,,12401,10,1,0,0.0,0,816.1,-70.514613,-33.361280,20160811170821,"
             "0730,0002,7410,C789,00,0.0,00001:33:08,2788,702,137B8")
    assert "fields" in _reject(short).reason


def test_bad_time(vendor_lines: list[str]) -> None:
    line = by_type(vendor_lines, "GTSTT")
    assert "sent_at" in _reject(line.replace("20170731160236", "20171331160236")).reason
    assert "fix_time" in _reject(line.replace("20170731080235", "2017073108023")).reason


def test_times_read_again_come_from_a_bounded_cache(vendor_lines: list[str]) -> None:
    """A fleet's live reports share their send and fix times: one read is kept and shared (a
    datetime is immutable), the cache never grows past its bound, and a bad time is never kept."""
    from gv50_gevent.protocol import fields

    fri = parse(frame_text(by_type(vendor_lines, "GTFRI")))
    again = parse(frame_text(by_type(vendor_lines, "GTFRI")))
    assert isinstance(fri, Report) and isinstance(again, Report)
    assert again.sent_at is fri.sent_at and again.positions[0].fix_time is fri.positions[0].fix_time
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    for k in range(fields._TIMES_SIZE + 100):
        at = start.replace(second=k % 60, minute=k // 60 % 60, hour=k // 3600)
        assert fields._time(at.strftime("%Y%m%d%H%M%S")) == at
        assert len(fields._TIMES) <= fields._TIMES_SIZE
    with pytest.raises(ValueError):
        fields._time("20171331160236")
    assert "20171331160236" not in fields._TIMES
    test_bad_time(vendor_lines)  # and still refused when read again


def test_bad_imei(vendor_lines: list[str]) -> None:
    line = by_type(vendor_lines, "GTPNA")
    assert "imei" in _reject(line.replace(IMEI_2554, "86508303000255X")).reason
    assert "imei" in _reject(line.replace(IMEI_2554, "8650830300025541")).reason


def test_bad_hex(vendor_lines: list[str]) -> None:
    line = by_type(vendor_lines, "GTPNA")
    assert "count" in _reject(line.replace(",01F9", ",01G9")).reason
    assert "count" in _reject(line.replace(",01F9", ",1F9")).reason
    fri = by_type(vendor_lines, "GTFRI")
    assert "status" in _reject(fri.replace(",220101,", ",22010,")).reason
    assert "lac" in _reject(fri.replace(",5504,29CF,", ",55X4,29CF,")).reason


def test_bad_number_and_ranges(vendor_lines: list[str]) -> None:
    fri = by_type(vendor_lines, "GTFRI")
    assert "number" in _reject(fri.replace(",10,1,1,", ",10,x,1,")).reason
    assert "latitude" in _reject(fri.replace(",31.855243,", ",91.5,")).reason
    # Only outside the documented range: kept, with a warning.
    assert parse(fri.replace(",10,1,1,", ",70,1,1,")).warnings == ("report_id_type 70 outside 1-5/0-6",)
    assert parse(fri.replace(",220101,23,", ",220101,45,")).warnings == ("csq_rssi 45 outside 0-31 or 99",)


def test_no_nan_or_infinity(vendor_lines: list[str]) -> None:
    line = by_type(vendor_lines, "GTIGN")
    assert "altitude_m" in _reject(line.replace(",63.3,", ",inf,")).reason
    assert "mileage_km" in _reject(line.replace(",,0.1,", ",,nan,")).reason


def test_layout_rejects_a_rest_followed_by_a_position() -> None:
    from gv50_gevent.protocol.layout import POSITION, Layout, Rest
    with pytest.raises(TypeError):
        Layout(Report, ("imei", Rest("settings"), POSITION, "count"))


def test_not_a_message_at_all() -> None:
    for line in ("garbage", "+RESP", "GTFRI,090302", "+RESP:,1,2"):
        assert _reject(line).reason == "no '+HEADER:TYPE,' at the start"


def test_bad_ack() -> None:
    assert "fields" in _reject("+ACK:GTOUT,090200,135790246811220,,0004,20090214093254").reason
    assert "heartbeat" in _reject("+ACK:GTHBD,090302,865083030004642,,20170718163021").reason
