"""Fleet configuration end to end: a real mongod, real gateway processes, and simulated trackers on
real sockets that keep their own settings, apply what they acknowledge and answer get_config with
GTALM / GTALS dumps of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import gevent
from gevent import subprocess as gsubprocess
import pytest
from pymongo.database import Database

from gv50_gevent.simulator import SimTracker
from tests.integration.test_transports import UdpTracker, http_get
from tests.support import REPO, GatewayProcess, free_port, wait_for

# A long ACK timeout: the exact command counts below must not depend on how fast a loaded machine
# answers. Only a test that needs a command to fail sets a short one (FAILING).
FAST = {"COMMAND_ACK_TIMEOUT_S": "20", "COMMAND_MAX_ATTEMPTS": "1", "FLEET_MAX_TRIES": "3", "FLEET_RETRY_S": "0.3",
        "FLEET_COMMANDS_PER_S": "1000", "SACK_MODE": "off"}
FAILING = {**FAST, "COMMAND_ACK_TIMEOUT_S": "4", "FLEET_MAX_TRIES": "2"}
PROFILE = {"_id": "city", "settings": {"fri": {"mode": 1, "send_interval_s": 30}, "hrm": {"hbd_mask": "E7"}},
           "applies_to": {"all": True}}


def imei_of(n: int) -> str:
    return f"86480203{n:07d}"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    return wait_for(predicate, timeout, 0.1, what, sleep=gevent.sleep)


def states(db: Database, imeis: list[str]) -> dict[str, str | None]:
    docs = db.devices.find({"_id": {"$in": imeis}}, {"config_state": 1})
    found = {d["_id"]: (d.get("config_state") or {}).get("state") for d in docs}
    return {imei: found.get(imei) for imei in imeis}


def all_in(db: Database, imeis: list[str], state: str) -> bool:
    return all(s == state for s in states(db, imeis).values())


@pytest.fixture
def trackers() -> Iterator[list[SimTracker]]:
    made: list[SimTracker] = []
    yield made
    for t in made:
        t.disconnect()


def connect_all(gw: GatewayProcess, fleet: list[SimTracker]) -> None:
    for t in fleet:
        t.connect("127.0.0.1", gw.port)


def test_profile_converges_on_50_trackers_offline_ones_on_connect_and_a_rejecting_one_fails(
        start_gateway: Any, trackers: list[SimTracker]) -> None:
    gw = start_gateway(**FAILING)
    db = gw.db
    fleet = [SimTracker(imei_of(n)) for n in range(50)]
    trackers.extend(fleet)
    rejecting = fleet[7]
    rejecting.rejects.add("FRI")
    online, offline = fleet[:40], fleet[40:]
    connect_all(gw, online)
    wait_until(lambda: db.devices.count_documents({"online": True}) == 40, 20, "40 trackers online")
    for t in offline:  # seen once before, then gone
        t.connect("127.0.0.1", gw.port)
    wait_until(lambda: db.devices.count_documents({"online": True}) == 50, 20, "50 online")
    for t in offline:
        t.disconnect()
    wait_until(lambda: db.devices.count_documents({"online": True}) == 40, 20, "10 offline again")

    db.profiles.insert_one({**PROFILE, "created_at": utcnow(), "updated_at": utcnow()})
    others = [t.imei for t in online if t is not rejecting]
    wait_until(lambda: all_in(db, others, "in_sync"), 60, "39 online trackers in sync")
    wait_until(lambda: all_in(db, [t.imei for t in offline], "waiting_offline"), 20, "10 waiting offline")
    wait_until(lambda: all_in(db, [rejecting.imei], "failed"), 30, "the rejecting tracker failed")
    failed = db.devices.find_one({"_id": rejecting.imei})["config_state"]
    assert "FRI" in failed["reason"] and "no ACK" in failed["reason"], failed
    assert failed["tries"]["fri"] == 2

    connect_all(gw, offline)
    wait_until(lambda: all_in(db, [t.imei for t in offline], "in_sync"), 60, "the 10 latecomers in sync")

    for t in fleet:
        if t is rejecting:
            continue
        # The tracker's own settings changed, and the gateway learned it from a dump.
        assert t.settings["FRI"][7] == "30" and t.settings["HRM"][6] == "E7", t.imei
        dev = db.devices.find_one({"_id": t.imei})
        assert dev["config"]["fri"]["source"] == "report" and dev["config"]["fri"]["send_interval_s"] == 30
        assert dev["config_target"]["fri"]["send_interval_s"] == {"value": 30, "profile": "city", "via": "all"}
    sent = list(db.commands.find({"imei": {"$in": others}}, {"type": 1, "source": 1, "status": 1}))
    assert all(c["source"] == "profile:city" and c["status"] == "acknowledged" for c in sent)
    # Two blocks changed, plus one dump: three commands per tracker.
    assert len(sent) == 3 * len(others), len(sent)

    # The operator fixes the tracker and asks for another go.
    rejecting.rejects.clear()
    out = gv50ctl(gw, "rollout", "city", "--retry-failed", code=1)
    assert "1 failed trackers will be tried again" in out.stderr
    wait_until(lambda: all_in(db, [rejecting.imei], "in_sync"), 30, "the fixed tracker in sync")
    assert rejecting.settings["FRI"][7] == "30"


def converge(db: Database, fleet: list[SimTracker], timeout: float = 60) -> None:
    db.profiles.insert_one({**PROFILE, "created_at": utcnow(), "updated_at": utcnow()})
    wait_until(lambda: all_in(db, [t.imei for t in fleet], "in_sync"), timeout, "every tracker in sync")


def test_a_factory_reset_is_detected_as_drift_and_repaired(start_gateway: Any, trackers: list[SimTracker]) -> None:
    gw = start_gateway(**FAST, FLEET_RECHECK_S="0")
    db = gw.db
    fleet = [SimTracker(imei_of(100 + n)) for n in range(3)]
    trackers.extend(fleet)
    connect_all(gw, fleet)
    converge(db, fleet)
    reset = fleet[0]
    before = db.commands.count_documents({"imei": reset.imei, "type": "set_report_interval"})
    reset.factory_reset()  # back to a 60 s interval; the tracker restarts and reconnects
    reset.disconnect()
    wait_until(lambda: not db.devices.find_one({"_id": reset.imei})["online"], 10, "the reset tracker offline")
    reset.connect("127.0.0.1", gw.port)
    wait_until(lambda: f"{reset.imei} in_sync -> drifted" in gw.log(), 30, "the drift noticed")
    wait_until(lambda: all_in(db, [reset.imei], "in_sync") and reset.settings["FRI"][7] == "30", 30,
               "the reset tracker repaired")
    assert db.commands.count_documents({"imei": reset.imei, "type": "set_report_interval"}) == before + 1
    assert reset.settings["HRM"][6] == "E7"
    # The others were left alone.
    assert all(db.commands.count_documents({"imei": t.imei}) == 3 for t in fleet[1:])


def test_an_operator_block_goes_out_before_the_rollouts_next_command(start_gateway: Any,
                                                                      trackers: list[SimTracker]) -> None:
    gw = start_gateway(**{**FAST, "COMMAND_ACK_TIMEOUT_S": "5"})
    db = gw.db
    t = SimTracker(imei_of(200))
    trackers.append(t)
    connect_all(gw, [t])
    wait_until(lambda: db.devices.find_one({"_id": t.imei, "online": True}), 10, "online")
    t.rejects.add("FRI")  # hold the rollout's first command unanswered while the operator acts
    db.profiles.insert_one({**PROFILE, "created_at": utcnow(), "updated_at": utcnow()})
    wait_until(lambda: len(t.commands) == 1, 10, "the rollout's first command at the tracker")
    db.commands.insert_one({"imei": t.imei, "type": "block"})
    t.rejects.clear()
    wait_until(lambda: all_in(db, [t.imei], "in_sync"), 30, "in sync")
    kinds = [raw.split("=")[0] for _, _, raw in t.commands]
    # FRI (unanswered, so resent after the block), then the rest of the rollout.
    assert kinds[:3] == ["AT+GTFRI", "AT+GTOUT", "AT+GTFRI"], kinds
    assert kinds[3:] == ["AT+GTHRM", "AT+GTRTO"], kinds
    assert db.commands.find_one({"type": "block"})["status"] == "acknowledged"


def test_two_gateways_each_send_the_rollout_of_its_own_trackers_once(start_gateway: Any,
                                                                   trackers: list[SimTracker]) -> None:
    gws = [start_gateway(**FAST, GATEWAY_ID="gw-a"), start_gateway(**FAST, GATEWAY_ID="gw-b")]
    db = gws[0].db
    fleet = [SimTracker(imei_of(300 + n)) for n in range(20)]
    trackers.extend(fleet)
    for n, t in enumerate(fleet):
        t.connect("127.0.0.1", gws[n % 2].port)
    wait_until(lambda: db.devices.count_documents({"online": True}) == 20, 20, "20 online")
    converge(db, fleet)
    for n, t in enumerate(fleet):
        sent = list(db.commands.find({"imei": t.imei}))
        assert len(sent) == 3, (t.imei, sent)
        assert {c["gateway_id"] for c in sent} == {f"gw-{'ab'[n % 2]}"}
        assert all(c["attempts"] == 1 and c["source"] == "profile:city" for c in sent)
        assert len(t.commands) == 3  # the tracker itself got each once


def gv50ctl(gw: GatewayProcess, *args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MONGODB_", "MONGOD_"))}
    env.update(MONGODB_URI=gw.settings["MONGODB_URI"], MONGODB_DB=gw.settings["MONGODB_DB"])
    # gevent's subprocess: the simulated trackers (greenlets of this process) go on answering meanwhile.
    done = gsubprocess.run([sys.executable, "-m", "gv50_gevent.cli", *args], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == code, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done  # type: ignore[no-any-return]


def test_the_operator_sets_assigns_and_follows_a_profile_with_gv50ctl(start_gateway: Any, tmp_path: Any,
                                                                      trackers: list[SimTracker]) -> None:
    gw = start_gateway(**FAST, GATEWAY_ALIVE_INTERVAL_S="0.5")
    db = gw.db
    fleet = [SimTracker(imei_of(400 + n)) for n in range(4)]
    trackers.extend(fleet)
    connect_all(gw, fleet)
    wait_until(lambda: db.devices.count_documents({"online": True}) == 4, 20, "4 online")

    bad = gv50ctl(gw, "profile", "set", "apn", "fri.send_interval_s=2", "hbm.mode=1", code=2)
    assert "error: settings.fri.send_interval_s: must be between 5 and 86400, not 2 (value 2)" in bad.stderr
    assert "error: settings.hbm: no command the gateway sends sets it" in bad.stderr
    assert db.profiles.count_documents({}) == 0

    profile = tmp_path / "profile.json"
    profile.write_text(json.dumps({"fri": {"mode": 1, "send_interval_s": 30},
                                   "bsi": {"apn": "m2m.example", "user": "", "password": "pa55word"}}))
    shown = gv50ctl(gw, "profile", "set", "fleet", "--file", str(profile)).stdout
    assert "nobody yet" in shown and "pa55word" not in shown and "***" in shown
    gv50ctl(gw, "profile", "assign", "fleet", "--imei", fleet[0].imei, "--imei", fleet[1].imei)
    db.devices.update_many({"_id": {"$in": [fleet[2].imei, fleet[3].imei]}}, {"$set": {"group": "vans"}})
    out = gv50ctl(gw, "profile", "assign", "fleet", "--group", "vans").stdout
    assert "groups vans; 2 trackers by IMEI" in out

    done = gv50ctl(gw, "rollout", "fleet", "--watch", "--interval", "0.2").stdout
    assert "fleet: 4/4 in sync (100.0 %)" in done, done
    view = json.loads(gv50ctl(gw, "--json", "rollout", "fleet").stdout)
    assert view["counts"] == {"in_sync": 4, "applying": 0, "waiting_offline": 0, "drifted": 0, "failed": 0}
    # The gateway's own figures count the trackers it holds by state (from memory).
    wait_until(lambda: ((db.gateway_state.find_one({"stats.fleet.in_sync": 4}) or {}).get("stats") or {}).get("fleet")
               == {"in_sync": 4, "applying": 0, "waiting_offline": 0, "drifted": 0, "failed": 0}, 10,
               "the fleet counts in the gateway's stats")
    device = gv50ctl(gw, "device", fleet[2].imei).stdout
    assert "Wanted settings (profiles): in sync" in device
    assert "fri.send_interval_s" in device and "DIFFERS" not in device and "pa55word" not in device
    assert "(profile fleet, by group)" in device
    assert all(t.settings["BSI"][:3] == ("m2m.example", "", "pa55word") for t in fleet)
    logs = gw.log()
    assert "pa55word" not in logs
    assert "pa55word" not in gv50ctl(gw, "--json", "profile", "show", "fleet").stdout
    listed = json.loads(gv50ctl(gw, "--json", "commands", fleet[0].imei).stdout)["commands"]
    apn = next(c for c in listed if c["type"] == "set_apn")
    assert apn["source"] == "profile:fleet" and apn["params"]["password"].startswith("*** (")
    assert "pa55word" not in gv50ctl(gw, "show", apn["id"]).stdout


def test_a_udp_tracker_converges_through_its_datagrams_and_an_http_one_is_told_why_not(
        start_gateway: Any) -> None:
    http_port = free_port()
    gw = start_gateway(**FAST, HTTP_PORT=str(http_port))
    db = gw.db
    sim = SimTracker(imei_of(500))
    udp = UdpTracker(gw.port)
    try:
        udp.send(sim.heartbeat())
        udp.receive_until(b"+SACK:GTHBD")
        http_imei = imei_of(501)
        status, _ = http_get(http_port, "/report/" + SimTracker(http_imei).fri()[1:])
        assert status == 200
        wait_until(lambda: db.devices.find_one({"_id": http_imei, "transport": "http"}), 10, "the HTTP tracker")
        db.profiles.insert_one({**PROFILE, "created_at": utcnow(), "updated_at": utcnow()})
        # The UDP tracker answers each command in datagrams, as a GV50 in report mode 4 or 6 would.
        for _ in range(3):
            data = udp.receive_until(b"AT+GT", timeout=10)[-1]
            udp.send(*sim.answer_lines(data.decode()))
        wait_until(lambda: all_in(db, [sim.imei], "in_sync"), 20, "the UDP tracker in sync")
        assert sim.settings["FRI"][7] == "30" and sim.settings["HRM"][6] == "E7"
        http_state = wait_until(lambda: (db.devices.find_one({"_id": http_imei}) or {}).get("config_state"), 10,
                                "the HTTP tracker's state")
        assert http_state["state"] == "failed" and "HTTP" in http_state["reason"] \
            and "cannot carry commands" in http_state["reason"]
        assert db.commands.count_documents({"imei": http_imei}) == 0
    finally:
        udp.close()


def test_the_server_is_set_last_after_a_dump_confirmed_the_rest(start_gateway: Any,
                                                                trackers: list[SimTracker]) -> None:
    gw = start_gateway(**FAST)
    db = gw.db
    t = SimTracker(imei_of(600))
    trackers.append(t)
    connect_all(gw, [t])
    wait_until(lambda: db.devices.find_one({"_id": t.imei, "online": True}), 10, "online")
    db.profiles.insert_one({"_id": "move", "settings": {"fri": {"mode": 1, "send_interval_s": 30},
                                                        "sri": {"host": "127.0.0.1", "port": gw.port,
                                                                "heartbeat_min": 10}},
                            "applies_to": {"all": True}, "updated_at": utcnow()})
    wait_until(lambda: all_in(db, [t.imei], "in_sync"), 30, "in sync")
    # FRI, a dump of everything (it confirms FRI and says the server's report mode, which the
    # profile leaves as it is), then the server: its ACK is the last word.
    assert [raw.split("=")[0] for _, _, raw in t.commands] == ["AT+GTFRI", "AT+GTRTO", "AT+GTSRI"]
    assert ",2,," in t.commands[1][2] and t.commands[2][2].startswith("AT+GTSRI=gv50,3,")
    state = db.devices.find_one({"_id": t.imei})["config_state"]
    assert "server settings acknowledged" in state["reason"]
    assert t.settings["SRI"][8] == "10"
    # It leaves for its new server: still in sync (it is not waiting for anything), also when
    # looked at again while it is away.
    t.disconnect()
    wait_until(lambda: not db.devices.find_one({"_id": t.imei})["online"], 10, "offline")
    db.devices.update_one({"_id": t.imei}, {"$unset": {"config_state": ""}})
    state = wait_until(lambda: db.devices.find_one({"_id": t.imei}).get("config_state"), 10, "evaluated again")
    assert state["state"] == "in_sync", state
    assert "move: 1/1 in sync (100.0 %)" in gv50ctl(gw, "rollout", "move").stdout
