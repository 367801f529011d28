"""The operator CLI as a package: one IMEI rule and one set of statuses for the whole product, no
gevent in the CLI, and a command queued or cancelled by the CLI written by the command room's
own functions."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gv50_gevent.cli import base
from gv50_gevent.commands import lifecycle, registry, store
from gv50_gevent.protocol.fields import is_imei
from tests.support import REPO


@pytest.mark.parametrize("imei, ok", [("865083030000001", True), ("00000000000000", True),
                                      ("8650830300000", False), ("8650830300000011", False),
                                      ("86508303000000X", False), (865083030000001, False)])
def test_one_imei_rule_for_parser_cli_and_commands(imei: object, ok: bool) -> None:
    # The HTTP GET examples carry a 14-digit unique ID, which the parser takes: so do the CLI and the command room.
    assert is_imei(imei) is ok
    assert (store.problem_of({"imei": imei, "type": "locate", "params": {}}) is None) is ok
    if isinstance(imei, str):
        if ok:
            assert base.check_imei(imei) == imei
        else:
            with pytest.raises(base.CliError):
                base.check_imei(imei)


def test_statuses_live_in_one_place() -> None:
    assert registry.OPEN_STATUSES is lifecycle.OPEN_STATUSES
    assert set(lifecycle.STATUSES) == {"pending", "sent", "acknowledged", "failed", "expired", "cancelled"}
    assert not set(lifecycle.OPEN_STATUSES) & set(lifecycle.FINAL_STATUSES)
    for module in ("gv50_gevent.cli.base", "gv50_gevent.cli.commands", "gv50_gevent.commands.store"):
        source = open(REPO / (module.replace(".", "/") + ".py")).read()
        assert "acknowledged\", \"failed\"" not in source and "IMEI_RE" not in source, module


def test_the_cli_imports_no_gevent() -> None:
    code = "import sys, gv50_gevent.cli; sys.exit(1 if any(m.split('.')[0] == 'gevent' for m in sys.modules) else 0)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
