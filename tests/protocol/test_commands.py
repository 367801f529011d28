"""Commands: every type encoded field-exact (the V4.01 examples where they exist), every parameter
refused when hostile, and `decode_command` reading back our lines and the vendor's."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

import pytest
from pydantic import ValidationError

from gv50_gevent.protocol.command_params import Params
from gv50_gevent.protocol.commands import (
    COMMAND_TYPES, COMMANDS, MIN_SLOT_COUNTS, SLOT_COUNTS, P, ack_effects, ack_type, answer_type, config_changes,
    decode_command, encode_command, validate_command,
)
from gv50_gevent.protocol.config_blocks import command_slot_names
from gv50_gevent.protocol.errors import CommandError, ProtocolError
from tests.data import vendor_commands

VENDOR_COMMANDS = vendor_commands()

SRI_EXAMPLE_PARAMS = {
    "report_mode": 3, "buffer_mode": 1, "port": 7011, "backup_host": "116.226.45.229",
    "backup_port": 7012, "sms_gateway": "+8613812341234", "heartbeat_min": 15, "sack_enable": True,
}

# (type, params, serial, exact line). V4.01 examples are marked with their page.
ENCODED: list[tuple[str, dict[str, Any] | None, str, str]] = [
    # p. 9
    ("set_apn", {"apn": "cmnet"}, "0000", "AT+GTBSI=gv50,cmnet,,,,,,,0000$"),
    ("set_apn", {"apn": "internet.example", "user": "fleet", "password": "s3cret"}, "1A2B",
     "AT+GTBSI=gv50,internet.example,fleet,s3cret,,,,,1A2B$"),
    # p. 11, all four
    ("set_server", {**SRI_EXAMPLE_PARAMS, "host": "116.226.44.17"}, "0001",
     "AT+GTSRI=gv50,3,,1,116.226.44.17,7011,116.226.45.229,7012,+8613812341234,15,1,,,,,0001$"),
    ("set_server", {**SRI_EXAMPLE_PARAMS, "host": "some.host.name"}, "0001",
     "AT+GTSRI=gv50,3,,1,some.host.name,7011,116.226.45.229,7012,+8613812341234,15,1,,,,,0001$"),
    ("set_server", {**SRI_EXAMPLE_PARAMS, "report_mode": 8, "host": "116.226.44.17:7010/GV50/message"}, "0001",
     "AT+GTSRI=gv50,8,,1,116.226.44.17:7010/GV50/message,7011,116.226.45.229,7012,+8613812341234,15,1,,,,,0001$"),
    ("set_server", {**SRI_EXAMPLE_PARAMS, "report_mode": 8, "host": "some.host.name:7011/GV50/message"}, "0001",
     "AT+GTSRI=gv50,8,,1,some.host.name:7011/GV50/message,7011,116.226.45.229,7012,+8613812341234,15,1,,,,,0001$"),
    ("set_server", {"host": "gw.example.com", "port": 5000}, "00FF",
     "AT+GTSRI=gv50,3,,,gw.example.com,5000,,,,,,,,,,00FF$"),
    ("set_server", {"host": "10.0.0.1", "port": 5000, "heartbeat_min": 0, "sack_enable": False, "buffer_mode": 0},
     "00FE", "AT+GTSRI=gv50,3,,0,10.0.0.1,5000,,,,0,0,,,,,00FE$"),
    # Protocol Format, slot 11: 1 = HEX reports, 0 = back to ASCII.
    ("set_server", {"host": "10.0.0.1", "port": 5000, "protocol_format": 1}, "00FD",
     "AT+GTSRI=gv50,3,,,10.0.0.1,5000,,,,,,1,,,,00FD$"),
    ("set_server", {"host": "10.0.0.1", "port": 5000, "protocol_format": 0}, "00FC",
     "AT+GTSRI=gv50,3,,,10.0.0.1,5000,,,,,,0,,,,00FC$"),
    # p. 135-136 (spec 3.30): 13 fields, the masks in slots 3-7. The defaults, then the vendor
    # example's masks (its line has 12 fields, see test_vendor_hrm_example_has_our_masks).
    ("set_hex_masks", {"ack_mask": "6F", "rsp_mask": "FE17BF", "evt_mask": "FE17BF", "inf_mask": "F77D",
                       "hbd_mask": "EF"}, "0018", "AT+GTHRM=gv50,,,6F,FE17BF,FE17BF,F77D,EF,,,,,0018$"),
    ("set_hex_masks", {"ack_mask": "ef", "rsp_mask": "FFFFFFFF", "evt_mask": "FFFFFFFF", "inf_mask": "FFFF",
                       "hbd_mask": "FF"}, "0018", "AT+GTHRM=gv50,,,EF,FFFFFFFF,FFFFFFFF,FFFF,FF,,,,,0018$"),
    ("set_hex_masks", {"rsp_mask": "4FE17BF"}, "0019", "AT+GTHRM=gv50,,,,4FE17BF,,,,,,,,0019$"),
    # p. 27-28, all five
    ("set_report_interval", {"mode": 0}, "0009", "AT+GTFRI=gv50,0,,,,,,,,,,,,,,,,,0009$"),
    ("set_report_interval", {"mode": 1, "discard_no_fix": True, "period_enable": True, "start_time": "1000",
                             "end_time": "2300", "send_interval_s": 30, "igf_interval_s": 600}, "0009",
     "AT+GTFRI=gv50,1,1,,1,1000,2300,,30,,,,,600,,,,,0009$"),
    ("set_report_interval", {"mode": 2, "discard_no_fix": 1, "period_enable": 1, "start_time": "1000",
                             "end_time": "2300", "distance_m": 500}, "0009",
     "AT+GTFRI=gv50,2,1,,1,1000,2300,,,500,,,,,,,,,0009$"),
    ("set_report_interval", {"mode": 3, "discard_no_fix": True, "period_enable": True, "start_time": "1000",
                             "end_time": "2300", "mileage_m": 1000}, "0009",
     "AT+GTFRI=gv50,3,1,,1,1000,2300,,,,1000,,,,,,,,0009$"),
    ("set_report_interval", {"mode": 4, "discard_no_fix": True, "period_enable": True, "start_time": "1000",
                             "end_time": "2300", "send_interval_s": 60, "mileage_m": 300}, "0009",
     "AT+GTFRI=gv50,4,1,,1,1000,2300,,60,,300,,,,,,,,0009$"),
    ("set_report_interval", {"send_interval_s": 15, "corner_deg": 30, "discard_no_fix": False}, "0B0B",
     "AT+GTFRI=gv50,1,0,,,,,,15,,,,30,,,,,,0B0B$"),
    # p. 47-48: wave shape 1 (duration 0, toggles 0) holds the level; DOS report on.
    ("block", None, "0A01", "AT+GTOUT=gv50,1,0,0,,,,1,,,,,,,0A01$"),
    ("unblock", {}, "0A02", "AT+GTOUT=gv50,0,0,0,,,,1,,,,,,,0A02$"),
    # p. 56-57
    ("get_info", None, "0015", "AT+GTRTO=gv50,A,,,,,,0015$"),
    ("locate", None, "0016", "AT+GTRTO=gv50,1,,,,,,0016$"),
    ("reboot", None, "0017", "AT+GTRTO=gv50,3,,,,,,0017$"),
    ("get_version", None, "0018", "AT+GTRTO=gv50,8,,,,,,0018$"),
    # p. 56: READ one command's settings (GTALS), all of them (GTALM); V4.01 asks for TMA as TMZ.
    ("get_config", {"command": "FRI"}, "0015", "AT+GTRTO=gv50,2,FRI,,,,,0015$"),
    ("get_config", None, "0019", "AT+GTRTO=gv50,2,,,,,,0019$"),
    ("get_config", {"command": "tma"}, "001A", "AT+GTRTO=gv50,2,TMZ,,,,,001A$"),
    # raw: the operator's placeholder serial is replaced; V4.01 p. 56, 59 lines come out exactly.
    ("raw", {"command": "AT+GTRTO=gv50,2,FRI,,,,,FFFF$"}, "0015", "AT+GTRTO=gv50,2,FRI,,,,,0015$"),
    ("raw", {"command": "AT+GTRTO=gv50,2,0000000000000003,,,,,0000$"}, "0015",
     "AT+GTRTO=gv50,2,0000000000000003,,,,,0015$"),
    ("raw", {"command": "AT+GTRTO=gv50,4,BUF,,,,,1234$"}, "000f", "AT+GTRTO=gv50,4,BUF,,,,,000F$"),
    ("raw", {"command": "AT+GTTMA= gv50,-,3,30,0,20090917203500,,,,,FFFF$"}, "0011",
     "AT+GTTMA=gv50,-,3,30,0,20090917203500,,,,,0011$"),
]


@pytest.mark.parametrize(("type_", "params", "serial", "expected"), ENCODED, ids=[e[3] for e in ENCODED])
def test_encode_is_field_exact(type_: str, params: dict[str, Any] | None, serial: str, expected: str) -> None:
    out = encode_command(type_, params, password="gv50", serial=serial)
    assert out == expected.encode("ascii")
    line = decode_command(out)
    assert line.slot_count == SLOT_COUNTS[line.type[2:]]
    assert line.render() == expected
    assert line.serial == serial.upper()
    assert ack_type(type_, params) == line.type


def test_every_type_has_an_exact_encoding() -> None:
    assert {e[0] for e in ENCODED} == COMMAND_TYPES


def test_vendor_out_example_has_our_shape() -> None:
    # V4.01's own AT+GTOUT example prints a stray blank and leaves duration/toggles empty; ours
    # fills them with 0 explicitly. Status, DOS report and slot count are the same.
    vendor = decode_command("AT+GTOUT=gv50,1,,, ,,,1,,,,,,,0004$")
    ours = decode_command(encode_command("block", None, password="gv50", serial="0004"))
    assert ours.slot_count == vendor.slot_count == 15
    assert (ours.fields[0], ours.fields[6]) == (vendor.fields[0], vendor.fields[6]) == ("1", "1")


SLOTS = {"block": 15, "unblock": 15, "set_server": 16, "set_apn": 9, "set_report_interval": 19,
         "locate": 8, "reboot": 8, "get_info": 8, "get_version": 8, "get_config": 8, "set_hex_masks": 13}


@pytest.mark.parametrize("type_", sorted(SLOTS))
def test_slot_counts_follow_v401(type_: str) -> None:
    spec = COMMANDS[type_]
    assert len(spec.slots) + 2 == SLOTS[type_] == SLOT_COUNTS[spec.at[2:]]
    # Each parameter fills exactly one slot, and every slot parameter is a model field.
    names = [s.name for s in spec.slots if isinstance(s, P)]
    assert sorted(names) == sorted(spec.model.model_fields)


def test_vendor_examples_agree_with_slot_table() -> None:
    for raw in VENDOR_COMMANDS:
        line = decode_command(raw)
        name = line.type[2:]
        if name == "HRM":  # V4.01's own example has 12 fields against its table's 13
            assert line.slot_count == 12
        elif name in MIN_SLOT_COUNTS:
            assert line.slot_count >= MIN_SLOT_COUNTS[name]
        else:
            assert line.slot_count == SLOT_COUNTS[name], raw


def test_vendor_hrm_example_has_our_masks() -> None:
    """V4.01's AT+GTHRM example has one reserved slot before the masks and a sixth value after
    them (12 fields, spec 3.30 [DOC-ERR]); its masks in their order are what we send in 13."""
    vendor = decode_command(next(line for line in VENDOR_COMMANDS if line.startswith("AT+GTHRM=")))
    assert vendor.slot_count == 12 and vendor.serial == "0018"
    ack, rsp, evt, inf, hbd = vendor.fields[1:6]
    ours = decode_command(encode_command("set_hex_masks", {"ack_mask": ack, "rsp_mask": rsp, "evt_mask": evt,
                                                           "inf_mask": inf, "hbd_mask": hbd},
                                         password="gv50", serial=vendor.serial))
    assert ours.slot_count == SLOT_COUNTS["HRM"] == 13
    assert ours.fields[2:7] == vendor.fields[1:6] == ("EF", "FFFFFFFF", "FFFFFFFF", "FFFF", "FF")


def test_hex_masks_need_at_least_one_mask() -> None:
    with pytest.raises(CommandError) as info:
        validate_command("set_hex_masks", {})
    assert info.value.field == "params" and "at least one" in info.value.reason


# --- hostile values --------------------------------------------------------------------------

BAD_CHARS = [",", "$", "\r", "\n", "\x00", "\x7f", "é"]
WRONG_TYPES: list[Any] = [[1], {"a": 1}, 1.5]

# Per type: a valid base, and for each parameter its out-of-range values.
BASE: dict[str, dict[str, Any]] = {
    "set_server": {"host": "gw.example.com", "port": 5000, "backup_host": "10.0.0.2", "backup_port": 5001,
                   "report_mode": 3, "buffer_mode": 1, "heartbeat_min": 5, "sack_enable": True,
                   "sms_gateway": "+15550100", "protocol_format": 1},
    "set_hex_masks": {"ack_mask": "6F", "rsp_mask": "FE17BF", "evt_mask": "FE17BF", "inf_mask": "F77D",
                      "hbd_mask": "EF"},
    "set_apn": {"apn": "internet", "user": "fleet", "password": "secret"},
    "set_report_interval": {"mode": 5, "discard_no_fix": True, "period_enable": False, "start_time": "0000",
                            "end_time": "2359", "send_interval_s": 60, "distance_m": 1000, "mileage_m": 1000,
                            "corner_deg": 15, "igf_interval_s": 600},
    "raw": {"command": "AT+GTRTO=gv50,8,,,,,,FFFF$"},
    "get_config": {"command": "FRI"},
}
OUT_OF_RANGE: dict[str, dict[str, list[Any]]] = {
    "set_server": {
        "host": ["", "h" * 61, "bad_host!", "-lead.example", "1.2.3.256", "a:1/b"],
        "port": [-1, 65536], "backup_host": ["gw.example.com", "1.2.3", "300.1.1.1"], "backup_port": [-1, 65536],
        "report_mode": [-1, 7, 9], "buffer_mode": [-1, 3], "heartbeat_min": [-1, 1, 361],
        "sack_enable": [2, -1, "yes"], "sms_gateway": ["12a4", "+", "1" * 21, "++1"],
        "protocol_format": [-1, 2, "hex"],
    },
    "set_hex_masks": {
        "ack_mask": ["", "100", "G0", " 6F", "0x6F"], "rsp_mask": ["", "1FFFFFFFF", "FE17BG"],
        "evt_mask": ["", "123456789", "-1"], "inf_mask": ["", "F77D0000F", "F77D "], "hbd_mask": ["", "EFF", "E F"],
    },
    "set_apn": {"apn": ["", "a" * 41, "my apn", "a/b"], "user": ["u" * 31, " lead"], "password": ["p" * 31, "trail "]},
    "set_report_interval": {
        "mode": [-1, 6], "discard_no_fix": [2, "1"], "period_enable": [2, "true"], "start_time": ["2400", "960", "12:00"],
        "end_time": ["0060", "23590"], "send_interval_s": [4, 86401], "distance_m": [49, 65536],
        "mileage_m": [49, 65536], "corner_deg": [-1, 181], "igf_interval_s": [1, 4, 86401],
    },
    "get_config": {"command": ["XYZ", "FR", "FRIS", "RTO", "QSS", " FRI"]},
    "raw": {"command": ["AT+GTXYZ=gv50,FFFF$", "AT+GTRTO=gv50,8,,,,,FFFF$", "AT+GTRTO=gv50,8,,,,,,,FFFF$",
                        "AT+GTRTO=gv50,8,,,,,,FFF$", "AT+GTRTO=gv,8,,,,,,FFFF$", "AT+GTRTO=gv50,8,,,,,,FFFF",
                        "AT+gtrto=gv50,8,,,,,,FFFF$", "AT+GTRTO gv50,8,,,,,,FFFF$",
                        "AT+GTCMD=gv50,1,1,AT+GTRTO=gv50,0,,,,,,000B$,,,,,0005$",
                        "AT+GTWLT=gv50,1,1,FFFF$", "AT+GTRTO=gv50,8,,,,,,FFFF$" + "x" * 1024]},
}


def _hostile(type_: str, name: str) -> list[Any]:
    valid = BASE[type_][name]
    values: list[Any] = list(OUT_OF_RANGE[type_][name]) + WRONG_TYPES
    if isinstance(valid, str):
        # The bad character inside an otherwise valid value, and alone.
        at = len(valid) - 1 if valid.endswith("$") else len(valid)
        values += [valid[:at] + ch + valid[at:] for ch in BAD_CHARS] + BAD_CHARS + [7, True]
    else:
        values += BAD_CHARS + [str(valid)]
        if not isinstance(valid, bool):
            values += [True]
    return values


HOSTILE = [(t, n, v) for t in sorted(BASE) for n in BASE[t] for v in _hostile(t, n)]


def test_hostile_cases_cover_every_param() -> None:
    for type_, spec in COMMANDS.items():
        assert set(BASE.get(type_, {})) == set(spec.model.model_fields), type_
        assert set(OUT_OF_RANGE.get(type_, {})) == set(spec.model.model_fields), type_


@pytest.mark.parametrize("type_", sorted(BASE))
def test_base_params_are_valid(type_: str) -> None:
    encode_command(type_, BASE[type_], password="gv50", serial="0001")


@pytest.mark.parametrize(("type_", "name", "value"), HOSTILE, ids=[f"{t}.{n}={v!r}" for t, n, v in HOSTILE])
def test_hostile_value_is_refused_naming_its_field(type_: str, name: str, value: Any) -> None:
    params = {**BASE[type_], name: value}
    for call in (lambda: validate_command(type_, params),
                 lambda: encode_command(type_, params, password="gv50", serial="0001"),
                 lambda: ack_effects(type_, params)):
        with pytest.raises(CommandError) as info:
            call()
        assert info.value.field == name
        assert info.value.reason and isinstance(info.value.reason, str)


@pytest.mark.parametrize("type_", sorted(COMMAND_TYPES))
def test_extra_params_are_refused(type_: str) -> None:
    with pytest.raises(CommandError) as info:
        validate_command(type_, {**BASE.get(type_, {}), "bogus": 1})
    assert info.value.field == "bogus"


@pytest.mark.parametrize(("type_", "missing"), [("set_server", "host"), ("set_server", "port"),
                                                ("set_apn", "apn"), ("raw", "command")])
def test_required_params(type_: str, missing: str) -> None:
    params = {k: v for k, v in BASE[type_].items() if k != missing}
    with pytest.raises(CommandError) as info:
        validate_command(type_, params)
    assert (info.value.field, info.value.reason) == (missing, "is required")


@pytest.mark.parametrize(("mode", "needed"), [(1, "send_interval_s"), (2, "distance_m"), (3, "mileage_m"),
                                              (4, "send_interval_s"), (4, "mileage_m"), (5, "mileage_m")])
def test_report_mode_needs_its_parameters(mode: int, needed: str) -> None:
    params = {k: v for k, v in BASE["set_report_interval"].items() if k != needed} | {"mode": mode}
    with pytest.raises(CommandError) as info:
        validate_command("set_report_interval", params)
    assert info.value.field == needed


def test_host_port_pairs_only_in_http_mode() -> None:
    with pytest.raises(CommandError) as info:
        validate_command("set_server", {"host": "gw.example.com:8080/x", "port": 1})
    assert info.value.field == "host"
    with pytest.raises(CommandError):
        validate_command("set_server", {"report_mode": 8, "host": "gw.example.com:99999", "port": 1})


@pytest.mark.parametrize("type_", ["reboot!", "", "BLOCK", None, 3])
def test_unknown_type_is_refused(type_: Any) -> None:
    for call in (lambda: validate_command(type_, None), lambda: answer_type(type_),
                 lambda: encode_command(type_, None, password="gv50", serial="0001")):
        with pytest.raises(CommandError) as info:
            call()
        assert info.value.field == "type"


@pytest.mark.parametrize("params", [[("host", "x")], "host=x", 5])
def test_params_must_be_an_object(params: Any) -> None:
    with pytest.raises(CommandError) as info:
        validate_command("set_server", params)
    assert info.value.field == "params"


@pytest.mark.parametrize("password", ["gv5", "gv50123", "gv5,", "gv5$", "gv 5", "gv50\r", "gvé0", "", None])
def test_device_password_is_checked(password: Any) -> None:
    with pytest.raises(CommandError) as info:
        encode_command("reboot", None, password=password, serial="0001")
    assert info.value.field == "device_password"


@pytest.mark.parametrize("serial", ["FFF", "FFFFF", "GGGG", "0,01", "000$", "", None, 1])
def test_serial_is_checked(serial: Any) -> None:
    with pytest.raises(CommandError) as info:
        encode_command("reboot", None, password="gv50", serial=serial)
    assert info.value.field == "serial"


def test_other_passwords_are_used() -> None:
    assert encode_command("reboot", None, password="Ab12Z9", serial="beef") == b"AT+GTRTO=Ab12Z9,3,,,,,,BEEF$"


# --- answers, ACKs and effects ---------------------------------------------------------------

def test_ack_and_answer_types() -> None:
    assert {t: ack_type(t, BASE.get(t)) for t in sorted(COMMAND_TYPES)} == {
        "block": "GTOUT", "unblock": "GTOUT", "set_server": "GTSRI", "set_apn": "GTBSI",
        "set_report_interval": "GTFRI", "locate": "GTRTO", "reboot": "GTRTO", "get_info": "GTRTO",
        "get_version": "GTRTO", "get_config": "GTRTO", "raw": "GTRTO", "set_hex_masks": "GTHRM",
    }
    assert ack_type("raw", {"command": "AT+GTBSI=gv50,cmnet,,,,,,,0000$"}) == "GTBSI"
    assert {t: answer_type(t) for t in sorted(COMMAND_TYPES)} == {
        "block": None, "unblock": None, "set_server": None, "set_apn": None, "set_report_interval": None,
        "locate": "GTRTL", "reboot": None, "get_info": "GTIOS", "get_version": "GTVER", "get_config": "GTALM",
        "raw": None, "set_hex_masks": None,
    }
    assert answer_type("get_config", {"command": "SRI"}) == "GTALS"


def _shadow(block: str, fields: dict[str, Any], at: Any = None) -> dict[str, Any]:
    """The `config.<block>` part of ack_effects: the fields, the same under `commanded`, the source."""
    out = {f"config.{block}.{k}": v for k, v in fields.items()}
    out |= {f"config.{block}.commanded.{k}": v for k, v in fields.items()}
    out[f"config.{block}.source"] = "command"
    if at is not None:
        out[f"config.{block}.at"] = at
    return out


def test_ack_effects() -> None:
    out = {"output1_status": True, "duration": 0, "toggle_times": 0, "dos_report": 1}
    assert ack_effects("block", None) == {"blocked": True, **_shadow("out", out)}
    assert ack_effects("unblock", {}) == {"blocked": False, **_shadow("out", {**out, "output1_status": False})}
    assert ack_effects("set_server", {"host": "gw.example.com", "port": 5000}) == {
        "config.server": {"report_mode": 3, "host": "gw.example.com", "port": 5000},
        **_shadow("sri", {"report_mode": 3, "host": "gw.example.com", "port": 5000})}
    server = {"report_mode": 3, "buffer_mode": 1, "host": "gw.example.com", "port": 5000,
              "backup_host": "10.0.0.2", "backup_port": 5001, "sms_gateway": "+15550100", "heartbeat_min": 5,
              "protocol_format": 1}
    assert ack_effects("set_server", BASE["set_server"]) == {
        "config.server": server, "sack_enable": True, **_shadow("sri", {**server, "sack_enable": True})}
    assert ack_effects("set_hex_masks", {"rsp_mask": "4fe17bf", "hbd_mask": "EF"}) == {
        "config.hex_masks": {"rsp_mask": "4FE17BF", "hbd_mask": "EF"},
        **_shadow("hrm", {"rsp_mask": "4FE17BF", "hbd_mask": "EF"})}
    apn = ack_effects("set_apn", BASE["set_apn"])
    assert apn == {"config.apn": {"apn": "internet", "user": "fleet"}, **_shadow("bsi", {"apn": "internet", "user": "fleet"})}
    assert "secret" not in repr(apn)
    # An empty user name clears it on the tracker (V4.01 3.2.1.1): the shadow says so.
    assert ack_effects("set_apn", {"apn": "internet"}) == {
        "config.apn": {"apn": "internet", "user": None}, **_shadow("bsi", {"apn": "internet", "user": None})}
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    fri = {k: v for k, v in BASE["set_report_interval"].items()}
    assert ack_effects("set_report_interval", fri, at) == _shadow("fri", fri, at)
    for type_ in ("locate", "reboot", "get_info", "get_version", "get_config", "raw"):
        assert ack_effects(type_, BASE.get(type_)) == {}


@pytest.mark.parametrize(("command", "block", "fields"), [
    # V4.01 p. 16-17 (CFG: the new password never lands in the shadow), p. 21 (TMA as the dump's
    # `±HHMM`), p. 55 (VVS), p. 42 (IDL with a GV50P output wave).
    ("AT+GTCFG=gv50,123456,gv50,,,,,,,,,,,,,,,,,,0,0003$", "cfg", {"device_name": "gv50", "gps_lost_time_min": 0}),
    ("AT+GTTMA=gv50,-,3,30,0,20090917203500,,,,,0011$", "tma", {"time_zone": "-0330", "daylight_saving": False}),
    ("AT+GTVVS=gv50,13000,500,10,,,000B$", "vvs", {"ignition_on_mv": 13000, "offset_mv": 500, "debounce_s": 10}),
    ("AT+GTIDL=gv50,1,2,1,0,,,,1,1,0,0,,,,,000F$", "idl", {
        "mode": True, "time_to_idling_min": 2, "time_to_movement_min": 1, "debounce_distance_m": 0, "output_id": 1,
        "output_status": True, "output_duration": 0, "output_toggles": 0}),
])
def test_raw_command_effects_name_the_block_fields(command: str, block: str, fields: dict[str, Any]) -> None:
    effects = ack_effects("raw", {"command": command})
    assert effects == _shadow(block, fields)
    assert "123456" not in repr(effects)


def test_encoder_parameters_are_config_block_names() -> None:
    """Every encoder parameter sits in the slot its config block gives that name, so a command
    and the tracker's own dump fill the same `config.<block>.<name>`."""
    for type_, spec in COMMANDS.items():
        if spec.at in ("GTRTO", ""):
            continue
        names = command_slot_names(spec.at[2:])
        assert len(names) == len(spec.slots), type_
        for slot, name in zip(spec.slots, names):
            if isinstance(slot, P):
                assert slot.name == name or (type_, slot.name) == ("set_apn", "password"), (type_, slot.name, name)
    # Every typed value comes back from the wire as the same value.
    for type_ in ("set_server", "set_apn", "set_report_interval"):
        block, fields = config_changes(type_, BASE[type_])  # type: ignore[misc]
        for name, value in fields.items():
            assert BASE[type_].get(name, value) == value, (type_, name)


