"""The project stands on its own: a clone with nothing beside it runs its protocol tests, and
`pip install .` gives working `gv50ctl` and `gv50-gateway` commands in any folder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import free_port, wait_for

REPO = Path(__file__).resolve().parents[1]


def clean_env() -> dict[str, str]:
    """No path to this checkout, none of our settings."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PWD") and not k.startswith(("MONGODB_", "MONGOD_", "GATEWAY_"))}


def clone(into: Path) -> Path:
    """A copy of the committed project: `git clone` of a checkout; a plain copy of an unpacked one."""
    target = into / "gv50"
    if (REPO / ".git").exists():
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(target)], check=True, timeout=120)
    else:
        shutil.copytree(REPO, target, ignore=shutil.ignore_patterns(".venv", "var", "__pycache__", "*.egg-info"))
    return target


@pytest.fixture
def alone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty folder of its own (nothing beside the clone: no ../shared, no sibling checkout)."""
    return tmp_path_factory.mktemp("alone")


def test_a_clone_with_nothing_beside_it_runs_the_protocol_tests(alone: Path) -> None:
    project = clone(alone)
    assert sorted(p.name for p in alone.iterdir()) == ["gv50"]
    done = subprocess.run([sys.executable, "-m", "pytest", "tests/protocol", "-q", "-p", "no:cacheprovider"],
                          cwd=project, env=clean_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary and "skipped" not in summary


@pytest.fixture
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A throwaway venv with the project installed by pip from a clone. Its dependencies come from
    this interpreter's site-packages (a .pth file), so no download is needed."""
    root = tmp_path_factory.mktemp("pkg")
    project = clone(root)
    venv = root / "venv"
    # No pip or setuptools of its own: those of this interpreter come through the .pth file.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "gv50-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps",
                           "--no-build-isolation", "--no-index", str(project)],
                          env=clean_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    shutil.rmtree(project)  # what runs now is the installed package, not a checkout
    yield venv / "bin"


def test_pip_install_gives_both_commands_in_any_folder(installed: Path, alone: Path, mongo_uri: str,
                                                       db_name: str) -> None:
    env = clean_env()
    for command in ("gv50ctl", "gv50-gateway"):
        done = subprocess.run([str(installed / command), "--help"], cwd=alone, env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.startswith(f"usage: {command}"), done.stderr
        assert "--env-file PATH" in done.stdout
    where = subprocess.run([str(installed / "python"), "-c", "import gv50_gevent; print(gv50_gevent.__file__)"],
                           cwd=alone, env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(installed.parent)), where

    # The gateway reads .env from the folder it is started in.
    port = free_port()
    (alone / ".env").write_text(f"MONGODB_URI={mongo_uri}\nMONGODB_DB={db_name}\nGATEWAY_HOST=127.0.0.1\n"
                                f"GATEWAY_PORT={port}\nGATEWAY_ID=gw-installed\nSHUTDOWN_GRACE_S=1\n")
    gateway = subprocess.Popen([str(installed / "gv50-gateway")], cwd=alone, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        lines: list[str] = []
        wait_for(lambda: (lines.append(gateway.stdout.readline()) or "gateway gw-installed ready" in lines[-1]
                          or gateway.poll() is not None), timeout=60, interval=0, what="installed gateway ready")
        assert gateway.poll() is None, "".join(lines)
        # gv50ctl in another folder, with the same settings given by --env-file.
        elsewhere = alone / "elsewhere"
        elsewhere.mkdir()
        done = subprocess.run([str(installed / "gv50ctl"), "--env-file", str(alone / ".env"), "status"],
                              cwd=elsewhere, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and done.stdout.splitlines()[0].split() == ["gw-installed"], done.stderr
    finally:
        gateway.send_signal(signal.SIGTERM)
        out, _ = gateway.communicate(timeout=60)
    assert gateway.returncode == 0, out

    (alone / ".env").write_text("SACK_MOED=all\n")
    for command in ("gv50-gateway", "gv50ctl"):
        done = subprocess.run([str(installed / command), *(["devices"] if command == "gv50ctl" else [])], cwd=alone,
                              env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "unknown setting SACK_MOED in .env; did you mean SACK_MODE?" in done.stderr
