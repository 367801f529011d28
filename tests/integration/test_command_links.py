"""Who may speak for a command: an `+ACK` (or an answer report) counts only on the link its command
went out on. Real gateway processes, a real mongod and real sockets: a forged datagram or HTTP
request with the right IMEI and serial changes nothing and is recorded as `ack_rejected`."""

from __future__ import annotations

import socket
from typing import Any

from gv50_gevent.protocol.commands import decode_command
from tests.integration.test_commands import VERSION, Device, imei_of, insert, status_is, statuses
from tests.integration.test_transports import UdpTracker, http_get
from tests.support import free_port, wait_for


def forged_ack(imei: str, serial: str, count: str = "0F0F") -> str:
    return f"+ACK:GTOUT,{VERSION},{imei},,{serial},20240101000000,{count}$"


def rejected(gw: Any, imei: str, **match: Any) -> dict[str, Any]:
    return wait_for(lambda: gw.db.events.find_one({"imei": imei, "type": "ack_rejected", **match}),
                    what="an ack_rejected event")


def test_a_forged_udp_ack_for_a_tcp_command_changes_nothing_and_is_recorded(start_gateway) -> None:
    gw = start_gateway(GATEWAY_ID="gw-one", COMMAND_ACK_TIMEOUT_S="1.5", COMMAND_MAX_ATTEMPTS="3")
    imei = imei_of(201)
    forger = UdpTracker(gw.port)
    try:
        with Device(gw, imei) as dev:
            dev.hello()
            cid = insert(gw, imei, "block")
            cmd = dev.command()  # the tracker does not answer it (yet)
            # One datagram from another address, with the right IMEI, serial and type.
            forger.sock.sendto(forged_ack(imei, cmd.serial).encode(), forger.gateway)
            event = rejected(gw, imei)
            assert event["remote_addr"] == forger.addr and event["transport"] == "udp"
            assert event["command_id"] == cid and event["serial"] == cmd.serial
            assert event["sent_via"]["transport"] == "tcp" and event["level"] == "warning"
            # The event is written where the ACK was judged: the command is still waiting.
            doc = gw.db.commands.find_one({"_id": cid})
            assert doc["status"] == "sent" and "ack" not in doc and doc["sent_via"]["transport"] == "tcp"
            assert (gw.db.devices.find_one({"_id": imei}) or {}).get("blocked") is None
            conflict = wait_for(lambda: gw.db.events.find_one({"imei": imei, "type": "imei_conflict"}),
                                what="imei_conflict")
            assert conflict["remote_addr"] == forger.addr
            # It is resent (same line), and the tracker's own ACK on its connection counts.
            again = dev.command(3)
            assert again.raw == cmd.raw
            line = dev.ack(again)
            done = status_is(gw, cid, "acknowledged")
            assert done["ack"] == line and statuses(done) == ["sent", "sent", "acknowledged"]
            wait_for(lambda: gw.db.devices.find_one({"_id": imei})["blocked"] is True, what="blocked")
        # The forged frame is archived like any other.
        assert gw.db.messages.find_one({"raw": forged_ack(imei, cmd.serial).rstrip("$"), "remote_addr": forger.addr})
    finally:
        forger.close()


def test_a_forged_http_ack_for_a_tcp_command_changes_nothing_and_is_recorded(start_gateway) -> None:
    http_port = free_port()
    gw = start_gateway(GATEWAY_ID="gw-one", HTTP_PORT=str(http_port), COMMAND_ACK_TIMEOUT_S="1.5")
    imei = imei_of(202)
    with Device(gw, imei) as dev:
        dev.hello()
        cid = insert(gw, imei, "block")
        cmd = dev.command()
        status, _ = http_get(http_port, "/report/" + forged_ack(imei, cmd.serial)[1:])
        assert status == 200  # archived and answered as stored: the request learns nothing
        event = rejected(gw, imei)
        assert event["transport"] == "http" and event["remote_addr"].startswith("127.0.0.1:")
        assert "HTTP" in event["reason"] and event["command_id"] == cid
        assert gw.db.commands.find_one({"_id": cid})["status"] == "sent"
        assert gw.db.events.find_one({"imei": imei, "type": "imei_conflict", "remote_addr": event["remote_addr"]})
        again = dev.command(3)
        assert again.raw == cmd.raw
        dev.ack(again)
        assert statuses(status_is(gw, cid, "acknowledged")) == ["sent", "sent", "acknowledged"]


def test_an_ack_on_the_trackers_next_tcp_connection_counts(start_gateway) -> None:
    gw = start_gateway(GATEWAY_ID="gw-one", COMMAND_ACK_TIMEOUT_S="30")
    imei = imei_of(203)
    with Device(gw, imei) as dev:
        dev.hello()
        cid = insert(gw, imei, "block")
        cmd = dev.command()
        first = status_is(gw, cid, "sent")["sent_via"]
    # The link broke before the tracker answered; it answers as the first frame of its next one.
    with Device(gw, imei) as dev:
        dev.tracker.send_line(dev.ack_line(cmd))
        done = status_is(gw, cid, "acknowledged")
        assert done["acknowledged_at"] > first["at"]
        assert gw.db.events.count_documents({"imei": imei, "type": "ack_rejected"}) == 0


