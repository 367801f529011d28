"""What a gateway says when it cannot start, as real processes: one embedded MongoDB per data
folder (a second gateway never shares it silently), a busy tracker port, a MongoDB that is not a
replica set. Each refusal is one plain line that says what to do, and the exit code is 1."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient

from gv50_gevent.storage.mongod import find_mongod
from tests.support import REPO, GatewayProcess, free_port, wait_for


def run_gateway(cwd: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    """A gateway that is expected to refuse to start: run it to its end."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONGODB_", "MONGOD_"))}
    env.update({"PYTHONPATH": str(REPO), "GATEWAY_HOST": "127.0.0.1", "MONGOD_CACHE_GB": "0.25", **settings})
    return subprocess.run([sys.executable, str(REPO / "run_server.py")], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=90)


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in done.stderr, done.stderr
    return [line.split("cannot start: ", 1)[1] for line in done.stderr.splitlines() if "cannot start: " in line]


@pytest.fixture
def folder() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="gv50-startup-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def embedded_gateway(folder: Path, data: str, mongod_port: int) -> GatewayProcess:
    settings = {"MONGOD_DATA_DIR": str(folder / data), "MONGOD_PORT": str(mongod_port), "MONGOD_CACHE_GB": "0.25",
                "GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(free_port()), "SHUTDOWN_GRACE_S": "1"}
    client: MongoClient = MongoClient(f"mongodb://127.0.0.1:{mongod_port}/?directConnection=true", tz_aware=True)
    gw = GatewayProcess(settings, client["gv50"])
    gw.start(timeout=90)
    wait_for(lambda: "gateway" in gw.log() and " ready (" in gw.log(), timeout=60, what="gateway ready")
    return gw


def test_a_second_gateway_never_shares_the_embedded_database(folder: Path) -> None:
    port = free_port()
    first = embedded_gateway(folder, "data", port)
    try:
        # Same data folder (whatever its port): refused, with the holder and what to do.
        done = run_gateway(folder, MONGOD_DATA_DIR=str(folder / "data"), MONGOD_PORT=str(free_port()),
                           GATEWAY_PORT=str(free_port()))
        assert done.returncode == 1
        [line] = error_lines(done)
        assert line.startswith(f"the embedded MongoDB data folder {folder / 'data'} is in use by another gateway "
                               f"(pid {first.proc.pid} on ")
        assert "stop the other one, or give this one its own MONGOD_DATA_DIR and MONGOD_PORT" in line
        assert "embedded MongoDB ready" not in done.stderr

        # Its own data folder but the first one's mongod port: refused, never connected to the other.
        done = run_gateway(folder, MONGOD_DATA_DIR=str(folder / "other"), MONGOD_PORT=str(port),
                           GATEWAY_PORT=str(free_port()))
        assert done.returncode == 1
        [line] = error_lines(done)
        assert line.startswith(f"port {port} (MONGOD_PORT) is taken by another program")
        assert line.endswith("Stop it, or set MONGOD_PORT to a free port")
        assert "embedded MongoDB ready" not in done.stderr

        # The first gateway and its database are untouched.
        first.db.vehicles.insert_one({"_id": "863000000000001", "enabled": True})
        assert first.proc.poll() is None
    finally:
        assert first.terminate() == 0
        first.stop()
    # Stopped cleanly, it leaves the folder free: the next gateway takes it (the lock is not stale).
    second = embedded_gateway(folder, "data", port)
    try:
        assert second.db.vehicles.find_one({"_id": "863000000000001"}) is not None
    finally:
        assert second.terminate() == 0
        second.stop()


def test_after_a_gateway_is_killed_the_next_one_replaces_its_orphaned_mongod(folder: Path) -> None:
    """kill -9 of a gateway leaves its mongod running (a session of its own). The next gateway of
    the same folder holds the lock, so that mongod serves no one: it is stopped and replaced."""
    port = free_port()
    first = embedded_gateway(folder, "data", port)
    orphan = first.db.client.admin.command("serverStatus", repl=0, metrics=0, locks=0)["pid"]
    first.db.vehicles.insert_one({"_id": "863000000000002", "enabled": True})
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    first.stop()
    try:
        assert first.db.client.admin.command("ping")  # the orphan still answers
        second = embedded_gateway(folder, "data", port)
        try:
            log = second.log()
            assert f"a mongod (pid {orphan}) left by an earlier gateway runs on {folder / 'data'}" in log
            own = second.db.client.admin.command("serverStatus", repl=0, metrics=0, locks=0)["pid"]
            assert own != orphan and second.db.vehicles.find_one({"_id": "863000000000002"}) is not None
            wait_for(lambda: not _alive(orphan), what="the orphaned mongod gone")
        finally:
            assert second.terminate() == 0
            second.stop()
    finally:
        if _alive(orphan):
            os.kill(orphan, signal.SIGTERM)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes (its parent, the killed gateway, cannot reap it).
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def test_busy_tracker_port_names_the_port_and_the_setting(mongo_uri: str, folder: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_gateway(folder, MONGODB_URI=mongo_uri, MONGODB_DB="gv50_startup", GATEWAY_PORT=str(port))
    assert done.returncode == 1
    assert error_lines(done) == [
        f"port {port} on 127.0.0.1 (GATEWAY_PORT) is in use by another program: stop it, or set GATEWAY_PORT to a "
        f"free port (several gateways share one port only when each has REUSE_PORT=true)"]
    assert "Errno" not in done.stderr


@pytest.fixture
def standalone(folder: Path) -> Iterator[int]:
    """A real mongod that is not a replica set (what a first-time MongoDB install runs)."""
    port = free_port()
    proc = subprocess.Popen([find_mongod(), "--bind_ip", "127.0.0.1", "--port", str(port), "--dbpath", str(folder),
                             "--wiredTigerCacheSizeGB", "0.25", "--logpath", str(folder / "mongod.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client: MongoClient = MongoClient(port=port, directConnection=True, serverSelectionTimeoutMS=500)
        wait_for(lambda: _pings(client), timeout=60, what="standalone mongod")
        client.close()
        yield port
    finally:
        proc.terminate()
        proc.wait(30)


def _pings(client: MongoClient) -> bool:
    try:
        return bool(client.admin.command("ping"))
    except Exception:
        return False


def test_a_mongodb_that_is_not_a_replica_set_is_named_with_how_to_initiate(standalone: int, folder: Path) -> None:
    uri = f"mongodb://127.0.0.1:{standalone}/"
    done = run_gateway(folder, MONGODB_URI=uri, GATEWAY_PORT=str(free_port()))
    assert done.returncode == 1
    [line] = error_lines(done)
    assert line.startswith(f"MongoDB at {uri} is a single server, not a replica set")
    assert "Restart mongod with --replSet rs0, then initiate it once: mongosh" in line and "rs.initiate(" in line

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONGODB_", "MONGOD_"))}
    for given in (uri, f"mongodb://127.0.0.1:{standalone}/?replicaSet=rs0&directConnection=true"):
        cli = subprocess.run([sys.executable, "-m", "gv50_gevent.cli", "--uri", given, "devices"], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=60)
        assert cli.returncode == 5
        assert "is a single server, not a replica set" in cli.stderr and "rs.initiate(" in cli.stderr
        assert "belongs to a set named" not in cli.stderr


def test_cli_says_the_embedded_mongodb_runs_only_with_a_gateway(folder: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONGODB_", "MONGOD_"))}
    port = free_port()
    cli = subprocess.run([sys.executable, "-m", "gv50_gevent.cli", "devices"], cwd=folder,
                         env={**env, "PYTHONPATH": str(REPO), "MONGOD_PORT": str(port)},
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 5
    assert cli.stderr.strip() == (
        f"error: cannot reach the embedded MongoDB: nothing answers at 127.0.0.1:{port}. It runs only while a "
        f"gateway runs: start the gateway (gv50-gateway or scripts/run-gateway), or give MONGODB_URI (or --uri)")