def test_validated_model_is_accepted_back() -> None:
    model = validate_command("set_server", {"host": "gw.example.com", "port": 4000})
    assert isinstance(model, Params)
    assert encode_command("set_server", model, password="gv50", serial="0001") == \
        encode_command("set_server", {"host": "gw.example.com", "port": 4000}, password="gv50", serial="0001")
    assert ack_effects("set_server", model)["config.server"]["port"] == 4000
    # Integral doubles (legacy mongo shell numbers) are integers.
    assert validate_command("set_server", {"host": "gw.example.com", "port": 5000.0}).port == 5000


# --- decode_command ---------------------------------------------------------------------------

@pytest.mark.parametrize("raw", VENDOR_COMMANDS)
def test_decode_round_trips_vendor_lines(raw: str) -> None:
    for line in (raw, raw.encode("ascii")):
        decoded = decode_command(line)
        # The only difference allowed: the stray blanks V4.01 prints around some slots.
        assert decoded.render() == re.sub(r" *([,=]) *", r"\1", raw)
        assert decoded.password == "gv50"
        assert raw.startswith(f"AT+{decoded.type}=")
        assert decoded.raw == raw
        assert decode_command(decoded.render()) == decoded.model_copy(update={"raw": decoded.render()})


def test_decode_fields() -> None:
    line = decode_command(b"AT+GTOUT=gv50,1,0,0,,,,1,,,,,,,0A01$")
    assert (line.type, line.password, line.serial) == ("GTOUT", "gv50", "0A01")
    assert line.fields == ("1", "0", "0", None, None, None, "1", None, None, None, None, None, None)
    with pytest.raises(ValidationError):
        line.serial = "0000"  # type: ignore[misc]


