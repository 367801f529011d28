"""Settings from the environment and `.env`, validated by pydantic. Names follow CONTRACT.md.

`load_settings()` is the one way in for the gateway and the CLI. It refuses what would otherwise
be silently ignored, with one plain line per problem and no traceback (`SettingsError`):

- a key in the `.env` file that is not a setting (every key there is meant for us);
- an environment variable that is not a setting but looks like one of ours: its name starts with
  one of `OUR_PREFIXES`, or it is within a typo of a real name (difflib ratio >= `TYPO_RATIO`).
  Other variables (PATH, HTTP_PROXY, ...) belong to other software and are left alone;
- a value that is not allowed: the line names the setting, the value and what is allowed.

Secrets (DEVICE_PASSWORD, the password inside MONGODB_URI) never appear in those lines, nor in
`safe_dump()`, which is what the gateway logs at start.
"""

from __future__ import annotations

import difflib
import os
import socket
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from dotenv import dotenv_values
from pydantic import Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_gateway_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="forbid", frozen=True)

    # --- the contract (CONTRACT.md) ---
    MONGODB_URI: str | None = None
    MONGODB_DB: str = Field(default="gv50", min_length=1, max_length=63)
    GATEWAY_HOST: str = "0.0.0.0"
    GATEWAY_PORT: int = Field(default=5004, ge=0, le=65535)
    GATEWAY_ID: str = Field(default_factory=default_gateway_id, min_length=1, max_length=128)
    MAX_CONNECTIONS: int = Field(default=10000, ge=1, le=1_000_000)
    IDLE_TIMEOUT_S: float = Field(default=1800, gt=0)
    MAX_FRAME_BYTES: int = Field(default=4096, ge=64, le=1_048_576)
    SACK_MODE: Literal["off", "all"] = "off"
    AUTO_REGISTER: bool = True
    DEVICE_PASSWORD: str = Field(default="gv50", pattern=r"^[0-9A-Za-z]{4,6}$")
    COMMAND_ACK_TIMEOUT_S: float = Field(default=30, gt=0)
    COMMAND_MAX_ATTEMPTS: int = Field(default=3, ge=1, le=100)
    COMMAND_TTL_S: float = Field(default=86400, gt=0)
    # Fleet configuration (profiles): how fast and how often the gateway pushes wanted settings.
    FLEET_COMMANDS_PER_S: float = Field(default=25, gt=0, le=10_000,
                                        description="rollout commands this gateway queues per second at most")
    FLEET_MAX_TRIES: int = Field(default=3, ge=1, le=100,
                                 description="tries per block before a tracker's configuration is failed")
    FLEET_RETRY_S: float = Field(default=30, gt=0, le=3600,
                                 description="wait before the second try; doubles each try, at most a day")
    FLEET_RECHECK_S: float = Field(default=86400, ge=0, le=365 * 86400,
                                   description="ask a connected tracker for a settings dump when the last is older "
                                               "(and on connect); 0: on every connect only")
    RAW_RETENTION_DAYS: float = Field(default=30, gt=0)
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    LOG_FORMAT: Literal["text", "json"] = "text"
    # `majority`: a SACK and a command's state change survive a replica-set failover. `1`: the
    # primary alone confirms; faster, but what it held alone is rolled back after a failover.
    WRITE_CONCERN: Literal["majority", "1"] = "majority"
    # UDP (report modes 4 and 6) on GATEWAY_PORT too.
    UDP_ENABLED: bool = True
    # A tracker that does not hold a TCP connection open (UDP, short TCP connections, HTTP) is
    # online while it keeps sending; offline after this much silence. 1800 s is twice the
    # 15-minute heartbeat of V4.01's examples; set it to twice your trackers' longest interval
    # between messages (heartbeat or report).
    UDP_OFFLINE_AFTER_S: float = Field(default=1800, gt=0)
    # Commands go to a UDP tracker's last address only this long after its last datagram: mobile
    # networks drop idle UDP address mappings within a minute or two. Later, a command waits for
    # the tracker's next datagram (a heartbeat at the latest).
    UDP_ADDRESS_TTL_S: float = Field(default=60, gt=0)
    # V4.01's HTTP GET report mode (mode 8) on this port; unset = off. Ingest only: no pages.
    HTTP_PORT: int | None = Field(default=None, ge=0, le=65535)
    # With AUTO_REGISTER=true: new IMEIs one source address (IP) may register per minute over UDP
    # or HTTP, where a source address costs nothing to forge; the rest are archived as refused
    # (a tracker sends again). 0: new trackers register only over TCP (or in `vehicles`).
    UDP_NEW_IMEI_PER_MIN: int = Field(default=10, ge=0, le=100_000)
    # Prometheus `/metrics` on this port (docs/operations.md); unset = nothing listens. On
    # METRICS_HOST, by default GATEWAY_HOST. It serves the figures only: no pages, no input.
    METRICS_PORT: int | None = Field(default=None, ge=0, le=65535)
    METRICS_HOST: str | None = None
    # With AUTO_REGISTER=true: new IMEIs all sources together may register per minute over UDP or
    # HTTP (a flood from ever new forged addresses). Unset: 10 x UDP_NEW_IMEI_PER_MIN.
    UDP_NEW_IMEI_TOTAL_PER_MIN: int | None = Field(default=None, ge=0, le=1_000_000)

    # --- ours: bounds and tuning ---
    FRAME_TIMEOUT_S: float = Field(default=60, gt=0, description="a started frame must end within this long")
    SEND_TIMEOUT_S: float = Field(default=10, gt=0, description="a device that does not read is dropped")
    SHUTDOWN_GRACE_S: float = Field(default=10, ge=0, description="SIGTERM: how long live sessions may finish")
    WRITE_BATCH: int = Field(default=1000, ge=1, le=100_000, description="documents per insert_many")
    WRITE_INTERVAL_MS: float = Field(default=50, gt=0, description="flush a partial batch after this long")
    WRITE_BUFFER: int = Field(default=20_000, ge=1, description="queued documents before readers stop reading")
    WRITERS: int = Field(default=4, ge=1, le=64, description="writer greenlets per collection group")
    MONGODB_POOL_SIZE: int = Field(default=50, ge=1, le=1000)
    MONGOD_BIN: str | None = None
    MONGOD_DATA_DIR: str = "./var/mongodb"
    MONGOD_PORT: int = Field(default=27017, ge=1, le=65535)
    # WiredTiger's cache. At 0.5 GB, mongod spent half its CPU evicting and re-reading index
    # pages under 12,000 msgs/s; at 2 GB that work mostly goes (docs/benchmarks.md).
    MONGOD_CACHE_GB: float = Field(default=2.0, ge=0.25, le=1024)
    REUSE_PORT: bool = True
    GATEWAY_ALIVE_INTERVAL_S: float = Field(default=10, gt=0, description="how often this gateway says it is alive")
    GATEWAY_DEAD_AFTER_S: float = Field(default=60, gt=0, description="a gateway silent this long has lost its devices")
    LAST_SEEN_INTERVAL_S: float = Field(default=1.0, ge=0, description="coalesce devices.last_seen_at writes")
    TELEMETRY_INTERVAL_S: float = Field(default=10.0, ge=0, description="fixed reports update devices.telemetry "
                                        "at most this often, unless the device status changed")
    ADMISSION_CACHE_S: float = Field(default=30, ge=0, description="remember a vehicles check this long")
    UDP_WORKERS: int = Field(default=1000, ge=1, le=100_000, description="datagrams handled at once")
    HTTP_WORKERS: int = Field(default=1000, ge=1, le=100_000, description="HTTP requests handled at once")

    @field_validator("GATEWAY_ID")
    @classmethod
    def _no_dollar(cls, v: str) -> str:
        if v.startswith("$") or "\x00" in v:
            raise ValueError("GATEWAY_ID must not start with '$' or contain NUL")
        return v

    @field_validator("UDP_NEW_IMEI_TOTAL_PER_MIN")
    @classmethod
    def _total_not_below_one_source(cls, v: int | None, info: ValidationInfo) -> int | None:
        per_source = info.data.get("UDP_NEW_IMEI_PER_MIN")
        if v is not None and isinstance(per_source, int) and v < per_source:
            raise ValueError(f"must be at least UDP_NEW_IMEI_PER_MIN ({per_source}): it is the limit of all "
                             "sources together")
        return v

    @property
    def new_imei_total_per_min(self) -> int:
        """UDP_NEW_IMEI_TOTAL_PER_MIN, or its default: 10 x UDP_NEW_IMEI_PER_MIN."""
        total = self.UDP_NEW_IMEI_TOTAL_PER_MIN
        return 10 * self.UDP_NEW_IMEI_PER_MIN if total is None else total

    def redacted_uri(self) -> str | None:
        return redact_uri(self.MONGODB_URI)

    def safe_dump(self) -> dict[str, object]:
        """Every setting, fit for a log line: the MongoDB password never appears."""
        data = self.model_dump()
        data["MONGODB_URI"] = self.redacted_uri()
        for name in SECRET_SETTINGS:
            if data.get(name) is not None:
                data[name] = MASK
        return data