def test_a_udp_command_counts_only_from_the_address_it_was_sent_to(start_gateway) -> None:
    gw = start_gateway(GATEWAY_ID="gw-one", UDP_ADDRESS_TTL_S="20", COMMAND_ACK_TIMEOUT_S="30")
    imei = imei_of(204)
    tracker, forger = UdpTracker(gw.port), UdpTracker(gw.port)
    hbd = f"+ACK:GTHBD,{VERSION},{imei},,20240101000000,0001"
    try:
        tracker.send(hbd)
        tracker.receive_until(b"+SACK:GTHBD")
        cid = insert(gw, imei, "reboot")
        line = decode_command(tracker.receive_until(b"AT+GTRTO")[-1])
        via = status_is(gw, cid, "sent")["sent_via"]
        assert (via["transport"], via["address"]) == ("udp", tracker.addr)
        ack = f"+ACK:GTRTO,{VERSION},{imei},,REBOOT,{line.serial},20240101000000,0002"
        forger.send(ack)
        event = rejected(gw, imei)
        assert event["remote_addr"] == forger.addr and tracker.addr in event["reason"]
        assert gw.db.commands.find_one({"_id": cid})["status"] == "sent"
        tracker.send(ack.replace(",0002", ",0003"))  # from the address it was sent to
        done = status_is(gw, cid, "acknowledged")
        assert done["attempts"] == 1
    finally:
        tracker.close()
        forger.close()


def test_a_udp_command_sent_before_the_upgrade_is_acknowledged_by_its_tracker(start_gateway) -> None:
    """A command left `sent` by a version that did not record `sent_via`: its link is unknown, so
    the ACK of a trusted tracker counts (over UDP here), and a forger's while the tracker is on TCP
    does not."""
    gw = start_gateway(GATEWAY_ID="gw-one", UDP_ADDRESS_TTL_S="20", COMMAND_ACK_TIMEOUT_S="30")
    imei = imei_of(207)
    tracker = UdpTracker(gw.port)
    try:
        tracker.send(f"+ACK:GTHBD,{VERSION},{imei},,20240101000000,0001")
        tracker.receive_until(b"+SACK:GTHBD")
        cid = insert(gw, imei, "reboot")
        line = decode_command(tracker.receive_until(b"AT+GTRTO")[-1])
        status_is(gw, cid, "sent")
        gw.db.commands.update_one({"_id": cid}, {"$unset": {"sent_via": ""}})  # as an older version left it
        tracker.send(f"+ACK:GTRTO,{VERSION},{imei},,REBOOT,{line.serial},20240101000000,0002")
        done = status_is(gw, cid, "acknowledged")
        assert done["attempts"] == 1 and "sent_via" not in done
        assert gw.db.events.count_documents({"imei": imei, "type": "ack_rejected"}) == 0
    finally:
        tracker.close()

    imei = imei_of(208)
    forger = UdpTracker(gw.port)
    try:
        with Device(gw, imei) as dev:
            dev.hello()
            cid = insert(gw, imei, "block")
            cmd = dev.command()
            status_is(gw, cid, "sent")
            gw.db.commands.update_one({"_id": cid}, {"$unset": {"sent_via": ""}})
            forger.sock.sendto(forged_ack(imei, cmd.serial).encode(), forger.gateway)
            event = rejected(gw, imei)
            assert event["remote_addr"] == forger.addr and "connected over TCP" in event["reason"]
            assert gw.db.commands.find_one({"_id": cid})["status"] == "sent"
            dev.ack(cmd)
            status_is(gw, cid, "acknowledged")
    finally:
        forger.close()


def test_an_answer_report_counts_only_on_the_link_its_command_went_out_on(start_gateway) -> None:
    gw = start_gateway(GATEWAY_ID="gw-one", SACK_MODE="all")
    imei = imei_of(205)
    forger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    forger.bind(("127.0.0.1", 0))
    try:
        with Device(gw, imei) as dev:
            dev.hello()
            cid = insert(gw, imei, "get_version")
            cmd = dev.command()
            dev.ack(cmd)
            status_is(gw, cid, "acknowledged")
            fake = f"+RESP:GTVER,{VERSION},{imei},,GV50,FFFF,FFFF,20240101000000,0A0A$"
            forger.sendto(fake.encode(), ("127.0.0.1", gw.port))
            wait_for(lambda: gw.db.messages.find_one({"raw": fake.rstrip("$")}), what="the forged report archived")
            wait_for(lambda: "does not answer command" in gw.log(), what="the answer refused")
            report = f"+RESP:GTVER,{VERSION},{imei},,GV50,020E,0105,20240101000000,{dev._count()}"
            dev.tracker.send_line(report)
            # With SACK on, the frame's SACK comes only once its answer is written.
            dev.frames_until(f"+SACK:{report.rsplit(',', 1)[1]}$")
            doc = gw.db.commands.find_one({"_id": cid})
            assert doc["answer"]["raw"] == report
            # Stamped with the time its frame was read, as the archive has it; not when it was handled.
            assert doc["answer"]["received_at"] == gw.db.messages.find_one({"raw": report})["at"]
    finally:
        forger.close()


def test_a_tcp_takeover_is_the_trackers_next_connection(start_gateway) -> None:
    """A second connection with the same IMEI closes the first: a command waiting for its ACK is
    sent again on it at once, and counts when acknowledged there (docs/security.md)."""
    gw = start_gateway(GATEWAY_ID="gw-one", COMMAND_ACK_TIMEOUT_S="30")
    imei = imei_of(206)
    with Device(gw, imei) as first:
        first.hello()
        cid = insert(gw, imei, "block")
        cmd = first.command()
        with Device(gw, imei) as second:
            second.hello()
            assert first.tracker.is_closed(5)  # taken over
            again = second.command(5)  # resent on the new connection, same serial
            assert again.raw == cmd.raw
            second.ack(again)
            done = status_is(gw, cid, "acknowledged")
            assert statuses(done) == ["sent", "sent", "acknowledged"]
            assert gw.db.events.count_documents({"imei": imei, "type": "ack_rejected"}) == 0
