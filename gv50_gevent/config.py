"""Settings from the environment and `.env`, validated by pydantic. Names follow CONTRACT.md."""

from __future__ import annotations

import os
import socket
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_gateway_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True)

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
    ADMISSION_CACHE_S: float = Field(default=30, ge=0, description="remember a vehicles check this long")
    UDP_WORKERS: int = Field(default=1000, ge=1, le=100_000, description="datagrams handled at once")
    HTTP_WORKERS: int = Field(default=1000, ge=1, le=100_000, description="HTTP requests handled at once")

    @field_validator("GATEWAY_ID")
    @classmethod
    def _no_dollar(cls, v: str) -> str:
        if v.startswith("$") or "\x00" in v:
            raise ValueError("GATEWAY_ID must not start with '$' or contain NUL")
        return v

    def redacted_uri(self) -> str | None:
        return redact_uri(self.MONGODB_URI)

    def safe_dump(self) -> dict[str, object]:
        """Every setting, fit for a log line: the MongoDB password never appears."""
        data = self.model_dump()
        data["MONGODB_URI"] = self.redacted_uri()
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