def redact_uri(uri: str | None) -> str | None:
    """`mongodb://user:secret@host/` -> `mongodb://user:***@host/`."""
    if not uri:
        return uri
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable MongoDB URI>"
    if parts.password is None:
        return uri
    userinfo, _, hosts = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))


# --- loading, strictly ---

MASK = "***"
SECRET_SETTINGS = ("DEVICE_PASSWORD",)
# Environment variables with these prefixes are ours: an unknown one is a typo, not someone else's.
OUR_PREFIXES = ("GATEWAY_", "MONGOD_", "SACK_", "COMMAND_", "WRITE_", "UDP_", "FLEET_")
TYPO_RATIO = 0.85
PATTERN_WORDS = {"DEVICE_PASSWORD": "must be 4 to 6 letters or digits (the tracker's own rule)"}
DEFAULT_ENV_FILE = ".env"


class SettingsError(ValueError):
    """The settings cannot be used; the message is one plain line per problem."""


def closest_setting(name: str) -> str | None:
    match = difflib.get_close_matches(name.upper(), list(Settings.model_fields), n=1, cutoff=0.6)
    return match[0] if match else None


def unknown_setting_line(name: str, where: str) -> str:
    hint = closest_setting(name)
    return f"unknown setting {name} in {where}" + (f"; did you mean {hint}?" if hint else "")


