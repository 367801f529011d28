"""Plain words for what goes wrong between us and MongoDB, each with the one thing to do.

The driver's own messages describe its view (server selection, topology types): "replica set
named 'rs0' but this node belongs to a set named 'None'" means a standalone mongod answered, and
a timeout may mean nothing listens at all. Here we look once more, directly, and say which.
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

from pymongo import MongoClient
from pymongo.errors import PyMongoError

from ..config import redact_uri

PROBE_TIMEOUT_S = 2.0
INITIATE_HINT = ("mongosh \"mongodb://{host}/?directConnection=true\" --eval "
                 "'rs.initiate({{_id: \"rs0\", members: [{{_id: 0, host: \"{host}\"}}]}})'")


class MongoProblem(RuntimeError):
    """MongoDB cannot be used; the message says why and what to do."""


def first_host(uri: str) -> tuple[str, int] | None:
    """The first host of a plain `mongodb://` URI (a `mongodb+srv://` one has no port to probe)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return None
    if parts.scheme != "mongodb":
        return None
    hosts = parts.netloc.rpartition("@")[2].split(",")[0]
    host, _, port = hosts.rpartition(":") if hosts.count(":") == 1 else (hosts, "", "")
    try:
        return (host or hosts or "localhost", int(port or 27017))
    except ValueError:
        return None


def answers(host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def replica_set_problem(hello: dict[str, Any], shown: str, host: str) -> str | None:
    """Why a server that answered `hello` cannot serve us, or None."""
    if hello.get("setName") or hello.get("msg") == "isdbgrid":
        return None
    hint = INITIATE_HINT.format(host=host)
    if hello.get("isreplicaset"):
        return (f"MongoDB at {shown} was started as a replica set member but the set was never initiated. "
                f"Initiate it once: {hint}")
    return (f"MongoDB at {shown} is a single server, not a replica set; gv50 needs one because commands are "
            f"followed with a change stream. Restart mongod with --replSet rs0, then initiate it once: {hint}")


def explain(uri: str, error: BaseException | None, *, embedded: bool) -> str:
    """One plain message for a MongoDB that could not be used."""
    shown = redact_uri(uri) or uri
    target = first_host(uri)
    if target is not None:
        host, port = target
        where = f"{host}:{port}"
        if not answers(host, port):
            if embedded:
                return (f"cannot reach the embedded MongoDB: nothing answers at {where}. It runs only while a "
                        f"gateway runs: start the gateway (gv50-gateway or scripts/run-gateway), or give "
                        f"MONGODB_URI (or --uri)")
            return (f"cannot reach MongoDB at {shown}: nothing answers at {where}. Start MongoDB there, or fix "
                    f"MONGODB_URI (or --uri)")
        try:
            probe: MongoClient[dict[str, Any]] = MongoClient(
                host, port, directConnection=True, serverSelectionTimeoutMS=int(PROBE_TIMEOUT_S * 1000),
                connectTimeoutMS=int(PROBE_TIMEOUT_S * 1000))
            try:
                hello = probe.admin.command("hello")
            finally:
                probe.close()
        except PyMongoError:
            hello = None
        if hello is not None:
            problem = replica_set_problem(hello, shown, where)
            if problem is not None:
                return problem
    reason = str(error) if error is not None else "no answer"
    for cut in (" (configured timeouts", ", Timeout: "):
        reason = reason.split(cut)[0]
    secret = urlsplit(uri).password if target is not None else None
    if secret:
        reason = reason.replace(secret, "***")
    return f"cannot reach MongoDB at {shown}: {reason[:300]}"


def require_replica_set(client: MongoClient[Any], uri: str) -> None:
    """Raise MongoProblem unless `client` talks to a replica set (or a sharded cluster)."""
    hello = client.admin.command("hello")
    target = first_host(uri)
    problem = replica_set_problem(hello, redact_uri(uri) or uri, f"{target[0]}:{target[1]}" if target else "HOST")
    if problem is not None:
        raise MongoProblem(problem)
