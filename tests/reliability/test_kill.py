"""The gateway killed with SIGKILL mid-ingest and mid-command, then started again on the same port.

A simulated fleet (`--sack`) sends 500 GTFRI/s to a gateway with SACK_MODE=all. Three hand-driven
trackers are connected too: one only says hello and never comes back after the kill, two hold a
`block` command they received and did not acknowledge (one may be sent 3 times, one only once).
The gateway is killed with `kill -9`, so it can neither flush, nor SACK, nor mark anything offline,
and a new gateway starts on the same port:

* `same-id`: the new gateway has the dead one's GATEWAY_ID; it marks the devices the dead one left
  online offline as it starts (GATEWAY_DEAD_AFTER_S stays at 60 s, so no sweep could have done it);
* `new-id`: another GATEWAY_ID, with GATEWAY_ALIVE_INTERVAL_S=0.5 and GATEWAY_DEAD_AFTER_S=3: its
  liveness sweep must find the dead gateway and mark its devices offline.

Afterwards every SACKed report is in `positions` exactly once, the fleet reconnected and got every
report SACKed, a report replayed after the restart whose SACK was lost is not stored twice, the
unacknowledged command was resent with its serial and acknowledged, the one with no attempts left
failed, and the silent tracker is offline.
"""

from __future__ import annotations

import signal
import time
from datetime import datetime, timezone
from typing import Any

import pytest

from tests.support import GatewayProcess, wait_for

from .helpers import Probe, Simulator, check_exactly_once, figures, tracebacks

IMEI_BASE = 862000000000000
DEVICES, RATE, DURATION = 50, 500, 12
IDLE, RESEND, FAIL = "862999000000001", "862999000000002", "862999000000003"
CASES = {
    "same-id": ({"GATEWAY_ID": "gw-kill-a"}, {"GATEWAY_ID": "gw-kill-a"}),
    "new-id": ({"GATEWAY_ID": "gw-kill-a", "GATEWAY_ALIVE_INTERVAL_S": "0.5", "GATEWAY_DEAD_AFTER_S": "3"},
               {"GATEWAY_ID": "gw-kill-b", "GATEWAY_ALIVE_INTERVAL_S": "0.5", "GATEWAY_DEAD_AFTER_S": "3"}),
}


def command_status(gw: GatewayProcess, command_id: Any, status: str, timeout: float = 10.0) -> dict[str, Any]:
    return wait_for(lambda: gw.db.commands.find_one({"_id": command_id, "status": status}), timeout=timeout,
                    what=f"command {command_id} {status}")


