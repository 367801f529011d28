"""LOG_FORMAT=json: a line about a tracker, a connection or a command carries `imei`, `remote_addr`,
`gateway_id` and `command_id` as fields of their own, redacted like the message; text stays as it was."""

from __future__ import annotations

import json
import logging
import time
from datetime import datetime, timezone

import pytest
from pymongo import MongoClient

from gv50_gevent.cli.base import command_view
from gv50_gevent.logs import GatewayId, JsonFormatter, RedactingFormatter, about, redact
from gv50_gevent.protocol.commands import encode_command
from gv50_gevent.storage.config_shadow import ConfigShadow, _Assembly
from gv50_gevent.storage.devices import Devices
from gv50_gevent.storage.writer import BatchWriter
from tests.support import free_port, wait_for

URI_PASSWORD = "S3cret-Pa55word"
DEVICE_PASSWORD = "Zq81Kx"


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("gv50_gevent.test", logging.INFO, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    GatewayId("gw-7").filter(rec)
    return rec


def test_fields_of_their_own_and_masked() -> None:
    rec = record("connected %s from %s", "865083030000001", "10.0.0.5:40000",
                 **about("865083030000001", "10.0.0.5:40000", command_id="66f0c0ffee"))
    entry = json.loads(JsonFormatter().format(rec))
    assert entry["msg"] == "connected 865083030000001 from 10.0.0.5:40000"
    assert (entry["imei"], entry["remote_addr"], entry["gateway_id"], entry["command_id"]) == (
        "865083030000001", "10.0.0.5:40000", "gw-7", "66f0c0ffee")
    # The text format shows the message only, as before.
    text = RedactingFormatter("%(levelname)s %(name)s: %(message)s").format(rec)
    assert text == "INFO gv50_gevent.test: connected 865083030000001 from 10.0.0.5:40000"
    # A secret in a field is masked there too, and the line stays valid JSON (the masking of the
    # whole line could otherwise eat a closing quote).
    rec = record("odd line", **about(f"AT+GTOUT={DEVICE_PASSWORD}", f"mongodb://gw:{URI_PASSWORD}@db1:27017",
                                     command_id=f"AT+GTRTO={DEVICE_PASSWORD}"))
    line = JsonFormatter().format(rec)
    entry = json.loads(line)
    assert DEVICE_PASSWORD not in line and URI_PASSWORD not in line
    assert entry["imei"] == "AT+GTOUT=***" and entry["command_id"] == "AT+GTRTO=***"
    assert entry["remote_addr"] == "mongodb://gw:***@db1:27017"
    # A line about nothing in particular carries only the gateway's id.
    assert set(json.loads(JsonFormatter().format(record("listening")))) == {"at", "level", "logger", "msg",
                                                                             "gateway_id"}


def test_gateway_json_lines_carry_the_fields(start_gateway) -> None:
    gw = start_gateway(LOG_FORMAT="json", GATEWAY_ID="gw-logs", DEVICE_PASSWORD=DEVICE_PASSWORD)
    imei = "860000000000071"
    with gw.connect() as device:
        device.send_line(f"+ACK:GTHBD,090302,{imei},,20170718163021,0001")
        device.read_until(b"+SACK:GTHBD")
        local = "%s:%d" % device.sock.getsockname()[:2]
        cid = gw.db.commands.insert_one({"imei": imei, "type": "reboot"}).inserted_id
        device.read_until(f"AT+GTRTO={DEVICE_PASSWORD},3,".encode())

        def lines() -> list[dict]:
            return [json.loads(line) for line in gw.log().splitlines() if line.startswith("{")]

        sent = wait_for(lambda: [e for e in lines() if e.get("command_id") == str(cid) and "-> sent" in e["msg"]],
                        what="the command's sent line")
    assert gw.terminate() == 0
    assert sent[0]["imei"] == imei and sent[0]["gateway_id"] == "gw-logs"
    connected = [e for e in lines() if e["msg"].startswith(f"connected {imei}")]
    assert connected and connected[0]["imei"] == imei and connected[0]["remote_addr"] == local
    assert connected[0]["gateway_id"] == "gw-logs" and "command_id" not in connected[0]
    disconnected = [e for e in lines() if e["msg"].startswith(f"disconnected {imei}")]
    assert disconnected and disconnected[0]["remote_addr"] == local
    assert DEVICE_PASSWORD not in gw.log()


def test_the_apn_password_of_a_bsi_line_is_masked() -> None:
    apn_password = "pa55word"
    line = encode_command("set_apn", {"apn": "m2m.example", "password": apn_password}, password=DEVICE_PASSWORD,
                          serial="1A2C").decode()
    assert redact(f"sent {line} to 8650830") == "sent AT+GTBSI=***,m2m.example,,***,,,,,1A2C$ to 8650830"
    rec = record("sent %s", line, **about("865083030000001", command_id=line))
    text = RedactingFormatter("%(message)s").format(rec) + JsonFormatter().format(rec)
    assert apn_password not in text and DEVICE_PASSWORD not in text
    # An empty APN password clears it on the device: it stays empty (no *** that says there was one).
    assert redact("AT+GTBSI=gv50,apn,user,,,,,,0001$") == "AT+GTBSI=***,apn,user,,,,,,0001$"
    # Another command's fourth field is not a secret.
    assert redact("AT+GTRTO=gv50,2,BSI,,,,,0001$") == "AT+GTRTO=***,2,BSI,,,,,0001$"


def test_a_raw_command_is_shown_without_its_passwords() -> None:
    doc = {"_id": "c1", "imei": "865083030000001", "type": "raw",
           "params": {"command": f"AT+GTBSI={DEVICE_PASSWORD},apn,,pa55word,,,,,0001$"}}
    view = command_view(doc)
    assert view["params"]["command"] == "AT+GTBSI=***,apn,,***,,,,,0001$"
    assert doc["params"]["command"].startswith(f"AT+GTBSI={DEVICE_PASSWORD}")  # the document itself is untouched


def test_storage_lines_about_one_tracker_carry_its_imei(caplog: pytest.LogCaptureFixture) -> None:
    # A MongoDB nobody answers at (nothing listens on the port): the writes fail as in an outage.
    client: MongoClient = MongoClient(f"mongodb://127.0.0.1:{free_port()}/?serverSelectionTimeoutMS=200",
                                      connect=False)
    db = client["gv50_log_fields"]
    imei, addr = "865083030000009", "10.0.0.5:40000"
    try:
        with caplog.at_level(logging.INFO, logger="gv50_gevent"):
            shadow = ConfigShadow(db, "gw-7")  # a settings dump that never completes
            shadow._assembling[imei] = _Assembly("GTALM", time.monotonic() - 3600)
            shadow._expire(time.monotonic())
            Devices(db, "gw-7").disconnected(imei, "s1", datetime.now(timezone.utc))  # MongoDB down
            BatchWriter(db)._refuse_unencodable("positions", [{"imei": imei, "remote_addr": addr, "x": object()}], [])
    finally:
        client.close()
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name.startswith("gv50_gevent")]
    assert [(line["logger"].rsplit(".", 1)[1], line.get("imei")) for line in lines] == [
        ("config_shadow", imei), ("devices", imei), ("writer", imei)]
    assert lines[2]["remote_addr"] == addr
    assert all(line["msg"].startswith(f"{imei}: ") for line in lines)  # the text still names the tracker
