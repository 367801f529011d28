"""What `devices` says about each tracker, end to end (a real gateway process, a real mongod, real
sockets): `telemetry` from the vendor's own report lines, and the configuration shadow `config`
from acknowledged commands and from the simulator's settings dumps (GTALM / GTALS)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import gevent

from gv50_gevent.protocol import Report, parse
from gv50_gevent.protocol.config_blocks import block_name, read_block
from gv50_gevent.simulator import Behaviour, SimTracker
from gv50_gevent.simulator.tracker import DEFAULT_BEHAVIOUR
from tests.data import device_lines
from tests.test_telemetry import CARRY_NOTHING, EXPECTED, FIX_TIMED

VERSION = "090302"
GTALM = [line for line in device_lines() if line.startswith("+RESP:GTALM")]


def gwait(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """wait_for that lets the simulator's greenlets run while it waits."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        gevent.sleep(0.05)


# --- telemetry --------------------------------------------------------------------------------

def test_vendor_report_lines_set_each_trackers_telemetry(start_gateway) -> None:
    """Every V4.01 example report, sent by its own IMEI over a real connection: each tracker's
    telemetry holds, for every parameter, the value of the newest report that carries it."""
    gw = start_gateway(TELEMETRY_INTERVAL_S="0")  # every fixed report's telemetry written at once
    lines: dict[str, list[str]] = {}
    expected: dict[str, dict[str, tuple[Any, datetime]]] = {}
    for line in device_lines():
        report = parse(line.rstrip("$"))
        if not isinstance(report, Report):
            continue
        lines.setdefault(report.imei, []).append(line if line.endswith("$") else line + "$")
        if report.type in CARRY_NOTHING:
            continue
        fix = max((p.fix_time for p in report.positions if p.fix_time), default=None)
        held = expected.setdefault(report.imei, {})
        for param, value in EXPECTED[(report.type, report.count)].items():
            at = fix if param in FIX_TIMED else report.sent_at
            assert at is not None
            if param not in held or at >= held[param][1]:
                held[param] = (value, at)
    assert len(expected) >= 4
    for imei, sent in lines.items():
        with gw.connect() as device:
            device.send("".join(sent))
            device.send_line(f"+ACK:GTHBD,{VERSION},{imei},,20240101000000,FFFF")
            device.read_until(b"+SACK:GTHBD")  # the heartbeat comes after every report of this connection

    def telemetry(imei: str) -> dict[str, Any]:
        doc = gw.db.devices.find_one({"_id": imei}) or {}
        return doc.get("telemetry") or {}

    for imei, params in expected.items():
        stored = gwait(lambda imei=imei, params=params: (t := telemetry(imei)) and set(params) <= set(t) and t,
                       what=f"{imei} telemetry")
        assert set(stored) == set(params), imei
        for param, (value, at) in params.items():
            got = stored[param]
            if param == "cell":
                got = {**got, "value": tuple(got["value"].values())}
            assert (param, got["value"], got["at"]) == (param, value, at), imei


# --- configuration shadow ---------------------------------------------------------------------

def insert(gw: Any, imei: str, type_: str, params: dict[str, Any] | None = None) -> Any:
    doc: dict[str, Any] = {"imei": imei, "type": type_}
    if params is not None:
        doc["params"] = params
    return gw.db.commands.insert_one(doc).inserted_id


def acknowledged(gw: Any, command_id: Any) -> dict[str, Any]:
    return gwait(lambda: (d := gw.db.commands.find_one({"_id": command_id})) and d.get("status") == "acknowledged" and d,
                 what=f"command {command_id} acknowledged")


def config_of(gw: Any, imei: str) -> dict[str, Any]:
    return (gw.db.devices.find_one({"_id": imei}) or {}).get("config") or {}


def tracker(gw: Any, imei: str, behaviour: Behaviour = DEFAULT_BEHAVIOUR) -> SimTracker:
    t = SimTracker(imei, behaviour, version=VERSION)
    t.load_settings(GTALM)
    t.connect("127.0.0.1", gw.port)
    gwait(lambda: t.hbd_replies, what="the gateway's first heartbeat reply")
    return t


def _without_origin(block: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in block.items() if k not in ("source", "at", "received_at")}


