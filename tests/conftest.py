"""Shared fixtures: a real mongod (a single-node replica set from the same launcher the gateway
uses) for the whole session, and gateways started as real `python run_server.py` processes."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient

from gv50_gevent.storage.mongod import EmbeddedMongod

from .support import GatewayProcess, free_port

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", help="run the long variants (10^6 fuzz inputs, longer outages)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("--long"):
        os.environ["GV50_LONG_TESTS"] = "1"


@pytest.fixture(scope="session")
def mongo_uri() -> Iterator[str]:
    """A real mongod for the whole run. MONGODB_URI_TEST points the suite at an existing replica set."""
    given = os.environ.get("MONGODB_URI_TEST")
    if given:
        yield given
        return
    data_dir = tempfile.mkdtemp(prefix="gv50-test-mongod-")
    mongod = EmbeddedMongod(data_dir, free_port(), cache_gb=0.25)
    uri = mongod.start()
    try:
        yield uri
    finally:
        mongod.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def mongo(mongo_uri: str) -> Iterator[MongoClient]:
    client: MongoClient = MongoClient(mongo_uri, tz_aware=True)
    yield client
    client.close()


@pytest.fixture
def db_name() -> str:
    return f"gv50_test_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def start_gateway(mongo_uri: str, mongo: MongoClient, db_name: str) -> Iterator:
    """Start a gateway process with extra settings; stopped (SIGTERM) at teardown."""
    started: list[GatewayProcess] = []

    def start(**env: str) -> GatewayProcess:
        settings = {"MONGODB_URI": mongo_uri, "MONGODB_DB": db_name, "GATEWAY_HOST": "127.0.0.1",
                    "GATEWAY_PORT": str(free_port()), "LOG_LEVEL": "INFO", "SHUTDOWN_GRACE_S": "3",
                    "LAST_SEEN_INTERVAL_S": "0.1", "WRITE_INTERVAL_MS": "10"}
        settings.update(env)
        proc = GatewayProcess(settings, mongo[settings["MONGODB_DB"]])
        started.append(proc)
        proc.start()
        return proc

    yield start
    for proc in started:
        proc.stop()