@pytest.mark.parametrize("case", sorted(CASES))
def test_kill_9_during_ingest_and_command_delivery(start_gateway, case: str) -> None:
    first_env, second_env = CASES[case]
    common = {"SACK_MODE": "all"}
    first = start_gateway(**common, **first_env)
    db = first.db
    fleet = [f"{IMEI_BASE + i:015d}" for i in range(DEVICES)]

    # Trackers driven by hand: one that will not come back, two holding an unacknowledged command.
    idle, resend, fail = (Probe(first.port, imei) for imei in (IDLE, RESEND, FAIL))
    for probe in (idle, resend, fail):
        probe.hello()
    resend_id = db.commands.insert_one({"imei": RESEND, "type": "block", "params": {}}).inserted_id
    fail_id = db.commands.insert_one({"imei": FAIL, "type": "block", "params": {}, "max_attempts": 1}).inserted_id
    sent_first = resend.wait_command(10)
    assert sent_first is not None and fail.wait_command(10) is not None, "the commands were not delivered"
    command_status(first, resend_id, "sent")
    command_status(first, fail_id, "sent")
    # A report stored and SACKed whose SACK the tracker is taken not to have received (lost with
    # the connection): it replays the report after the restart, and it must not be stored twice.
    lost_sack_line, count = fail.report()
    assert fail.wait_sack(count, 10)

    sim = Simulator(first.port, "--devices", str(DEVICES), "--rate", str(RATE), "--duration", str(DURATION),
                    "--drain", "30", "--imei-base", str(IMEI_BASE), "--sack", "--list-sacked",
                    "--reconnect-delay", "0.5")
    try:
        wait_for(lambda: db.positions.count_documents({"imei": {"$in": fleet}}) > RATE, timeout=20,
                 interval=0.1, what="ingest to start")
        # --- kill -9, mid-ingest and with two commands `sent` but not acknowledged ---
        assert first.proc is not None
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        killed_at = datetime.now(timezone.utc)
        first_log = first.log()
        stored_at_kill = db.positions.count_documents({"imei": {"$in": fleet}})
        for probe in (idle, resend, fail):
            probe.close()
        time.sleep(1.0)  # the fleet finds the gateway gone and retries against a closed port

        second = start_gateway(**common, **second_env, GATEWAY_PORT=str(first.port), MONGODB_DB=db.name)
        second_id = second_env["GATEWAY_ID"]

        # The devices the dead gateway held: offline, by the new gateway's start or by its sweep.
        offline_within = 1.0 if case == "same-id" else 3 + 2 * 0.5 + 2
        idle_doc = wait_for(lambda: (d := db.devices.find_one({"_id": IDLE})) and not d["online"] and d,
                            timeout=offline_within, interval=0.1, what="the silent tracker offline")
        assert idle_doc["disconnected_at"] >= killed_at.replace(microsecond=killed_at.microsecond // 1000 * 1000)
        assert idle_doc["gateway_id"] == "gw-kill-a"
        if case == "new-id":
            assert db.gateway_state.find_one({"_id": "gateway:gw-kill-a"}) is None, "the dead gateway's record stayed"

        # The fleet comes back to the new gateway.
        wait_for(lambda: db.devices.count_documents({"_id": {"$in": fleet}, "online": True, "gateway_id": second_id})
                 == DEVICES, timeout=30, interval=0.1, what="the fleet online at the new gateway")

        # The unacknowledged command is resent (same serial) and acknowledged; the other one has no
        # attempts left and fails. Neither is forgotten.
        resend, fail = Probe(second.port, RESEND), Probe(second.port, FAIL)
        resend.hello()
        fail.hello()
        again = resend.wait_command(10)
        assert again is not None, "the command left `sent` by the dead gateway was not resent"
        assert again.serial == sent_first.serial and again.type == sent_first.type
        resend.ack(again)
        done = command_status(second, resend_id, "acknowledged")
        assert done["attempts"] == 2, done["history"]
        assert done["history"][-2].get("taken_over_from") == "gw-kill-a", done["history"]
        failed = command_status(second, fail_id, "failed")
        assert failed["attempts"] == 1 and "no ACK after 1 attempts" in failed["error"], failed
        assert fail.wait_command(1.0) is None, "a command with no attempts left was sent again"
        fail.send(fail.lines.buff(lost_sack_line))
        assert fail.wait_sack(count, 10), "a replayed report that was already stored got no SACK"
        assert db.positions.count_documents({"imei": FAIL}) == 1
        resend.close()
        fail.close()

        report = sim.finish(timeout=DURATION + 60)
    finally:
        sim.kill()

    # Nothing SACKed lost, nothing stored twice, and every report the fleet made got its SACK.
    assert report["connects"] >= 2 * DEVICES and report["connect_failures"] > 0, figures(report)
    assert report["buffer_dropped"] == 0 and report["unsacked"] == 0, figures(report)
    counted = check_exactly_once(db, report)
    assert counted["sacked"] == report["sacked"] >= 0.95 * RATE * DURATION, (counted, figures(report))

    # Both gateways ran without a traceback; the second is still running.
    log = second.log()
    assert tracebacks(first_log) == [], "\n\n".join(tracebacks(first_log)[:3])
    assert tracebacks(log) == [], "\n\n".join(tracebacks(log)[:3])
    assert second.proc is not None and second.proc.poll() is None, log[-3000:]

    print(f"\n{case}: fleet {figures(report)}; positions {counted}; {stored_at_kill} stored at the kill; "
          f"connect failures while down {report['connect_failures']}; "
          f"{db.positions.count_documents({'imei': {'$in': fleet}, 'buffered': True})} stored from +BUFF")
