"""deploy/*.service: the unit files pass `systemd-analyze verify` (or, without systemd, carry the keys
we promise), and the command line they run starts the gateway: two template instances share the
port, each under its own GATEWAY_ID, take a tracker, and stop cleanly on SIGTERM."""

from __future__ import annotations

import configparser
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from gv50_gevent.config import Settings
from tests.support import REPO, Tracker, free_port, wait_for

UNITS = ("gv50-gateway.service", "gv50-gateway@.service")
INSTALLED = "/opt/gv50_gevent"
# Installed under /opt in production; here the programs of the Python running the tests, and this checkout.
HERE = {f"{INSTALLED}/.venv/bin": str(Path(sys.executable).parent), INSTALLED: str(REPO)}


def here(text: str) -> str:
    for installed, local in HERE.items():
        text = text.replace(installed, local)
    return text
WRITER_FLUSH_S = 20  # what the shutdown gives the final flush (app.Application.stop)


def unit(name: str) -> dict[str, list[str]]:
    """`Section.Key` -> its values (a key such as Environment= may repeat)."""
    values: dict[str, list[str]] = {}
    section = ""
    for line in (REPO / "deploy" / name).read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        values.setdefault(f"{section}.{key}", []).append(value)
    return values


def test_unit_files_are_valid_and_stop_gracefully(tmp_path: Path) -> None:
    grace = Settings().SHUTDOWN_GRACE_S
    for name in UNITS:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read(REPO / "deploy" / name)  # systemd's syntax is ini-like: it must at least read as one
        assert parser.sections() == ["Unit", "Service", "Install"], name
        keys = unit(name)
        assert keys["Service.Restart"] == ["on-failure"]
        assert keys["Service.KillSignal"] == ["SIGTERM"] and keys["Service.KillMode"] == ["mixed"]
        assert float(keys["Service.TimeoutStopSec"][0]) > grace + WRITER_FLUSH_S
        assert int(keys["Service.LimitNOFILE"][0]) >= 20_000
        assert keys["Service.ExecStart"][0].startswith(f"{INSTALLED}/.venv/bin/gv50-gateway ")
        assert keys["Install.WantedBy"] == ["multi-user.target"]
    assert "GATEWAY_ID=%H-gw%i" in unit("gv50-gateway@.service")["Service.Environment"]
    # The single unit runs the same command line as the template, which the test below starts.
    assert unit(UNITS[0])["Service.ExecStart"] == unit(UNITS[1])["Service.ExecStart"]
    if shutil.which("systemd-analyze") is None:
        return  # the key checks above are what can be checked without systemd
    for name in (*UNITS, "gv50-gateway@1.service"):
        source = REPO / "deploy" / (name if "@1" not in name else "gv50-gateway@.service")
        (tmp_path / name).write_text(here(source.read_text()))
        done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 0 and name not in done.stdout + done.stderr, done.stdout + done.stderr


def command_line(name: str, instance: str, env_file: Path) -> tuple[list[str], dict[str, str]]:
    """The unit's ExecStart and Environment=, with systemd's %H and %i filled in."""
    keys = unit(name)

    def expand(text: str) -> str:
        return here(text.replace("%H", socket.gethostname()).replace("%i", instance))

    argv = [expand(arg) for arg in shlex.split(keys["Service.ExecStart"][0])]
    argv[argv.index("/etc/gv50/gateway.env")] = str(env_file)
    env = dict(expand(item).split("=", 1) for item in keys.get("Service.Environment", []))
    return argv, env


def test_the_template_unit_starts_gateways_that_share_the_port(mongo_uri: str, mongo, db_name: str,
                                                                tmp_path: Path) -> None:
    port = free_port()
    env_file = tmp_path / "gateway.env"
    env_file.write_text(f"MONGODB_URI={mongo_uri}\nMONGODB_DB={db_name}\nGATEWAY_HOST=127.0.0.1\n"
                        f"GATEWAY_PORT={port}\nSACK_MODE=all\nSHUTDOWN_GRACE_S=3\nGATEWAY_ALIVE_INTERVAL_S=0.5\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MONGODB_", "MONGOD_", "GATEWAY_"))}
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        for instance in ("0", "1"):
            argv, env = command_line("gv50-gateway@.service", instance, env_file)
            assert Path(argv[0]).name == "gv50-gateway"
            log = tmp_path / f"gw{instance}.log"
            with open(log, "wb") as out:
                procs.append((subprocess.Popen(argv, cwd=REPO, env={**base, **env}, stdout=out,
                                               stderr=subprocess.STDOUT), log))
            wait_for(lambda: "ready" in log.read_text() or procs[-1][0].poll() is not None, timeout=30,
                     what=f"instance {instance} ready")
            assert procs[-1][0].poll() is None, log.read_text()
        ids = {f"gateway:{socket.gethostname()}-gw0", f"gateway:{socket.gethostname()}-gw1"}
        wait_for(lambda: {d["_id"] for d in mongo[db_name].gateway_state.find({"_id": {"$in": sorted(ids)}})} == ids,
                 what="both instances alive under their own GATEWAY_ID")
        with Tracker(("127.0.0.1", port)) as device:
            device.send_line("+ACK:GTHBD,090302,865083030007801,,20170718163021,0001")
            device.read_until(b"+SACK:GTHBD,090302,0001$")
        for proc, log in procs:
            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            assert proc.wait(40) == 0, log.read_text()
            assert time.monotonic() - started < float(unit("gv50-gateway@.service")["Service.TimeoutStopSec"][0])
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_the_operations_guide_matches_the_units() -> None:
    """The guide's health check names a template instance the way the unit does, and its alert rules
    say so when a gateway is down (its metrics are then absent, so `== 0` alone never fires)."""
    guide = (REPO / "docs" / "operations.md").read_text()
    [gateway_id] = [v.partition("=")[2] for v in unit("gv50-gateway@.service")["Service.Environment"]
                    if v.startswith("GATEWAY_ID=")]
    assert f"--gateway-id {gateway_id}" in guide and "--gateway-id %i" not in guide
    rules = guide.split("groups:\n", 1)[1].split("```", 1)[0]
    assert 'up{job="gv50"} == 0' in rules and "absent(gv50_trackers_connected)" in rules
    assert "will be added" not in guide and "`gv50_rollout_trackers{state}`" in guide
