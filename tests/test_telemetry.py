"""Telemetry: what every V4.01 example report says about its tracker, parameter by parameter, and
how `devices.telemetry` keeps each parameter's newest value (against the real mongod)."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from pymongo import MongoClient

from gv50_gevent.protocol import Report, parse
from gv50_gevent.storage.database import DEVICES, durable
from gv50_gevent.storage.devices import Devices
from gv50_gevent.storage.telemetry import report_telemetry
from tests.data import device_lines


def utc(text: str) -> datetime:
    return datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)


CELL_582B = ("0460", "0001", "5504", "582B")
# (report type, count) -> every parameter the line carries. The two GTFRI examples of p. 72 share a
# count and differ only in their report type, so they share an entry. Cells as (mcc, mnc, lac, cell id).
EXPECTED: dict[tuple[str, str], dict[str, Any]] = {
    ("GTTOW", "01E8"): {"mileage_km": 0.1, "cell": CELL_582B, "gps_accuracy": 2, "speed_kmh": 0.0},
    ("GTSPD", "01F1"): {"mileage_km": 0.1, "cell": CELL_582B, "gps_accuracy": 1, "speed_kmh": 2.1},
    ("GTRTL", "01F5"): {"mileage_km": 0.1, "cell": CELL_582B, "gps_accuracy": 1, "speed_kmh": 0.0},
    ("GTDOG", "01F7"): {"mileage_km": 0.1, "cell": CELL_582B, "gps_accuracy": 1, "speed_kmh": 0.0},
    ("GTIGL", "01F0"): {"mileage_km": 0.1, "ignition": True, "cell": CELL_582B, "gps_accuracy": 1, "speed_kmh": 0.0},
    ("GTHBM", "3DBD"): {"mileage_km": 1037.0, "cell": ("0460", "0001", "5504", "34B5"), "gps_accuracy": 1,
                        "speed_kmh": 73.7},
    ("GTHBM", "3DBE"): {"mileage_km": 1037.3, "cell": ("0460", "0001", "5504", "34B5"), "gps_accuracy": 1,
                        "speed_kmh": 67.7},
    # Accuracy 0: the last known fix, which says nothing new about accuracy or speed.
    ("GTVGL", "0424"): {"mileage_km": 16.3, "ignition": True, "cell": ("0460", "0000", "560A", "4D13")},
    ("GTFRI", "1854"): {
        "external_power_mv": 13337, "mileage_km": 347.8, "hour_meter_s": 21 * 3600 + 54 * 60 + 10, "gsm_rssi": 23,
        "gsm_ber": 0, "satellites": 15, "motion": "ignition_on_moving", "moving": True, "inputs": 0x01,
        "outputs": 0x01, "main_power": False, "output1": True, "ignition": True,
        "cell": ("0460", "0001", "5504", "29CF"), "gps_accuracy": 1, "speed_kmh": 18.6},
    ("GTEPS", "05C5"): {"external_power_mv": 12478, "mileage_km": 0.0, "cell": CELL_582B, "gps_accuracy": 4,
                        "speed_kmh": 4.3},
    ("GTLBC", "020B"): {"cell": CELL_582B, "gps_accuracy": 1, "speed_kmh": 0.0},
    ("GTGEO", "3E3C"): {"mileage_km": 1054.9, "cell": ("0460", "0001", "5504", "6575"), "gps_accuracy": 1,
                        "speed_kmh": 63.9},
    ("GTGES", "2880"): {"mileage_km": 657.6, "cell": CELL_582B, "gps_accuracy": 2, "speed_kmh": 0.0},
    ("GTINF", "020C"): {
        "battery_v": 3.98, "external_power_mv": 0, "gsm_rssi": 26, "gsm_ber": 0, "iccid": "89860116830009013972",
        "inputs": 0, "outputs": 0, "time_zone": "+0800", "last_fix_at": utc("20170731074323"),
        "motion": "ignition_off_rest", "moving": False, "ignition": False, "main_power": False, "output1": False},
    ("GTGPS", "020E"): {"last_fix_at": utc("20170731074708")},
    ("GTCID", "021A"): {"iccid": "89860116830009013972"},
    ("GTCSQ", "021C"): {"gsm_rssi": 23, "gsm_ber": 0},
    ("GTBAT", "0220"): {"battery_v": 3.98, "external_power_mv": 0},
    ("GTIOS", "0222"): {"inputs": 0, "outputs": 0, "main_power": False, "output1": False},
    ("GTTMZ", "0224"): {"time_zone": "+0800"},
    ("GTPFA", "01F8"): {"powered": False},
    ("GTPNA", "01F9"): {"powered": True},
    ("GTMPF", "022D"): {"cell": CELL_582B, "main_power": False},
    ("GTMPN", "022E"): {"cell": CELL_582B, "main_power": True},
    ("GTSTT", "022F"): {"motion": "sensor_rest", "moving": False, "cell": CELL_582B},
    ("GTIGN", "0233"): {"mileage_km": 0.1, "ignition": True, "cell": CELL_582B},
    ("GTVGN", "0502"): {"mileage_km": 16.3, "hour_meter_s": 3609, "ignition": True,
                        "cell": ("0460", "0000", "560A", "6703")},
    ("GTIGF", "0238"): {"mileage_km": 0.1, "ignition": False, "cell": CELL_582B},
    ("GTVGF", "0504"): {"mileage_km": 16.3, "hour_meter_s": 3641, "ignition": False,
                        "cell": ("0460", "0000", "560A", "6703")},
    ("GTIDN", "3EAD"): {"mileage_km": 1061.0, "cell": ("0460", "0001", "5502", "465D"), "idling": True},
    ("GTSTR", "3E80"): {"mileage_km": 1057.6, "cell": ("0460", "0001", "5504", "582C")},
    ("GTSTP", "3EB5"): {"mileage_km": 1061.0, "cell": ("0460", "0001", "5502", "465D")},
    ("GTLSP", "3B23"): {"mileage_km": 1006.0, "cell": CELL_582B},
    ("GTIDF", "3EBF"): {"mileage_km": 1061.5, "motion": "ignition_on_moving", "moving": True, "ignition": True,
                        "cell": ("0460", "0001", "5502", "465D"), "idling": False},
    # GTGSM: the serving cell (the last of the seven) with its receive level.
    ("GTGSM", "0508"): {"cell": ("0460", "0000", "560A", "091D", 18)},
    ("GTGSS", "05B2"): {"satellites": 5, "gps_signal": True, "motion": "ignition_on_moving", "moving": True,
                        "ignition": True, "cell": ("0460", "0000", "560A", "60BA")},
    ("GTDOS", "023E"): {"output1": True, "cell": CELL_582B},
    ("GTRMD", "0241"): {"roaming": "unknown_roaming", "cell": CELL_582B},
    ("GTFRI", "24CD"): {
        "external_power_mv": 13501, "mileage_km": 591.8, "hour_meter_s": 32 * 3600 + 7 * 60 + 37, "gsm_rssi": 20,
        "gsm_ber": 0, "satellites": 10, "motion": "ignition_on_moving", "moving": True, "inputs": 0x01,
        "outputs": 0x01, "main_power": False, "output1": True, "ignition": True,
        "cell": ("0460", "0001", "5504", "34B5"), "gps_accuracy": 1, "speed_kmh": 40.6},
}
# Reports that carry no parameter: settings dumps (they go to `config`), version, satellites, PDP.
CARRY_NOTHING = {"GTALM", "GTALC", "GTALS", "GTVER", "GTGSV", "GTRSV", "GTBSV", "GTPDP"}
FIX_TIMED = {"gps_accuracy", "speed_kmh"}

REPORTS = [m for m in (parse(line.rstrip("$")) for line in device_lines()) if isinstance(m, Report)]


@pytest.mark.parametrize("report", REPORTS, ids=[f"{r.type}-{r.count}" for r in REPORTS])
def test_every_vendor_report_gives_its_parameters(report: Report) -> None:
    telemetry = report_telemetry(report)
    if report.type in CARRY_NOTHING:
        assert telemetry == {}
        return
    values = {k: tuple(v.values()) if k == "cell" else v for k, (v, _) in telemetry.items()}
    assert values == EXPECTED[(report.type, report.count)]
    fix = max((p.fix_time for p in report.positions if p.fix_time), default=None)
    for param, (_, at) in telemetry.items():
        # Measured at the fix for what a fix gives, at the send time for everything else.
        assert at == (fix if param in FIX_TIMED else report.sent_at), param


def test_every_expected_line_is_in_the_vendor_examples() -> None:
    assert {(r.type, r.count) for r in REPORTS if r.type not in CARRY_NOTHING} == set(EXPECTED)


def test_a_report_without_send_time_gives_no_telemetry() -> None:
    # Its values have no time of the tracker's: the gateway's clock is not in its time zone.
    report = parse("+RESP:GTCSQ,090302,865083030002554,,23,0,,021C")
    assert report_telemetry(report) == {}


# --- devices.telemetry in MongoDB ---------------------------------------------------------------

T0 = datetime(2026, 11, 24, 8, 0, tzinfo=timezone.utc)


def _fri(at: datetime, *, rssi: int, mileage: float, status: str = "220100", buffered: bool = False) -> Report:
    stamp = at.strftime("%Y%m%d%H%M%S")
    head = "+BUFF" if buffered else "+RESP"
    return parse(f"{head}:GTFRI,090302,865083030004642,,13337,10,1,1,18.6,272,30.8,117.201342,31.855243,{stamp},"
                 f"0460,0001,5504,29CF,00,{mileage},00021:54:10,,,80,{status},{rssi},0,15,{stamp},1854")


def _telemetry(db: Any, imei: str) -> dict[str, Any]:
    return (db[DEVICES].find_one({"_id": imei}) or {}).get("telemetry") or {}


def test_each_parameter_moves_forward_on_its_own(mongo: MongoClient, db_name: str) -> None:
    db = mongo.get_database(db_name, write_concern=durable())
    devices = Devices(db, "gw-test", telemetry_interval_s=0)  # every flush writes
    imei = "865083030004642"
    newer = _fri(T0 + timedelta(minutes=10), rssi=20, mileage=500.0)
    devices.note_report(newer, T0)
    devices.flush()
    stored = _telemetry(db, imei)
    assert stored["gsm_rssi"] == {"value": 20, "at": T0 + timedelta(minutes=10)}
    assert stored["battery_percent"] == {"value": 80, "at": T0 + timedelta(minutes=10)}
    assert stored["ignition"] == {"value": True, "at": T0 + timedelta(minutes=10), "since": T0 + timedelta(minutes=10)}

    # A +BUFF replay of an older report, in the next flush and in the same one: nothing moves back.
    older = _fri(T0 + timedelta(minutes=5), rssi=5, mileage=100.0, status="110000", buffered=True)
    devices.note_report(older, T0)
    devices.flush()
    assert _telemetry(db, imei) == stored
    devices.note_report(_fri(T0 + timedelta(minutes=11), rssi=21, mileage=501.0), T0)
    devices.note_report(_fri(T0 + timedelta(minutes=6), rssi=6, mileage=101.0, status="110000", buffered=True), T0)
    devices.flush()
    stored = _telemetry(db, imei)
    assert stored["gsm_rssi"] == {"value": 21, "at": T0 + timedelta(minutes=11)}
    assert stored["mileage_km"] == {"value": 501.0, "at": T0 + timedelta(minutes=11)}
    # The ignition has been on since the first report that said so.
    assert stored["ignition"] == {"value": True, "at": T0 + timedelta(minutes=11), "since": T0 + timedelta(minutes=10)}

    # A parameter that only an older report carries still takes the older value: each moves on its own.
    bat = parse(f"+BUFF:GTBAT,090302,{imei},,,0,,3.70,,1,{(T0 + timedelta(minutes=1)).strftime('%Y%m%d%H%M%S')},0001")
    devices.note_report(bat, T0)
    devices.flush()
    stored = _telemetry(db, imei)
    assert stored["battery_v"] == {"value": 3.7, "at": T0 + timedelta(minutes=1)}
    assert stored["external_power_mv"] == {"value": 13337, "at": T0 + timedelta(minutes=11)}

    # The ignition goes off: `since` moves to the report that says so.
    off = T0 + timedelta(minutes=12)
    devices.note_report(parse(
        f"+RESP:GTIGF,090302,{imei},,600,0,0.0,24,63.3,117.201525,31.833040,{off.strftime('%Y%m%d%H%M%S')},"
        f"0460,0001,5504,582B,00,,502.0,{off.strftime('%Y%m%d%H%M%S')},0233"), T0)
    devices.flush()
    assert _telemetry(db, imei)["ignition"] == {"value": False, "at": off, "since": off}


def test_fixed_reports_wait_for_the_telemetry_interval_unless_something_changed(mongo: MongoClient,
                                                                               db_name: str) -> None:
    db = mongo.get_database(db_name, write_concern=durable())
    devices = Devices(db, "gw-test", telemetry_interval_s=0.5)
    imei = "865083030004642"

    def written() -> tuple[Any, Any]:
        t = _telemetry(db, imei)
        return t.get("gsm_rssi", {}).get("value"), t.get("ignition", {}).get("value")

    devices.note_report(_fri(T0, rssi=20, mileage=1.0), T0)
    devices.flush()
    assert written() == (20, True)  # the first is written at once
    devices.note_report(_fri(T0 + timedelta(seconds=1), rssi=21, mileage=1.1), T0)
    devices.flush()
    doc = db[DEVICES].find_one({"_id": imei})
    assert written() == (20, True) and doc["telemetry_at"] == T0  # waits: nothing changed
    assert doc["last_seen_at"] == T0  # the rest of the device state does not wait
    time.sleep(0.6)
    devices.flush()  # nothing new arrived, the waiting one is due
    assert written() == (21, True)
    assert db[DEVICES].find_one({"_id": imei})["telemetry_at"] == T0 + timedelta(seconds=1)

    # A changed device status (ignition off) is written at once, and so is any other report.
    devices.note_report(_fri(T0 + timedelta(seconds=2), rssi=22, mileage=1.2, status="110000"), T0)
    devices.flush()
    assert written() == (22, False)
    devices.note_report(parse(f"+RESP:GTCSQ,090302,{imei},,9,0,{(T0 + timedelta(seconds=3)).strftime('%Y%m%d%H%M%S')},"
                              "0002"), T0)
    devices.flush()
    assert written() == (9, False)

    # What waits when the tracker disconnects goes out with the next flush.
    devices.note_report(_fri(T0 + timedelta(seconds=4), rssi=23, mileage=1.3, status="110000"), T0)
    devices.flush()
    assert written() == (9, False)
    devices.disconnected(imei, "no-such-session", T0)
    devices.flush()
    assert written() == (23, False)


def test_since_from_what_the_tracker_had_when_it_connected(mongo: MongoClient, db_name: str) -> None:
    """A connected tracker's `since` is worked out by the gateway from the stored values it read
    at the connection; a new gateway process reads them again and carries on."""
    db = mongo.get_database(db_name, write_concern=durable())
    imei = "865083030004642"

    def ignition() -> dict[str, Any]:
        return _telemetry(db, imei)["ignition"]

    devices = Devices(db, "gw-test", telemetry_interval_s=0)
    devices.connected(imei, "s1", "127.0.0.1:1", T0)
    devices.note_report(_fri(T0 + timedelta(minutes=1), rssi=20, mileage=1.0), T0)
    devices.flush()
    assert ignition() == {"at": T0 + timedelta(minutes=1), "value": True, "since": T0 + timedelta(minutes=1)}
    devices.note_report(_fri(T0 + timedelta(minutes=2), rssi=20, mileage=1.1), T0)
    devices.flush()
    assert ignition()["since"] == T0 + timedelta(minutes=1)

    restarted = Devices(db, "gw-test-2", telemetry_interval_s=0)
    restarted.connected(imei, "s2", "127.0.0.1:2", T0)
    restarted.note_report(_fri(T0 + timedelta(minutes=3), rssi=20, mileage=1.2), T0)
    restarted.flush()
    assert ignition() == {"at": T0 + timedelta(minutes=3), "value": True, "since": T0 + timedelta(minutes=1)}
    restarted.note_report(_fri(T0 + timedelta(minutes=4), rssi=20, mileage=1.3, status="110000"), T0)
    restarted.flush()
    restarted.note_report(_fri(T0 + timedelta(minutes=5), rssi=20, mileage=1.4, status="110000"), T0)
    restarted.flush()
    assert ignition() == {"at": T0 + timedelta(minutes=5), "value": False, "since": T0 + timedelta(minutes=4)}
    motion = _telemetry(db, imei)["motion"]
    assert (motion["value"], motion["since"]) == ("ignition_off_rest", T0 + timedelta(minutes=4))

    # The older gateway, which last wrote minute 2, flushes a late report of minute 2.5: the guard
    # on telemetry_at keeps the newer values.
    devices.note_report(_fri(T0 + timedelta(minutes=2, seconds=30), rssi=5, mileage=1.15), T0)
    devices.flush()
    assert ignition()["value"] is False and _telemetry(db, imei)["gsm_rssi"]["at"] == T0 + timedelta(minutes=5)
