"""Test helpers: a gateway in its own process, and a blocking tracker client on a real socket."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pymongo.database import Database

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = "condition",
             sleep: Callable[[float], Any] = time.sleep) -> Any:
    """`sleep=gevent.sleep` lets simulated trackers (greenlets of the test process) run meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        sleep(interval)


class GatewayProcess:
    def __init__(self, settings: dict[str, str], db: Database) -> None:
        self.settings = settings
        self.db = db
        self.port = int(settings["GATEWAY_PORT"])
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(os.environ.get("TMPDIR", "/tmp")) / f"gv50-gateway-{self.port}.log"

    def start(self, timeout: float = 30.0) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("MONGODB_URI",)}
        env.update(self.settings)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, str(REPO / "run_server.py")], cwd=REPO, env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            if "ready" in self.log():
                return
            time.sleep(0.05)
        raise AssertionError(f"gateway did not start:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def terminate(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.terminate()
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()

    def connect(self, source: str | None = None) -> Tracker:
        return Tracker(("127.0.0.1", self.port), source=source)


class Tracker:
    """A device on a real socket: send raw lines, read what the gateway answers."""

    def __init__(self, address: tuple[str, int], timeout: float = 5.0, source: str | None = None) -> None:
        self.sock = socket.create_connection(address, timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.received = b""

    def send(self, data: str | bytes) -> None:
        self.sock.sendall(data.encode("latin-1") if isinstance(data, str) else data)

    def send_line(self, line: str) -> None:
        self.send(line if line.endswith("$") else line + "$")

    def read_until(self, needle: bytes, timeout: float = 5.0) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.received:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {needle!r} within {timeout}s; got {self.received!r}")
            self.sock.settimeout(remaining)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"connection closed before {needle!r}; got {self.received!r}")
            self.received += chunk
        return self.received

    def is_closed(self, timeout: float = 5.0) -> bool:
        """True when the gateway closes the connection within `timeout`."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.received += chunk
        except (socket.timeout, TimeoutError):
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FakeClock:
    """A monotonic clock the test moves by hand (`now`)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
