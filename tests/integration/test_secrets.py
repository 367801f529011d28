"""No setting and no log line shows the MongoDB password from MONGODB_URI."""

from __future__ import annotations

import json

from pymongo import MongoClient

from gv50_gevent.config import redact_uri
from gv50_gevent.logs import redact

PASSWORD = "S3cret-Pa55word"


def test_redaction_helpers() -> None:
    uri = f"mongodb://gw:{PASSWORD}@db1:27017,db2:27017/?replicaSet=rs0"
    assert redact_uri(uri) == "mongodb://gw:***@db1:27017,db2:27017/?replicaSet=rs0"
    assert PASSWORD not in redact(f"cannot connect to {uri}: timeout")
    assert redact_uri("mongodb://db1/?replicaSet=rs0") == "mongodb://db1/?replicaSet=rs0"


def test_gateway_logs_never_show_the_password(start_gateway, mongo: MongoClient, mongo_uri: str) -> None:
    try:
        mongo.admin.command("createUser", "gw", pwd=PASSWORD, roles=["root"])
    except Exception as exc:  # the user survives from an earlier test in this session
        assert "already exists" in str(exc)
    with_password = mongo_uri.replace("mongodb://", f"mongodb://gw:{PASSWORD}@") + "&authSource=admin"
    for fmt in ("text", "json"):
        gw = start_gateway(MONGODB_URI=with_password, LOG_FORMAT=fmt, LOG_LEVEL="DEBUG")
        with gw.connect() as device:
            device.send_line("+ACK:GTHBD,090302,860000000000090,,20170718163021,0001")
            device.read_until(b"+SACK:GTHBD")
        assert gw.terminate() == 0
        log = gw.log()
        assert "gw:***@" in log  # the settings line names the URI, redacted
        assert PASSWORD not in log
        if fmt == "json":
            lines = [line for line in log.splitlines() if line.startswith("{")]
            assert lines and all(json.loads(line)["level"] for line in lines)
