"""`gv50ctl health` as a subprocess: passing against a running gateway, then failing with one line
when the gateway is stopped or killed, when its port is wrong, when the id is wrong, and when
MongoDB does not answer. Checks that do not depend on each other run at the same time."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timezone

from tests.support import REPO, free_port, wait_for

Call = tuple[dict[str, str], tuple[str, ...]]


def start_health(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MONGODB_", "MONGOD_", "GATEWAY_"))}
    return subprocess.Popen([sys.executable, "-m", "gv50_gevent.cli", "health", *args], cwd=REPO,
                            env={**clean, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def health(*calls: Call) -> list[subprocess.CompletedProcess[str]]:
    """Run the checks at once; their results in the same order."""
    procs = [(start_health(env, *args), args) for env, args in calls]
    done = []
    for proc, args in procs:
        out, err = proc.communicate(timeout=60)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return done


def test_health_passes_then_names_what_fails(start_gateway) -> None:
    gw = start_gateway(GATEWAY_ID="gw-health", GATEWAY_ALIVE_INTERVAL_S="0.5")
    killed = start_gateway(GATEWAY_ID="gw-health-kill", GATEWAY_ALIVE_INTERVAL_S="0.5")
    env = {k: gw.settings[k] for k in ("MONGODB_URI", "MONGODB_DB", "GATEWAY_HOST", "GATEWAY_PORT")}
    env_killed = {**env, "GATEWAY_PORT": killed.settings["GATEWAY_PORT"]}
    # Nothing listens there: as for a MongoDB that is stopped.
    no_mongodb = {**env, "MONGODB_URI": f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"}
    healthy, healthy_again, wrong_port, wrong_id, db_down, other = health(
        (env, ("--gateway-id", "gw-health", "--max-age", "10")),
        (env, ("--gateway-id", "gw-health", "--max-age", "10")),
        # Alive and MongoDB fine, but nothing listens where the probe looks.
        (env, ("--gateway-id", "gw-health", "--listener", f"127.0.0.1:{free_port()}")),
        (env, ("--gateway-id", "gw-nobody")),
        (no_mongodb, ("--gateway-id", "gw-health", "--timeout", "2")),
        (env_killed, ("--gateway-id", "gw-health-kill", "--max-age", "10")))
    for done in (healthy, healthy_again, other):
        assert done.returncode == 0, done.stdout + done.stderr
    assert healthy.stdout.startswith("healthy: gateway gw-health alive") and "takes connections" in healthy.stdout
    # One health document per gateway checked, however often; none for an id that has no gateway.
    health_docs = list(gw.db.gateway_state.find({"_id": {"$regex": "^health:"}}))
    assert sorted(d["_id"] for d in health_docs) == ["health:gw-health", "health:gw-health-kill"]
    assert all(d["checked_at"] is not None for d in health_docs)

    assert wrong_port.returncode == 1
    assert wrong_port.stderr.strip().startswith("error: gateway gw-health does not take connections on 127.0.0.1:")
    assert len(wrong_port.stderr.strip().splitlines()) == 1
    assert wrong_id.returncode == 1 and wrong_id.stderr.startswith("error: gateway gw-nobody is not running")
    assert db_down.returncode == 5, db_down.stdout + db_down.stderr
    line = db_down.stderr.strip()
    assert line.startswith("error: MongoDB is not reachable: cannot reach MongoDB at") and "\n" not in line

    # One stopped cleanly (its gateway_state is gone), one killed (its gateway_state stays and grows old).
    assert gw.terminate() == 0
    killed.proc.kill()
    killed.proc.wait()
    # At once the killed one's port refuses (or, on a slow machine, its record is already stale).
    stopped, refused = health((env, ("--gateway-id", "gw-health")),
                              (env_killed, ("--gateway-id", "gw-health-kill", "--max-age", "1")))
    assert stopped.returncode == 1
    assert stopped.stderr.strip() == ("error: gateway gw-health is not running: it has no gateway_state (is the id "
                                      "right? gv50ctl status --all lists them)")
    assert gw.db.gateway_state.find_one({"_id": "health:gw-health"}) is None  # went with the gateway's record
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "does not take connections" in refused.stderr or "is stale" in refused.stderr, refused.stderr

    def record_age() -> float:
        alive_at = gw.db.gateway_state.find_one({"_id": "gateway:gw-health-kill"})["alive_at"]
        return (datetime.now(timezone.utc) - alive_at).total_seconds()

    wait_for(lambda: record_age() > 1.5, timeout=20, what="the killed gateway's record older than 1.5 s")
    [stale] = health((env_killed, ("--gateway-id", "gw-health-kill", "--max-age", "1")))
    assert stale.returncode == 1
    assert stale.stderr.startswith("error: gateway gw-health-kill is stale: it last said it was alive"), stale.stderr
