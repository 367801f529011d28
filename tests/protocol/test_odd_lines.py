"""Real devices' odd lines: a value only outside its documented range is kept and named in
`warnings`; a value that makes the data wrong still refuses the line, with a clear reason."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from gv50_gevent.protocol import InvalidMessage, Position, parse
from gv50_gevent.protocol.reports import FixedReport
from gv50_gevent.storage.documents import event_doc, position_docs

DOC_IMEI = "135790246811220"
RECEIVED = datetime(2026, 1, 1, tzinfo=timezone.utc)

# The public lines of tests/data/gl200_family_lines.txt (1-based line numbers) that only a value
# outside V4.01's documented range kept out, and the warnings they now carry.
EXPECTED_WARNINGS = {
    19: ("led_on 0 outside 1-2",),
    106: ("report_id_type 00 outside 1-5/0-6",),
    111: ("fix_type STR outside SOS/RTL/LBC/FRI/GIR/TOW/INF",),
    112: ("fix_type STR outside SOS/RTL/LBC/FRI/GIR/TOW/INF",),
    113: ("fix_type STR outside SOS/RTL/LBC/FRI/GIR/TOW/INF",),
    126: ("led_on 0 outside 1-2",),
    128: ("led_on 0 outside 1-2",),
    163: ("report_id_type 0 outside 0-4/0-5",),
    171: ("sent_at empty: no send time",),  # a +BUFF GTFRI with an empty send-time field
}


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def frame_text(line: str) -> str:
    return line[:-1] if line.endswith("$") else line


def _line(traccar_lines: list[str], number: int) -> str:
    return frame_text(traccar_lines[number - 1])


def _reject(line: str) -> str:
    with pytest.raises(InvalidMessage) as info:
        parse(line)
    assert info.value.frame == line.encode("latin-1")
    return info.value.reason


def test_exactly_these_public_lines_carry_warnings(traccar_lines: list[str]) -> None:
    found = {}
    for number, line in enumerate(traccar_lines, 1):
        try:
            message = parse(frame_text(line))
        except InvalidMessage:
            continue
        if message.warnings:
            found[number] = message.warnings
    assert found == EXPECTED_WARNINGS


def test_vendor_examples_carry_no_warnings(vendor_lines: list[str]) -> None:
    for line in vendor_lines:
        assert parse(frame_text(line)).warnings == (), line


def test_gtfri_with_report_id_type_00(traccar_lines: list[str]) -> None:
    """A GV300 documentation line: report ID/type `00`, which V4.01's GTFRI does not have."""
    m = parse(_line(traccar_lines, 106))
    assert isinstance(m, FixedReport)
    assert m.warnings == ("report_id_type 00 outside 1-5/0-6",)
    assert (m.header, m.type, m.protocol_version, m.imei, m.device_name) == ("+RESP", "GTFRI", "060100", DOC_IMEI, None)
    assert (m.external_power_mv, m.report_id_type, m.report_id, m.report_type, m.number) == (None, "00", 0, 0, 1)
    assert m.positions[0].model_dump() == {
        "gps_accuracy": 1, "speed_kmh": 4.3, "azimuth": 92, "altitude_m": 70.0, "longitude": 121.354335,
        "latitude": 31.222073, "fix_time": utc(2009, 2, 14, 1, 32, 54), "mcc": "0460", "mnc": "0000",
        "lac": "18D8", "cell_id": "6141",
    }
    assert (m.mileage_km, m.hour_meter_s, m.battery_percent) == (2000.0, 12345 * 3600 + 12 * 60 + 34, 80)
    assert (m.status.motion_state, m.ignition, m.output1) == ("21", True, False)
    assert (m.csq_rssi, m.csq_ber, m.satellites) == (None, None, None)
    assert (m.sent_at, m.count) == (utc(2009, 2, 14, 9, 32, 54), "11F0")

    # Stored as any position, with its warning once (not also as a report field).
    [doc] = position_docs(m, RECEIVED)
    assert doc["warnings"] == ["report_id_type 00 outside 1-5/0-6"]
    assert doc["report_id_type"] == "00" and doc["location"]["coordinates"] == [121.354335, 31.222073]
    assert "warnings" not in m.extra()


