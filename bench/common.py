"""What the benchmarks share: a mongod of their own, gateway and simulator processes, /proc
sampling of CPU and memory, and the machine description for docs/benchmarks.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gv50_gevent.storage.mongod import EmbeddedMongod  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu, "cores": os.cpu_count(),
            "mem_gib": round(mem_kb / 1024 / 1024, 1), "python": platform.python_version(),
            "kernel": platform.release()}


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def rss_bytes(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


class BenchMongo:
    """A fresh single-node replica set for one benchmark command (`--uri` to use another)."""

    def __init__(self, uri: str | None = None, cache_gb: float = 2.0) -> None:
        self.given = uri
        self.cache_gb = cache_gb
        self.mongod: EmbeddedMongod | None = None
        self.data_dir: str | None = None

    def __enter__(self) -> str:
        if self.given:
            return self.given
        self.data_dir = tempfile.mkdtemp(prefix="gv50-bench-mongod-")
        self.mongod = EmbeddedMongod(self.data_dir, free_port(), cache_gb=self.cache_gb)
        return self.mongod.start()

    @property
    def pid(self) -> int | None:
        return self.mongod.process.pid if self.mongod and self.mongod.process else None

    def __exit__(self, *exc: object) -> None:
        if self.mongod is not None:
            self.mongod.stop()
        if self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


class Gateway:
    """`python run_server.py` with the given settings."""

    def __init__(self, env: dict[str, str], log_name: str) -> None:
        self.env = {**os.environ, "LOG_LEVEL": "WARNING", **env}
        self.log_path = Path(tempfile.gettempdir()) / log_name
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        self.env["LOG_LEVEL"] = self.env.get("LOG_LEVEL", "WARNING")
        # "ready" is logged at INFO; watch the port instead.
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, str(REPO / "run_server.py")], cwd=REPO, env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT)
        port = int(self.env["GATEWAY_PORT"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.log_path.read_text()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError("gateway did not start")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._log.close()


def start_simulator(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "gv50_gevent.simulator", "--json", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def simulator_report(proc: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"simulator failed ({proc.returncode}): {err.decode()[-2000:]}")
    return json.loads(out)


def parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every benchmark shares; each adds its own."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--uri", help="an existing replica set (default: a fresh local mongod)")
    ap.add_argument("--cache-gb", type=float, default=2.0, help="WiredTiger cache of the fresh mongod "
                    "(the gateway's own default, MONGOD_CACHE_GB)")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    return ap


def repeat(args: Any, one_run: Callable[[str, Any, int], dict[str, Any]],
           describe: Callable[[dict[str, Any]], str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run a benchmark `args.runs` times against one mongod (`args.uri` or a fresh one), printing
    each run's line as it ends. Returns the machine description and the runs' results."""
    info = machine()
    results = []
    with BenchMongo(args.uri, args.cache_gb) as uri:
        for run in range(args.runs):
            result = one_run(uri, args, run)
            results.append(result)
            print(f"run {run + 1}: {describe(result)}", flush=True)
    return info, results


def print_summary(args: Any, summary: dict[str, Any], line: str) -> None:
    """The end of a benchmark: one JSON document with --json, else the machine and the medians."""
    if args.json:
        print(json.dumps(summary, default=str))
        return
    info = summary["machine"]
    print(f"\n{info['date']} · {info['cpu']} · {info['cores']} cores · Python {info['python']}")
    print(line)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
