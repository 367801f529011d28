"""`gv50ctl health` as a subprocess: passing against a running gateway, then failing with one line
when the gateway is stopped, when its port is wrong, and when MongoDB is stopped."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

from gv50_gevent.storage.mongod import EmbeddedMongod
from tests.support import REPO, free_port, wait_for


def health(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MONGODB_", "MONGOD_", "GATEWAY_"))}
    return subprocess.run([sys.executable, "-m", "gv50_gevent.cli", "health", *args], cwd=REPO,
                          env={**clean, **env}, capture_output=True, text=True, timeout=60)


def test_health_passes_then_fails_with_the_gateway_stopped(start_gateway) -> None:
    gw = start_gateway(GATEWAY_ID="gw-health", GATEWAY_ALIVE_INTERVAL_S="0.5")
    env = {k: gw.settings[k] for k in ("MONGODB_URI", "MONGODB_DB", "GATEWAY_HOST", "GATEWAY_PORT")}
    done = health(env, "--gateway-id", "gw-health", "--max-age", "10")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("healthy: gateway gw-health alive") and "takes connections" in done.stdout
    assert gw.db.gateway_state.find_one({"_id": "health:gw-health"})["checked_at"] is not None

    # Alive and MongoDB fine, but nothing listens where the probe looks.
    done = health(env, "--gateway-id", "gw-health", "--listener", f"127.0.0.1:{free_port()}")
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error: gateway gw-health does not take connections on 127.0.0.1:")
    assert len(done.stderr.strip().splitlines()) == 1

    # Stopped cleanly: its gateway_state is gone.
    assert gw.terminate() == 0
    done = health(env, "--gateway-id", "gw-health")
    assert done.returncode == 1
    assert done.stderr.strip() == ("error: gateway gw-health is not running: it has no gateway_state (is the id "
                                   "right? gv50ctl status --all lists them)")

    # Killed: its gateway_state stays behind and grows old.
    gw = start_gateway(GATEWAY_ID="gw-health-kill", GATEWAY_ALIVE_INTERVAL_S="0.5")
    env["GATEWAY_PORT"] = gw.settings["GATEWAY_PORT"]
    assert health(env, "--gateway-id", "gw-health-kill", "--max-age", "10").returncode == 0
    gw.proc.kill()
    gw.proc.wait()
    # At once its port refuses; within a second more its record is older than --max-age 1 as well.
    done = health(env, "--gateway-id", "gw-health-kill", "--max-age", "1")
    assert done.returncode == 1 and "does not take connections" in done.stderr or "is stale" in done.stderr
    stale = wait_for(lambda: (lambda d: d if "is stale" in d.stderr else None)(
        health(env, "--gateway-id", "gw-health-kill", "--max-age", "1")), timeout=20, what="a stale gateway")
    assert stale.returncode == 1
    assert stale.stderr.startswith("error: gateway gw-health-kill is stale: it last said it was alive"), stale.stderr


def test_health_fails_with_mongodb_stopped(start_gateway) -> None:
    data_dir = tempfile.mkdtemp(prefix="gv50-health-mongod-")
    mongod = EmbeddedMongod(data_dir, free_port(), cache_gb=0.25)
    try:
        uri = mongod.start()
        gw = start_gateway(MONGODB_URI=uri, GATEWAY_ID="gw-health-db", GATEWAY_ALIVE_INTERVAL_S="0.5")
        env = {"MONGODB_URI": uri, "MONGODB_DB": gw.settings["MONGODB_DB"], "GATEWAY_HOST": "127.0.0.1",
               "GATEWAY_PORT": gw.settings["GATEWAY_PORT"]}
        done = health(env, "--gateway-id", "gw-health-db")
        assert done.returncode == 0, done.stdout + done.stderr
        mongod.stop()
        done = health(env, "--gateway-id", "gw-health-db", "--timeout", "2")
        assert done.returncode == 5, done.stdout + done.stderr
        line = done.stderr.strip()
        assert line.startswith("error: MongoDB is not reachable: cannot reach MongoDB at") and "\n" not in line
        # Its orderly stop would wait for the MongoDB that is gone (the outage tests cover that).
        gw.proc.kill()
        gw.proc.wait()
    finally:
        mongod.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