def test_get_config_reads_the_whole_dump_and_one_block(start_gateway) -> None:
    gw = start_gateway()
    imei = "865083030002554"
    t = tracker(gw, imei)
    try:
        command = insert(gw, imei, "get_config")
        done = acknowledged(gw, command)
        assert t.commands[-1][2] == f"AT+GTRTO=gv50,2,,,,,,{done['serial']}$"
        config = gwait(lambda: (c := config_of(gw, imei)) and "avs" in c and "bsi" in c and c, what="all blocks")
        # The four packets the simulator sent are the vendor's own, to the last value.
        assert gwait(lambda: gw.db.messages.count_documents({"imei": imei, "raw": {"$regex": "^\\+RESP:GTALM"}}) == 4,
                     what="four GTALM packets archived")
        sent = [m["raw"] for m in gw.db.messages.find({"imei": imei, "raw": {"$regex": "^\\+RESP:GTALM"}})]
        assert sorted(r.rsplit(",", 2)[0] for r in sent) == sorted(v.rsplit(",", 2)[0] for v in GTALM)
        last = parse(max(sent, key=lambda r: r.rsplit(",", 1)[1]))

        assert config["fri"] == {
            "mode": 0, "discard_no_fix": True, "period_enable": True, "start_time": "0000", "end_time": "0000",
            "send_interval_s": 30, "distance_m": 1000, "mileage_m": 1000, "corner_deg": 0, "igf_interval_s": 600,
            "source": "report", "at": last.sent_at, "received_at": config["fri"]["received_at"],
        }
        assert _without_origin(config["sri"]) == {
            "report_mode": 4, "buffer_mode": 1, "host": "220.178.67.210", "port": 10041, "backup_host": "0.0.0.0",
            "backup_port": 0, "heartbeat_min": 30, "sack_enable": True, "protocol_format": 0, "sms_ack_enable": True,
            "sms_gateway": None, "special_sack_enable": None,
        }
        assert _without_origin(config["cfg"]) == {
            "device_name": "GV50A02V14", "odo_enable": True, "odo_mileage_km": 0.1, "report_mask": "003F",
            "power_saving": 0, "event_mask": "3D0F", "led_on": 1, "info_report_enable": True,
            "info_report_interval_s": 300, "location_by_call": 1, "agps_mode": False, "gsm_report": "0017",
            "gps_lost_time_min": 0,
        }
        assert "gv50" not in repr(config["cfg"]).lower().replace("gv50a02v14", "")  # the device password is not kept
        assert _without_origin(config["tma"]) == {"time_zone": "+0800", "daylight_saving": False}
        assert _without_origin(config["hrm"]) == {
            "ack_mask": "6F", "rsp_mask": "FE17BF", "evt_mask": "FE17BF", "inf_mask": "F77D", "hbd_mask": "EF"}
        assert _without_origin(config["vvs"]) == {"ignition_on_mv": 13500, "offset_mv": 600, "debounce_s": 10}
        assert len(config["geo"]["entries"]) == 20 and config["geo"]["entries"][19]["geo_id"] == 19
        # Every block of the dump, each as the vendor's values read by name.
        dumped = {tag: values for line in GTALM for tag, values in parse(line.rstrip("$")).blocks().items()}
        assert {block_name(tag) for tag in dumped} <= set(config)
        for tag, values in dumped.items():
            block = config[block_name(tag)]
            assert block["source"] == "report" and block["at"] == last.sent_at
            assert _without_origin(block) == read_block(tag, values), tag
        assert "server" not in config and "apn" not in config  # those stay what commands set (CONTRACT.md)

        # One block, GTALS: the tracker's FRI changed meanwhile (by SMS, say).
        values = list(t.settings["FRI"])
        values[7] = "120"
        t.settings["FRI"] = tuple(values)
        one = insert(gw, imei, "get_config", {"command": "FRI"})
        done = acknowledged(gw, one)
        assert t.commands[-1][2] == f"AT+GTRTO=gv50,2,FRI,,,,,{done['serial']}$"
        fri = gwait(lambda: (c := config_of(gw, imei)["fri"]) and c["send_interval_s"] == 120 and c, what="GTALS")
        assert fri["source"] == "report" and fri["at"] >= last.sent_at
        answered = gwait(lambda: (d := gw.db.commands.find_one({"_id": one})) and "answer" in d and d, what="answer")
        assert answered["answer"]["report"] == "GTALS"
        assert gw.db.events.count_documents({"imei": imei, "type": "config_mismatch"}) == 0
    finally:
        t.disconnect()