def looks_like_ours(name: str) -> bool:
    upper = name.upper()
    if upper in Settings.model_fields:
        return False
    if upper.startswith(OUR_PREFIXES):
        return True
    return bool(difflib.get_close_matches(upper, list(Settings.model_fields), n=1, cutoff=TYPO_RATIO))


def shown_value(name: str, value: Any) -> str:
    if name in SECRET_SETTINGS:
        return MASK
    if name == "MONGODB_URI" and isinstance(value, str):
        return repr(redact_uri(value))
    return repr(value)


def allowed(error: Mapping[str, Any]) -> str:
    """What pydantic says is allowed, in lower-case plain words (no URLs, no type names)."""
    message = str(error.get("msg", "not allowed"))
    ctx = error.get("ctx") or {}
    if error.get("type") == "string_pattern_mismatch":
        name = str(error["loc"][0]) if error.get("loc") else ""
        message = PATTERN_WORDS.get(name) or f"must match {ctx.get('pattern')}"
    message = message.removeprefix("Value error, ")
    return message[:1].lower() + message[1:]


def load_settings(env_file: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None,
                  **overrides: Any) -> Settings:
    """The settings from the environment and an env file (`env_file`, else `.env` in the current
    folder if there is one), checked strictly. Raises SettingsError with plain lines."""
    given = {} if environ is None else {k.upper(): v for k, v in environ.items() if k.upper() in Settings.model_fields}
    overrides = {**given, **overrides}  # an explicit `environ` (tests) stands for the process environment
    environ = os.environ if environ is None else environ
    explicit = env_file is not None
    path = Path(env_file) if env_file is not None else Path(DEFAULT_ENV_FILE)
    if explicit and not path.is_file():
        raise SettingsError(f"env file {path} not found (from --env-file)")
    file_values: dict[str, str | None] = dict(dotenv_values(path)) if path.is_file() else {}
    where = str(path) if explicit else DEFAULT_ENV_FILE
    problems = [unknown_setting_line(key, where) for key in file_values if key.upper() not in Settings.model_fields]
    problems += [unknown_setting_line(key, "the environment") for key in environ if looks_like_ours(key)]
    if problems:
        raise SettingsError("\n".join(problems))
    try:
        return Settings(_env_file=path if path.is_file() else None, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error.get("loc") else "?"
            source = "the environment" if name in environ else where if name in file_values else \
                "the default" if name not in overrides else "the environment"
            lines.append(f"bad setting {name}={shown_value(name, error.get('input'))} (from {source}): "
                         f"{allowed(error)}")
        raise SettingsError("\n".join(lines)) from None
