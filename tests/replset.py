"""A 3-node replica set on loopback, for the failover tests and the benchmarks (bench/ imports it
too): three `mongod` processes from the same binary as the embedded node (`find_mongod()`), each
on a free port with its own temporary data directory, and the faults the tests inflict on them:
stop, kill, freeze (SIGSTOP) and thaw (SIGCONT), restart on the same port and data, step down.

Election timing is set at initiate time (`settings`), because the defaults make a failover test
mostly waiting:

* `electionTimeoutMillis` 2000 (default 10000): secondaries call an election 2 s after they last
  heard from the primary, and a primary that cannot see a majority steps down after as long. A
  partitioned primary thus takes w=1 writes for about 2 s, as in the field reports of issue 9.
* `heartbeatIntervalMillis` 500 (default 2000): members notice each other sooner.
* `heartbeatTimeoutSecs` 3 (default 10): a member that does not answer (frozen, or gone) is
  marked down after 3 s instead of 10.

All members have priority 1: with a preferred member, the set would call one more election (a
priority takeover) each time that member came back, and a test could not tell that step-down
from the one it made. Members are `member0..member2`; `start()` initiates from member 0, which
is therefore almost always the first primary (never assumed: use `primary()`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bson
from bson.codec_options import CodecOptions
from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

from gv50_gevent.storage.mongod import find_mongod, mongod_argv, terminate

ELECTION_TIMEOUT_MS = 2000
HEARTBEAT_INTERVAL_MS = 500
HEARTBEAT_TIMEOUT_S = 3


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Member:
    """One mongod of the set. Its port and data directory stay the same across restarts."""

    def __init__(self, index: int, replica_set: str, root: Path, binary: str, cache_gb: float) -> None:
        self.index = index
        self.name = f"member{index}"
        self.replica_set = replica_set
        self.port = _free_port()
        self.data_dir = root / self.name
        self.logfile = self.data_dir / "mongod.log"
        self.binary = binary
        self.cache_gb = cache_gb
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False

    def __repr__(self) -> str:
        return f"<{self.name} {self.host}{' paused' if self.paused else ''}{'' if self.running else ' down'}>"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # --- the process ---

    def start(self, timeout: float = 60.0) -> None:
        """Start mongod and wait until it answers (it may still be recovering or catching up)."""
        if self.running:
            raise RuntimeError(f"{self.name} is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = mongod_argv(self.binary, self.replica_set, self.port, self.data_dir, self.logfile, self.cache_gb)
        argv += ["--setParameter", "enableTestCommands=1"]  # fail points: a real server error, on cue
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        self.paused = False
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {err[-500:]} "
                                   f"(see {self.logfile})")
            if self.hello(timeout_ms=500) is not None:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not answer within {timeout:.0f}s (see {self.logfile})")
            time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> None:
        """A clean shutdown (SIGTERM), killed if it takes longer than `timeout`."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        self.resume()
        terminate(proc, timeout)

    def kill(self) -> None:
        """SIGKILL: the machine loses power. Works on a frozen member too."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait()
        self.paused = False

    def pause(self) -> None:
        """SIGSTOP: the member freezes; its TCP connections stay open and nothing answers on them,
        which is what its peers see of a network partition."""
        if self.running and not self.paused:
            assert self.process is not None
            self.process.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.running and self.paused:
            assert self.process is not None
            self.process.send_signal(signal.SIGCONT)
        self.paused = False

    def restart(self, timeout: float = 60.0) -> None:
        """Kill it if it runs, then start it again on the same port and data directory."""
        self.kill()
        self.start(timeout)

    # --- what it says ---

    def client(self, timeout_ms: int = 2000) -> MongoClient[dict[str, Any]]:
        """A direct connection to this member alone (reads on a secondary are allowed)."""
        return MongoClient(f"mongodb://{self.host}/?directConnection=true", serverSelectionTimeoutMS=timeout_ms,
                           connectTimeoutMS=timeout_ms, socketTimeoutMS=timeout_ms, tz_aware=True)

    def hello(self, timeout_ms: int = 1000) -> dict[str, Any] | None:
        """Its `hello` answer, or None if it is down, frozen or does not answer in time."""
        if not self.running or self.paused:
            return None
        client = self.client(timeout_ms)
        try:
            return client.admin.command("hello")
        except PyMongoError:
            return None
        finally:
            client.close()

    def state(self) -> str:
        """PRIMARY, SECONDARY, ... as the member sees itself; DOWN, PAUSED or UNKNOWN otherwise."""
        if not self.running:
            return "DOWN"
        if self.paused:
            return "PAUSED"
        client = self.client()
        try:
            status = client.admin.command("replSetGetStatus")
            return str(next(m["stateStr"] for m in status["members"] if m.get("self")))
        except (PyMongoError, StopIteration):
            return "UNKNOWN"
        finally:
            client.close()

    def log(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_lines(self, component: str) -> list[str]:
        """Log lines of one component, e.g. "ROLLBACK" or "ELECTION" (the log is JSON, one line each)."""
        needle = f'"c":"{component}"'
        return [line for line in self.log().splitlines() if needle in line]

    def rollback_summaries(self) -> list[dict[str, Any]]:
        """The `attr` of each "Rollback summary" line: affectedNamespaces, rollbackCommandCounts,
        rollbackDataFileDirectory, commonPoint, ..."""
        return [json.loads(line)["attr"] for line in self.log_lines("ROLLBACK") if '"msg":"Rollback summary"' in line]

    def wait_rollback(self, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Wait until this member has logged a completed rollback; returns the summaries."""
        deadline = time.monotonic() + timeout
        while not (summaries := self.rollback_summaries()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} logged no rollback within {timeout:.0f}s; its state: {self.state()}")
            time.sleep(0.2)
        return summaries

    def rollback_files(self) -> list[Path]:
        """The BSON files mongod wrote under `<dbpath>/rollback/` for documents it rolled back."""
        root = self.data_dir / "rollback"
        return sorted(p for p in root.rglob("*.bson") if p.is_file()) if root.is_dir() else []

    def rolled_back(self) -> Iterator[dict[str, Any]]:
        """Every document in the rollback files."""
        for path in self.rollback_files():
            with open(path, "rb") as f:
                yield from bson.decode_file_iter(f, codec_options=CodecOptions(tz_aware=True))