def test_acknowledged_report_interval_then_a_dump_that_agrees_or_contradicts(start_gateway) -> None:
    gw = start_gateway()
    takes, ignores = "865083030007001", "865083030007002"
    good, bad = tracker(gw, takes), tracker(gw, ignores, Behaviour(keep_settings=True))
    try:
        for imei in (takes, ignores):
            command = insert(gw, imei, "set_report_interval", {"mode": 1, "send_interval_s": 60, "discard_no_fix": False})
            done = acknowledged(gw, command)
            fri = gwait(lambda imei=imei: config_of(gw, imei).get("fri"), what="config.fri")
            assert fri == {
                "mode": 1, "discard_no_fix": False, "send_interval_s": 60, "source": "command",
                "at": done["acknowledged_at"],
                "commanded": {"mode": 1, "discard_no_fix": False, "send_interval_s": 60},
            }
        assert good.settings["FRI"][:8] == ("1", "0", "", "1", "0000", "0000", "", "60")
        assert bad.settings["FRI"][:8] == ("0", "1", "", "1", "0000", "0000", "", "30")

        for imei in (takes, ignores):
            acknowledged(gw, insert(gw, imei, "get_config", {"command": "FRI"}))
            gwait(lambda imei=imei: config_of(gw, imei)["fri"]["source"] == "report", what="the reported FRI")

        fri = config_of(gw, takes)["fri"]
        assert (fri["mode"], fri["discard_no_fix"], fri["send_interval_s"]) == (1, False, 60)
        assert "commanded" not in fri
        assert gw.db.events.count_documents({"imei": takes, "type": "config_mismatch"}) == 0

        fri = config_of(gw, ignores)["fri"]
        assert (fri["mode"], fri["discard_no_fix"], fri["send_interval_s"]) == (0, True, 30)
        event = gwait(lambda: gw.db.events.find_one({"imei": ignores, "type": "config_mismatch"}), what="mismatch")
        assert event["block"] == "fri" and event["settings_report"] == "GTALS" and event["level"] == "warning"
        assert event["fields"] == [
            {"field": "mode", "commanded": 1, "reported": 0},
            {"field": "discard_no_fix", "commanded": False, "reported": True},
            {"field": "send_interval_s", "commanded": 60, "reported": 30},
        ]
        assert event["occurred_at"] == fri["at"] and event["commanded_at"] is not None
        # The dump settled it: the next one, the same, says nothing new.
        acknowledged(gw, insert(gw, ignores, "get_config", {"command": "FRI"}))
        gwait(lambda: gw.db.commands.count_documents({"imei": ignores, "answer": {"$exists": True}}) == 2,
              what="second answer")
        gwait(lambda: config_of(gw, ignores)["fri"]["received_at"] > fri["received_at"], what="the second dump")
        # A graceful stop lets the settings writes under way finish (a mismatch event is written
        # after the dump's blocks): whatever the second dump recorded is stored by then.
        assert gw.terminate() == 0
        assert gw.db.events.count_documents({"imei": ignores, "type": "config_mismatch"}) == 1
    finally:
        good.disconnect()
        bad.disconnect()


def test_a_dump_contradicting_two_blocks_records_each_once(mongo: Any, db_name: str) -> None:
    """In-process, against the real mongod: two blocks that differ give two events, and the same
    dump applied again (a resent packet) records nothing more."""
    from gv50_gevent.protocol.commands import ack_effects
    from gv50_gevent.storage.database import durable
    from gv50_gevent.storage.devices import Devices

    db = mongo.get_database(db_name, write_concern=durable())
    devices = Devices(db, "gw-test")
    imei = "865083030002554"
    at = datetime(2026, 11, 30, 9, 0, tzinfo=timezone.utc)
    for type_, params in (("set_report_interval", {"mode": 1, "send_interval_s": 60}),
                          ("raw", {"command": "AT+GTVVS=gv50,13000,500,10,,,000B$"})):
        db.devices.update_one({"_id": imei}, {"$set": ack_effects(type_, params, at)}, upsert=True)
    dump = [parse(line.rstrip("$")) for line in GTALM]
    events = devices.config.apply(imei, dump, at)  # type: ignore[arg-type]
    assert [(e["block"], [d["field"] for d in e["fields"]]) for e in events] == [
        ("fri", ["mode", "send_interval_s"]), ("vvs", ["ignition_on_mv", "offset_mv"])]
    assert db.events.count_documents({"imei": imei, "type": "config_mismatch"}) == 2
    config = db.devices.find_one({"_id": imei})["config"]
    assert (config["vvs"]["ignition_on_mv"], config["vvs"]["source"]) == (13500, "report")
    assert devices.config.apply(imei, dump, at) == []  # settled: nothing commanded any more
    assert db.events.count_documents({"imei": imei, "type": "config_mismatch"}) == 2
