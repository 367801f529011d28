"""The deployment files: supervisord.conf loads with supervisor's own parser and says what we promise;
.env.example lists every contract setting with a default the gateway accepts."""

from __future__ import annotations

import re
import signal
from pathlib import Path

from supervisor.options import ServerOptions

from gv50_gevent.config import Settings

REPO = Path(__file__).resolve().parents[1]
CONTRACT_SETTINGS = [
    "MONGODB_URI", "MONGODB_DB", "GATEWAY_HOST", "GATEWAY_PORT", "GATEWAY_ID", "MAX_CONNECTIONS", "IDLE_TIMEOUT_S",
    "MAX_FRAME_BYTES", "SACK_MODE", "AUTO_REGISTER", "DEVICE_PASSWORD", "COMMAND_ACK_TIMEOUT_S",
    "COMMAND_MAX_ATTEMPTS", "COMMAND_TTL_S", "RAW_RETENTION_DAYS", "LOG_LEVEL", "LOG_FORMAT",
]


def test_supervisord_conf_parses_and_stops_gracefully() -> None:
    options = ServerOptions()
    options.configfile = str(REPO / "supervisord.conf")
    options.process_config(do_usage=False)
    assert options.minfds >= 20000
    [group] = [g for g in options.process_group_configs if g.name == "gv50_gateway"]
    [proc] = group.process_configs
    assert proc.command.endswith("run_server.py")
    assert proc.stopsignal == signal.SIGTERM
    assert proc.stopwaitsecs > Settings().SHUTDOWN_GRACE_S + 5
    assert proc.stdout_logfile_maxbytes > 0 and proc.stdout_logfile_backups > 0
    assert "numprocs=2" in (REPO / "supervisord.conf").read_text()  # the documented multi-process recipe


def test_env_example_lists_every_contract_setting_with_a_valid_default(monkeypatch) -> None:
    text = (REPO / "config" / ".env.example").read_text()
    names = set(re.findall(r"^#?\s*([A-Z_]+)=", text, flags=re.M))
    assert set(CONTRACT_SETTINGS) <= names
    values = dict(re.findall(r"^([A-Z_]+)=(.*)$", text, flags=re.M))
    for name in Settings.model_fields:
        monkeypatch.delenv(name, raising=False)
    defaults = Settings(_env_file=None)
    for name, value in values.items():
        assert name in Settings.model_fields, f"{name} in .env.example is not a setting"
        monkeypatch.setenv(name, value)
    example = Settings(_env_file=None)
    for name in values:  # every uncommented line states the real default
        assert getattr(example, name) == getattr(defaults, name), name
