"""Profiles: checking what an operator writes, who gets which value, wanted against actual."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from gv50_gevent.commands.store import first_open
from gv50_gevent.fleet.profiles import (
    ProfileError, check_profile, command_for, compare, describe, fingerprint, public_target, resolve,
    unknown_defaults,
)

IMEI = "864802030000001"


def problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(ProfileError) as caught:
        check_profile(doc)
    return caught.value.problems


def test_a_good_profile_is_read_in_the_commands_own_types() -> None:
    p = check_profile({"_id": "city", "settings": {"fri": {"send_interval_s": 30.0, "discard_no_fix": 1},
                                                    "hrm": {"hbd_mask": "e7"}},
                       "applies_to": {"groups": ["buses"], "imeis": [IMEI]}})
    assert p.settings == {"fri": {"send_interval_s": 30, "discard_no_fix": True}, "hrm": {"hbd_mask": "E7"}}
    assert p.match(IMEI, None) == "imei" and p.match("864802030000002", "buses") == "group"
    assert p.match("864802030000002", "vans") is None


def test_every_rejected_value_gets_one_plain_line() -> None:
    lines = problems({"_id": "bad name", "settings": {
        "fri": {"send_interval_s": 2, "colour": "red"},
        "hbm": {"mode": 1},
        "xyz": {"a": 1},
        "sri": {"host": "a,b", "port": 70000},
        "bsi": {"apn": "internet"},
    }, "applies_to": {"imeis": ["123"], "everyone": True}})
    assert lines == [
        "name: 1-64 letters, digits, '_', '.', '-', starting with a letter or digit",
        "settings.fri.colour: not a setting set_report_interval can change (it changes mode, discard_no_fix, "
        "period_enable, start_time, end_time, send_interval_s, distance_m, mileage_m, corner_deg, igf_interval_s)",
        "settings.fri.send_interval_s: must be between 5 and 86400, not 2 (value 2)",
        "settings.hbm: no command the gateway sends sets it (a profile can set bsi, fri, hrm, sri)",
        "settings.xyz: no such block (a profile can set bsi, fri, hrm, sri)",
        "settings.sri.host: contains a ',', which the command line cannot carry (value 'a,b')",
        "settings.sri.port: must be between 0 and 65535, not 70000 (value 70000)",
        "settings.bsi.user: required with this block (leaving it out would clear it on the tracker; use \"\" for "
        "none)",
        "settings.bsi.password: required with this block (leaving it out would clear it on the tracker; use \"\" "
        "for none)",
        "applies_to.everyone: unknown (use imeis, groups or all)",
        "applies_to.imeis: must be a list of IMEIs (14 or 15 digits)",
    ]
    assert all("\n" not in line for line in lines)


def test_a_secret_is_never_shown_in_full() -> None:
    bad = problems({"_id": "apn", "settings": {"bsi": {"apn": "m2m", "user": "u", "password": "s3cr,et"}}})
    assert len(bad) == 1 and "s3cr" not in bad[0] and fingerprint("s3cr,et") in bad[0]
    p = check_profile({"_id": "apn", "settings": {"bsi": {"apn": "m2m", "user": "u", "password": "s3cret"}},
                       "applies_to": {"all": True}})
    public = public_target(resolve(IMEI, None, [p]))
    assert public["bsi"]["password"]["value"] == f"*** ({fingerprint('s3cret')})"
    assert "s3cret" not in repr(public)
    # Wanted against actual: a dump never shows it, so only an acknowledged fingerprint counts.
    target = resolve(IMEI, None, [p])
    config = {"bsi": {"apn": "m2m", "user": "u", "source": "report"}}
    assert compare(target, config, {}).differs == {"bsi": {"password": ("***", None)}}
    assert compare(target, config, {"bsi": {"password": fingerprint("s3cret")}}).in_sync
    assert "s3cret" not in describe("bsi", {"password": ("s3cret", None)})


def _profile(name: str, applies: dict[str, Any], fri: dict[str, Any], day: int = 1) -> Any:
    return check_profile({"_id": name, "settings": {"fri": fri}, "applies_to": applies,
                          "updated_at": datetime(2026, 1, day, tzinfo=timezone.utc)})


def test_the_most_specific_assignment_wins_field_by_field() -> None:
    everyone = _profile("everyone", {"all": True}, {"send_interval_s": 60, "distance_m": 500})
    buses = _profile("buses", {"groups": ["buses"]}, {"send_interval_s": 30})
    one = _profile("one", {"imeis": [IMEI]}, {"distance_m": 100})
    target = resolve(IMEI, "buses", [one, buses, everyone])
    assert {k: (w.value, w.profile, w.via) for k, w in target["fri"].items()} == {
        "send_interval_s": (30, "buses", "group"), "distance_m": (100, "one", "imei")}
    assert resolve("864802030000002", "vans", [one, buses, everyone])["fri"]["send_interval_s"].profile == "everyone"
    assert resolve("864802030000002", None, [one, buses]) == {}
    # Two groups' profiles: the one written last wins; on the same date, the first name.
    later = _profile("later", {"groups": ["buses"]}, {"send_interval_s": 45}, day=2)
    assert resolve(IMEI, "buses", [buses, later])["fri"]["send_interval_s"].profile == "later"
    twin = _profile("a-twin", {"groups": ["buses"]}, {"send_interval_s": 15})
    assert resolve(IMEI, "buses", [buses, twin])["fri"]["send_interval_s"].profile == "a-twin"


def test_wanted_against_the_shadow() -> None:
    p = check_profile({"_id": "x", "settings": {"fri": {"send_interval_s": 30}, "hrm": {"hbd_mask": "e7"}},
                       "applies_to": {"all": True}})
    target = resolve(IMEI, None, [p])
    config: dict[str, Any] = {"fri": {"mode": 1, "send_interval_s": 30, "source": "command"},
                              "hrm": {"hbd_mask": "00E7", "source": "report"}}
    result = compare(target, config, {})
    assert result.differs == {} and result.unconfirmed == ["fri"]
    config["fri"]["send_interval_s"] = 60
    assert compare(target, config, {}).differs == {"fri": {"send_interval_s": (30, 60)}}
    assert describe("fri", {"send_interval_s": (30, None)}) == "fri.send_interval_s (unknown) -> 30"


def test_a_command_changes_only_what_the_profile_names() -> None:
    p = check_profile({"_id": "x", "settings": {"fri": {"send_interval_s": 30}}, "applies_to": {"all": True}})
    target = resolve(IMEI, None, [p])
    # FRI's mode is always sent: unknown, the tracker is asked first; known, it is kept.
    assert unknown_defaults("fri", target, {}) == ["mode"]
    assert command_for("fri", target, {"fri": {"mode": 1, "mileage_m": 100}}) == (
        "set_report_interval", {"send_interval_s": 30, "mode": 1})
    # Mode 5 runs on interval and mileage: the tracker's mileage goes along.
    assert command_for("fri", target, {"fri": {"mode": 5, "mileage_m": 100, "corner_deg": 0}}) == (
        "set_report_interval", {"send_interval_s": 30, "mode": 5, "mileage_m": 100, "corner_deg": 0})
    assert unknown_defaults("fri", target, {"fri": {"mode": 5}}) == []


def test_the_operators_commands_go_before_a_rollouts() -> None:
    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    rollout = {"_id": 1, "status": "pending", "created_at": at, "source": "profile:city"}
    operator = {"_id": 2, "status": "pending", "created_at": at.replace(hour=1)}
    named = {"_id": 3, "status": "pending", "created_at": at.replace(hour=2), "source": "operator"}
    assert first_open([rollout, operator, named])["_id"] == 2
    assert first_open([rollout, named])["_id"] == 3
    # Still one at a time: a rollout command awaiting its ACK is not overtaken.
    assert first_open([{**rollout, "status": "sent"}, operator])["_id"] == 1
