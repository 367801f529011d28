"""The gateway's statistics in `gateway_state` (what `gv50ctl status` shows), from real traffic."""

from __future__ import annotations

from tests.integration.test_ingest import FRI, HBD, IMEI
from tests.support import wait_for


def test_statistics_count_what_the_gateway_did(start_gateway) -> None:
    gw = start_gateway(SACK_MODE="all", GATEWAY_ALIVE_INTERVAL_S="0.5", GATEWAY_ID="gw-stats")
    with gw.connect() as device:
        device.send_line(FRI)
        device.read_until(b"+SACK:1854$")
        device.send_line(HBD)
        device.read_until(b"+SACK:GTHBD,090302,252F$")
        device.send_line("+RESP:GTFRI,090302," + IMEI + ",,1,2,3,0A0B")  # invalid, SACKed once stored
        device.read_until(b"+SACK:0A0B$")

        def figures() -> dict | None:
            doc = gw.db.gateway_state.find_one({"_id": "gateway:gw-stats"})
            stats = (doc or {}).get("stats") or {}
            done = stats.get("last_minute", {}).get("report/invalid") == 1 and stats.get("sack_latency_ms", {}).get(
                "samples", 0) >= 2
            return stats if done else None

        stats = wait_for(figures, timeout=15, what="statistics with the traffic")
        assert stats["connections"]["tcp"] == 1
        assert stats["last_minute"]["report/ok"] == 1 and stats["last_minute"]["heartbeat/ok"] == 1
        assert stats["last_minute"]["out/sack"] == 3  # two SACKs and the heartbeat's reply
        assert stats["invalid"] == 1 and stats["write_queue"] == 0
        assert stats["stored"] >= 4  # the position and three archived frames, at least
        assert stats["sack_latency_ms"]["p50"] is not None and stats["sack_latency_ms"]["p99"] >= stats[
            "sack_latency_ms"]["p50"]
        assert stats["mongo_write_ms"]["samples"] >= 1 and stats["mongo_write_ms"]["p50"] > 0
        assert stats["backpressure_s"] == 0
        assert stats["commands"] == {}
        assert stats["at"].tzinfo is not None