def test_decode_keeps_an_embedded_command_in_one_slot() -> None:
    # AT+GTCMD slot 3 is a whole AT command with its own commas and `$` (V4.01 p. 63).
    line = decode_command("AT+GTCMD=gv50,1,1,AT+GTRTO=gv50,0,,,,,,000B$,,,,,0005$")
    assert line.slot_count == SLOT_COUNTS["CMD"]
    assert line.fields[2] == "AT+GTRTO=gv50,0,,,,,,000B$"
    assert line.serial == "0005"


@pytest.mark.parametrize("raw", [
    "AT+GTRTO=gv50,8,,,,,,FFFF", "AT+GTRTO=gv50,8,,,,,,FFFF$\r\n", "+ACK:GTRTO,gv50,FFFF$", "AT+GTRTOgv50,FFFF$",
    "AT+GTRT=gv50,FFFF$", "AT+GTRTO=FFFF$", "AT+GTRTO=gv5,8,FFFF$", "AT+GTRTO=gv50,8,FFF$", "AT+GTRTO=gv50,8,XYZW$",
    "AT+GTRTO=gv50,8$,,,,,,FFFF$", "AT+GTCMD=gv50,1,1,AT+GTRTO=gv50,0,,,,,,000B,,,,,0005$",
    "AT+GTRTO=gv50,\x00,,,,,,FFFF$", b"AT+GTRTO=gv50,\xe9,,,,,,FFFF$", "AT+GTRTO=gv50,é,,,,,,FFFF$", "", "$",
])
def test_decode_refuses_malformed_lines(raw: str | bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_command(raw)
    assert info.value.reason