def test_gtinf_with_led_on_0(traccar_lines: list[str]) -> None:
    m = parse(_line(traccar_lines, 19))
    assert m.warnings == ("led_on 0 outside 1-2",)
    assert (m.protocol_version, m.imei, m.state, m.motion, m.ignition) == (
        "C20113", "869653060997976", "1A", "fake_tow", False)
    assert (m.iccid, m.csq_rssi, m.csq_ber) == ("89464278206103756482", 19, 0)
    assert (m.external_power_mv, m.backup_battery_v, m.led_on) == (12295, 4.25, 0)
    assert (m.last_fix_time, m.inputs, m.outputs, m.time_zone, m.daylight_saving) == (
        utc(2024, 11, 4, 22, 9, 34), 0, 0, None, None)
    assert (m.sent_at, m.count) == (utc(2024, 11, 4, 16, 20, 9), "06D6")
    event = event_doc(m, RECEIVED)
    assert event is not None and event["type"] == "device_info" and event["warnings"] == ["led_on 0 outside 1-2"]


def test_gtgsm_with_fix_type_str(traccar_lines: list[str]) -> None:
    """GL500 lines: the cells of a start report (`STR`), a request V4.01 does not list."""
    m = parse(_line(traccar_lines, 111))
    assert m.warnings == ("fix_type STR outside SOS/RTL/LBC/FRI/GIR/TOW/INF",)
    assert (m.imei, m.fix_type, len(m.neighbours)) == ("862365030025161", "STR", 5)
    assert m.neighbours[0].model_dump() == {"mcc": "0234", "mnc": "0015", "lac": "003A", "cell_id": "62A2",
                                            "rx_level": 16}
    assert m.serving.model_dump() == {"mcc": "0234", "mnc": "0015", "lac": "003A", "cell_id": "7489", "rx_level": 17}
    assert (m.sent_at, m.count) == (utc(2017, 2, 19, 20, 0, 48), "0033")


def test_gtdog_with_one_character_report_id_type(traccar_lines: list[str]) -> None:
    m = parse(_line(traccar_lines, 163))
    assert m.warnings == ("report_id_type 0 outside 0-4/0-5",)
    assert (m.event_type, m.report_id_type, m.report_id, m.report_type, m.reason) == (
        "watchdog_reboot", "0", None, 0, None)
    assert (m.number, m.mileage_km, m.positions[0].latitude, m.count) == (1, 2000.0, 31.222073, "11F0")
    [doc] = position_docs(m, RECEIVED)
    event = event_doc(m, RECEIVED)
    assert doc["warnings"] == event["warnings"] == ["report_id_type 0 outside 0-4/0-5"]  # type: ignore[index]


def test_every_warning_of_a_line(vendor_lines: list[str]) -> None:
    fri = next(frame_text(x) for x in vendor_lines if x.startswith("+RESP:GTFRI,"))
    odd = (fri.replace(",13337,10,1,1,18.6,272,", ",13337,00,1,77,1000.5,361,")
              .replace(",,,,220101,23,0,15,", ",,,101,220101,45,8,40,"))
    m = parse(odd)
    assert m.warnings == (  # in the model's field order: the position block is declared first
        "gps_accuracy 77 outside 0-50", "speed_kmh 1000.5 outside 0-999.9", "azimuth 361 outside 0-360",
        "report_id_type 00 outside 1-5/0-6",
        "battery_percent 101 outside 0-100", "csq_rssi 45 outside 0-31 or 99", "csq_ber 8 outside 0-7 or 99",
        "satellites 40 outside 0-24",
    )
    p = m.positions[0]
    assert (p.gps_accuracy, p.speed_kmh, p.azimuth, p.valid) == (77, 1000.5, 361, True)
    assert (m.battery_percent, m.csq_rssi, m.csq_ber, m.satellites) == (101, 45, 8, 40)
    # The documented "not known" values warn about nothing.
    assert parse(fri.replace(",220101,23,0,", ",220101,99,99,")).warnings == ()