class ReplicaSet:
    """Three members on loopback; `with ReplicaSet() as rs:` starts, initiates and tears down."""

    def __init__(self, name: str = "gv50rs", size: int = 3, cache_gb: float = 0.25, binary: str | None = None,
                 root: str | os.PathLike[str] | None = None) -> None:
        self.name = name
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="gv50-replset-"))
        binary = binary or find_mongod()
        self.members = [Member(i, name, self.root, binary, cache_gb) for i in range(size)]

    @property
    def uri(self) -> str:
        hosts = ",".join(m.host for m in self.members)
        return f"mongodb://{hosts}/?replicaSet={self.name}"

    def client(self, **options: Any) -> MongoClient[dict[str, Any]]:
        return MongoClient(self.uri, **{"tz_aware": True, "serverSelectionTimeoutMS": 30_000, **options})

    def start(self, timeout: float = 90.0) -> None:
        for member in self.members:
            member.start()
        config = {
            "_id": self.name,
            "members": [{"_id": m.index, "host": m.host, "priority": 1} for m in self.members],
            "settings": {"electionTimeoutMillis": ELECTION_TIMEOUT_MS, "heartbeatIntervalMillis": HEARTBEAT_INTERVAL_MS,
                         "heartbeatTimeoutSecs": HEARTBEAT_TIMEOUT_S},
        }
        client = self.members[0].client(5000)
        try:
            client.admin.command("replSetInitiate", config)
        except OperationFailure as exc:
            if exc.code != 23:  # AlreadyInitialized: a restart on old data
                raise
        finally:
            client.close()
        self.wait_healthy(timeout)
        self.checkpoint()

    def checkpoint(self) -> None:
        """`fsync` on every running member: a WiredTiger checkpoint now. A member killed (SIGKILL)
        seconds after its initial sync, before its first checkpoint (one a minute by default),
        comes back with the initial-sync flag still set and syncs from scratch, which needs a
        primary: the set would stay without one."""
        # A checkpoint needs a stable timestamp past the member's initial data: give the oplog a
        # majority-committed entry first.
        primary = self.wait_primary(30)
        client = primary.client(30_000)
        try:
            client.admin.command("appendOplogNote", data={"gv50": "checkpoint"}, writeConcern={"w": "majority"})
        finally:
            client.close()
        deadline = time.monotonic() + 30
        for member in self.members:
            if not member.running or member.paused:
                continue
            client = member.client(30_000)
            try:
                while True:
                    try:
                        client.admin.command("fsync")
                        break
                    except OperationFailure as exc:
                        if exc.code != 5841000 or time.monotonic() > deadline:  # stable timestamp too old
                            raise
                        time.sleep(0.2)
            finally:
                client.close()

    def __enter__(self) -> ReplicaSet:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for member in self.members:
            member.kill()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    # --- who is who ---

    def primary(self) -> Member | None:
        """The member that says it is the writable primary now (a frozen member is not asked)."""
        for member in self.members:
            hello = member.hello()
            if hello is not None and hello.get("isWritablePrimary"):
                return member
        return None

    def wait_primary(self, timeout: float = 60.0, other_than: Member | None = None) -> Member:
        """Wait for a primary (other than `other_than`, e.g. the one just stepped down)."""
        deadline = time.monotonic() + timeout
        while True:
            member = self.primary()
            if member is not None and member is not other_than:
                return member
            if time.monotonic() > deadline:
                states = {m.name: m.state() for m in self.members}
                raise AssertionError(f"no new primary within {timeout:.0f}s: {states}")
            time.sleep(0.1)

    def secondaries(self) -> list[Member]:
        primary = self.primary()
        return [m for m in self.members if m is not primary]

    def wait_healthy(self, timeout: float = 60.0) -> Member:
        """Wait until every member runs, one is primary and the others are secondaries; returns the primary."""
        deadline = time.monotonic() + timeout
        while True:
            states = [m.state() for m in self.members]
            if states.count("PRIMARY") == 1 and states.count("SECONDARY") == len(states) - 1:
                return next(m for m, s in zip(self.members, states) if s == "PRIMARY")
            if time.monotonic() > deadline:
                raise AssertionError(f"replica set not healthy within {timeout:.0f}s: "
                                     f"{dict(zip((m.name for m in self.members), states))}")
            time.sleep(0.2)

    def heal(self, timeout: float = 90.0) -> Member:
        """Thaw frozen members, start stopped ones, and wait until the set is healthy again."""
        for member in self.members:
            member.resume()
            if not member.running:
                member.start()
        primary = self.wait_healthy(timeout)
        self.checkpoint()
        return primary

    def step_down(self, seconds: int = 10, catch_up_s: int = 5) -> Member:
        """`replSetStepDown` on the primary (it waits up to `catch_up_s` for a secondary to catch
        up, then refuses to stand again for `seconds`). Returns the member that stepped down."""
        primary = self.wait_primary(30)
        client = primary.client(int((catch_up_s + 10) * 1000))
        try:
            client.admin.command("replSetStepDown", seconds, secondaryCatchUpPeriodSecs=catch_up_s)
        except PyMongoError:
            pass  # older servers close the connection on step-down
        finally:
            client.close()
        return primary
