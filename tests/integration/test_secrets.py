"""No setting and no log line shows the MongoDB password from MONGODB_URI."""

from __future__ import annotations

import json

from pymongo import MongoClient

from tests.support import wait_for

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


DEVICE_PASSWORD = "Zq81Kx"
APN_PASSWORD = "pa55word"


def test_device_password_never_reaches_the_log(start_gateway) -> None:
    """DEVICE_PASSWORD is in the settings line, in every command sent, and in whatever a device
    echoes back: not one log line may show it, in text or JSON, at DEBUG."""
    for n, fmt in enumerate(("text", "json")):
        gw = start_gateway(DEVICE_PASSWORD=DEVICE_PASSWORD, LOG_FORMAT=fmt, LOG_LEVEL="DEBUG")
        imei = f"86000000000009{n}"  # one device per run: the first run leaves its command `sent`
        with gw.connect() as device:
            device.send_line(f"+ACK:GTHBD,090302,{imei},,20170718163021,0001")
            device.read_until(b"+SACK:GTHBD")
            cid = gw.db.commands.insert_one({"imei": imei, "type": "reboot"}).inserted_id
            device.read_until(f"AT+GTRTO={DEVICE_PASSWORD},3,".encode())  # the command carries it
            # A device that echoes a command back: an invalid frame, which the gateway logs.
            device.send_line(f"AT+GTOUT={DEVICE_PASSWORD},1,0,0,,,,1,,,,,,0001")
            wait_for(lambda: "invalid frame" in gw.log(), what="the invalid frame logged")
            wait_for(lambda: gw.db.commands.find_one({"_id": cid, "status": "sent"}), what="command sent")
            # A set_apn line echoed back: its APN password is masked too.
            device.send_line(f"AT+GTBSI={DEVICE_PASSWORD},m2m.example,,{APN_PASSWORD},,,,,0002")
            wait_for(lambda: "AT+GTBSI=***,m2m.example,,***," in gw.log(), what="the echoed BSI line logged")
        assert gw.terminate() == 0
        log = gw.log()
        assert "'DEVICE_PASSWORD': '***'" in log and "AT+GTOUT=***," in log
        assert DEVICE_PASSWORD not in log and APN_PASSWORD not in log