def test_status_with_a_motion_state_outside_the_table(fri: str) -> None:
    odd = fri.replace(",220101,", ",330101,")
    for _ in range(2):  # a status with a kept value is never cached: it warns every time
        m = parse(odd)
        assert m.warnings == ("motion_state 33 outside 16/1A/11/12/21/22/41/42",)
        assert (m.status.motion_state, m.status.motion, m.ignition, m.status.inputs) == ("33", None, None, 1)
    assert parse(fri).warnings == ()


def test_more_kept_values(vendor_lines: list[str]) -> None:
    def by_type(type_: str) -> str:
        return next(frame_text(x) for x in vendor_lines if x.startswith(f"+RESP:{type_},"))

    rmd = by_type("GTRMD")
    fields = rmd.split(",")
    fields[4] = "7"
    m = parse(",".join(fields))
    assert (m.roaming_state, m.roaming, m.warnings) == (7, None, ("roaming_state 7 outside 0-3",))
    inf = by_type("GTINF")
    m = parse(inf.replace(",+0800,", ",+1600,"))
    assert (m.time_zone, m.utc_offset_minutes, m.warnings) == ("+1600", 960, ("time_zone +1600 outside -1459..+1459",))
    assert "time_zone" in _reject(inf.replace(",+0800,", ",+08:0,"))  # not ±HHMM at all


# -- what stays strict ------------------------------------------------------------------------


@pytest.fixture
def fri(vendor_lines: list[str]) -> str:
    return next(frame_text(x) for x in vendor_lines if x.startswith("+RESP:GTFRI,"))


def test_bad_imei_is_refused(fri: str) -> None:
    assert _reject(fri.replace("865083030004642", "86508303000464X")) == (
        "GTFRI: imei: String should match pattern '^[0-9]{14,15}$'")


def test_latitude_95_is_refused(fri: str) -> None:
    assert _reject(fri.replace(",31.855243,", ",95.000000,")) == (
        "GTFRI: positions.0.latitude: Input should be less than or equal to 90")


def test_month_13_is_refused(fri: str) -> None:
    assert _reject(fri.replace(",20170712074622,", ",20171312074622,")) == (
        "GTFRI: positions.0.fix_time: Value error, month must be in 1..12")


def test_wrong_field_count_is_refused(fri: str) -> None:
    assert _reject(fri.replace(",00021:54:10,", ",00021:54:10,,")) == "31 fields where the layout has 30"


def test_non_hex_count_is_refused(fri: str) -> None:
    assert _reject(fri.replace(",1854", ",18G4")) == (
        "GTFRI: count: String should match pattern '^[0-9A-Fa-f]{4}$'")


def test_a_documented_field_that_is_no_number_is_refused(fri: str) -> None:
    # The reason names the field and the type, not the inner choices of the documented range.
    assert _reject(fri.replace(",18.6,272,", ",18.6,27x,")) == (
        "GTFRI: positions.0.azimuth: Input should be a valid integer, unable to parse string as an integer")
    assert _reject(fri.replace(",220101,23,", ",220101,2.5,")) == (
        "GTFRI: csq_rssi: Input should be a valid integer, unable to parse string as an integer")


def test_a_kept_number_still_fits_mongodb(fri: str) -> None:
    assert "battery_percent" in _reject(fri.replace(",,,,220101,", ",,," + "9" * 20 + ",220101,"))


def test_without_a_list_for_warnings_a_model_refuses() -> None:
    """Built directly (not through a decoder), a model cannot keep a warning, so it refuses."""
    with pytest.raises(ValidationError, match="77 outside 0-50"):
        Position(gps_accuracy=77)
    assert Position(gps_accuracy=50).gps_accuracy == 50
