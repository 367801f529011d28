"""Settings that cannot be mistyped: an unknown key in `.env`, or an unknown variable that looks like
ours, stops the start with one plain line naming it and the closest real setting; a bad value
gives one line with the setting, the value and what is allowed; secrets never show. Checked on
`load_settings` and on the real commands (`run_server.py`, the CLI) as subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gv50_gevent.config import (
    OUR_PREFIXES, Settings, SettingsError, load_settings, looks_like_ours,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """An environment without any of our settings, and a current folder without a .env."""
    for name in list(os.environ):
        if name.upper() in Settings.model_fields or looks_like_ours(name):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return {k: v for k, v in os.environ.items() if k not in ("MONGODB_URI",)}


def problem(**kwargs: object) -> str:
    with pytest.raises(SettingsError) as info:
        load_settings(**kwargs)  # type: ignore[arg-type]
    return str(info.value)


def test_unknown_key_in_env_file_names_the_closest_setting(clean_env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SACK_MOED=all\nGATEWAY_PORT=6000\n")
    assert problem(environ={}) == "unknown setting SACK_MOED in .env; did you mean SACK_MODE?"
    (tmp_path / ".env").write_text("# a comment\nGATEWAY_PROT=6000\nTOTALLY_ELSE=1\n")
    assert problem(environ={}).splitlines() == [
        "unknown setting GATEWAY_PROT in .env; did you mean GATEWAY_PORT?",
        "unknown setting TOTALLY_ELSE in .env",  # every key of .env is meant for us; nothing close
    ]
    other = tmp_path / "prod.env"
    other.write_text("AUTO_REGISTR=false\n")
    assert problem(env_file=other, environ={}) == \
        f"unknown setting AUTO_REGISTR in {other}; did you mean AUTO_REGISTER?"
    assert problem(env_file=tmp_path / "missing.env", environ={}) == \
        f"env file {tmp_path / 'missing.env'} not found (from --env-file)"


def test_env_file_is_read_from_the_current_folder_or_the_given_path(clean_env: dict[str, str],
                                                                    tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SACK_MODE=all\nGATEWAY_PORT=6001\n")
    settings = load_settings(environ={})
    assert settings.SACK_MODE == "all" and settings.GATEWAY_PORT == 6001
    other = tmp_path / "other.env"
    other.write_text("GATEWAY_PORT=6002\n")
    assert load_settings(env_file=other, environ={}).GATEWAY_PORT == 6002
    assert load_settings(env_file=other, environ={}).SACK_MODE == "off"  # .env is not read then


def test_environment_variables_that_look_like_ours(clean_env: dict[str, str]) -> None:
    assert problem(environ={"SACK_MOED": "all"}) == "unknown setting SACK_MOED in the environment; did you mean SACK_MODE?"
    assert problem(environ={"LOG_LEVL": "DEBUG"}).endswith("did you mean LOG_LEVEL?")  # a typo of a real name
    assert problem(environ={"MONGODB_URL": "x"}).endswith("did you mean MONGODB_URI?")
    for prefix in OUR_PREFIXES:  # our prefixes: anything unknown under them is a mistake
        assert problem(environ={f"{prefix}WHATEVER": "1"}).startswith(f"unknown setting {prefix}WHATEVER")
    # Other software's variables, and our own test switches, are not ours to judge.
    for name in ("PATH", "HOME", "HTTP_PROXY", "HOSTNAME", "LOGNAME", "MONGODB_URI_TEST", "GV50_LONG_TESTS", "TMPDIR"):
        assert not looks_like_ours(name), name


def test_a_bad_value_is_one_line_with_what_is_allowed(clean_env: dict[str, str]) -> None:
    assert problem(environ={"SACK_MODE": "sometimes"}) == \
        "bad setting SACK_MODE='sometimes' (from the environment): input should be 'off' or 'all'"
    line = problem(environ={"GATEWAY_PORT": "70000"})
    assert line == "bad setting GATEWAY_PORT='70000' (from the environment): input should be less than or equal to 65535"
    assert problem(environ={"IDLE_TIMEOUT_S": "soon"}).startswith("bad setting IDLE_TIMEOUT_S='soon'")


def test_secrets_never_appear_in_a_problem_or_the_settings_dump(clean_env: dict[str, str]) -> None:
    line = problem(environ={"DEVICE_PASSWORD": "my,secret"})
    assert line == ("bad setting DEVICE_PASSWORD=*** (from the environment): must be 4 to 6 letters or digits "
                    "(the tracker's own rule)")
    assert "secret" not in line
    settings = load_settings(environ={}, DEVICE_PASSWORD="Zq81Kx", MONGODB_URI="mongodb://gw:Pa55@db1/?replicaSet=rs0")
    dump = str(settings.safe_dump())
    assert "Zq81Kx" not in dump and "Pa55" not in dump and "'DEVICE_PASSWORD': '***'" in dump
    assert "mongodb://gw:***@db1/?replicaSet=rs0" in dump


@pytest.mark.parametrize("command", [
    [sys.executable, str(REPO / "run_server.py")],
    [sys.executable, "-m", "gv50_gevent.cli", "devices"],
])
def test_the_commands_stop_with_one_plain_line_and_no_traceback(clean_env: dict[str, str], tmp_path: Path,
                                                                 command: list[str]) -> None:
    env = {**clean_env, "PYTHONPATH": str(REPO)}
    (tmp_path / ".env").write_text("SACK_MOED=all\n")
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().endswith("unknown setting SACK_MOED in .env; did you mean SACK_MODE?")
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr

    (tmp_path / ".env").write_text("AUTO_REGISTER=perhaps\n")
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "bad setting AUTO_REGISTER='perhaps' (from .env): input should be a valid boolean" in done.stderr


def test_the_total_new_imei_limit_is_checked_and_defaults_to_ten_sources(clean_env: dict[str, str]) -> None:
    assert load_settings(environ={"UDP_NEW_IMEI_PER_MIN": "7"}).new_imei_total_per_min == 70
    assert load_settings(environ={"UDP_NEW_IMEI_TOTAL_PER_MIN": "500"}).new_imei_total_per_min == 500
    assert problem(environ={"UDP_NEW_IMEI_PER_MIN": "20", "UDP_NEW_IMEI_TOTAL_PER_MIN": "5"}) == (
        "bad setting UDP_NEW_IMEI_TOTAL_PER_MIN='5' (from the environment): must be at least "
        "UDP_NEW_IMEI_PER_MIN (20): it is the limit of all sources together")
    assert problem(environ={"UDP_NEW_IMEI_TOTAL_PER_MIN": "-1"}).startswith("bad setting UDP_NEW_IMEI_TOTAL_PER_MIN")
