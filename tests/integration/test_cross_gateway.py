"""Several gateways behind one port (REUSE_PORT): a datagram may land on a gateway that does not
hold the tracker's TCP connection. It is trusted no more than on the one that does: `devices` and
the liveness records say who holds the tracker. Real gateway processes, a real mongod, real
sockets. The second gateway listens on its own port here, so that the forged datagram lands on
it for certain (with one shared port the kernel chooses by the source address)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from pymongo import MongoClient

from gv50_gevent.storage.database import durable
from gv50_gevent.storage.devices import Devices, HeldOnTcp
from tests.integration.test_command_links import forged_ack
from tests.integration.test_commands import VERSION, Device, imei_of, insert, status_is, statuses
from tests.integration.test_transports import UdpTracker
from tests.support import wait_for

AT = datetime(2026, 12, 7, 8, 0, tzinfo=timezone.utc)


def test_a_forged_datagram_at_the_other_gateway_changes_nothing(start_gateway) -> None:
    holder = start_gateway(GATEWAY_ID="gw-a", COMMAND_ACK_TIMEOUT_S="1.5", COMMAND_MAX_ATTEMPTS="3")
    other = start_gateway(GATEWAY_ID="gw-b", COMMAND_ACK_TIMEOUT_S="1.5")  # same database
    imei = imei_of(211)
    forger = UdpTracker(other.port)
    try:
        with Device(holder, imei) as dev:
            dev.hello()
            state = wait_for(lambda: holder.db.devices.find_one({"_id": imei, "online": True}), what="online")
            cid = insert(holder, imei, "block")
            cmd = dev.command()  # the tracker does not answer it (yet)
            forger.send(forged_ack(imei, cmd.serial))
            forger.send(f"+ACK:GTHBD,{VERSION},{imei},,20240101000000,0F10")  # and a heartbeat
            conflict = wait_for(lambda: holder.db.events.find_one({"imei": imei, "type": "imei_conflict"}),
                                what="imei_conflict at the other gateway")
            assert conflict["remote_addr"] == forger.addr and conflict["gateway_id"] == "gw-b"
            forged = {"imei": imei, "remote_addr": forger.addr, "direction": "in"}
            wait_for(lambda: holder.db.messages.count_documents(forged) == 2, what="both forged frames archived")
            after = holder.db.devices.find_one({"_id": imei}) or {}
            for field in ("online", "gateway_id", "session_id", "remote_addr", "transport"):
                assert after.get(field) == state.get(field), field
            doc = holder.db.commands.find_one({"_id": cid}) or {}
            assert doc["status"] == "sent" and doc["sent_via"]["transport"] == "tcp"
            # The tracker's own connection keeps the command: resent there, and its ACK counts.
            again = dev.command(3)
            assert again.raw == cmd.raw
            dev.ack(again)
            assert statuses(status_is(holder, cid, "acknowledged")) == ["sent", "sent", "acknowledged"]
        assert f"sent a UDP datagram from {forger.addr}" in other.log()
    finally:
        forger.close()


def test_a_udp_tracker_that_moved_to_tcp_elsewhere_is_not_spoken_for_from_a_new_address(start_gateway) -> None:
    """The other gateway knew the tracker over UDP (cached); it then connected over TCP to the
    first. A datagram from another address at the other gateway is untrusted."""
    holder = start_gateway(GATEWAY_ID="gw-a")
    other = start_gateway(GATEWAY_ID="gw-b")
    imei = imei_of(214)
    udp, forger = UdpTracker(other.port), UdpTracker(other.port)
    try:
        udp.send(f"+ACK:GTHBD,{VERSION},{imei},,20240101000000,0001")
        udp.receive_until(b"+SACK:GTHBD")
        wait_for(lambda: holder.db.devices.find_one({"_id": imei, "transport": "udp", "gateway_id": "gw-b"}),
                 what="online over UDP at gw-b")
        with Device(holder, imei) as dev:
            dev.hello()
            state = wait_for(lambda: holder.db.devices.find_one({"_id": imei, "transport": "tcp"}), what="TCP")
            forger.send(f"+ACK:GTHBD,{VERSION},{imei},,20240101000000,0F11")
            conflict = wait_for(lambda: holder.db.events.find_one({"imei": imei, "type": "imei_conflict"}),
                                what="imei_conflict at the other gateway")
            assert conflict["remote_addr"] == forger.addr and conflict["gateway_id"] == "gw-b"
            after = holder.db.devices.find_one({"_id": imei}) or {}
            for field in ("online", "gateway_id", "session_id", "remote_addr", "transport"):
                assert after.get(field) == state.get(field), field
    finally:
        udp.close()
        forger.close()


def test_a_tracker_held_by_a_dead_gateway_may_switch_to_udp(start_gateway) -> None:
    gw = start_gateway(GATEWAY_ID="gw-b")
    imei = imei_of(212)
    # Online over TCP at a gateway that has no liveness record (killed): its record is stale.
    gw.db.devices.insert_one({"_id": imei, "online": True, "transport": "tcp", "gateway_id": "gw-ghost",
                              "session_id": "ghost-1", "remote_addr": "10.0.0.9:4000"})
    tracker = UdpTracker(gw.port)
    try:
        tracker.send(f"+ACK:GTHBD,{VERSION},{imei},,20240101000000,0001")
        tracker.receive_until(b"+SACK:GTHBD")
        doc = wait_for(lambda: gw.db.devices.find_one({"_id": imei, "transport": "udp"}), what="taken over UDP")
        assert (doc["gateway_id"], doc["remote_addr"], doc["online"]) == ("gw-b", tracker.addr, True)
        assert gw.db.events.count_documents({"imei": imei, "type": "imei_conflict"}) == 0
    finally:
        tracker.close()


def test_the_connected_write_never_takes_a_device_from_live_tcp(mongo: MongoClient, db_name: str) -> None:
    """The race: a TCP connection at another gateway came in after the check. The conditional write
    leaves it alone; over TCP, and for this gateway's own or an offline record, it writes."""
    db = mongo.get_database(db_name, write_concern=durable())
    devices = Devices(db, "gw-b")
    imei = imei_of(213)
    held = {"_id": imei, "online": True, "transport": "tcp", "gateway_id": "gw-a", "session_id": "s-a",
            "remote_addr": "10.0.0.1:5000"}
    db.devices.insert_one(dict(held))
    for transport in ("udp", "http"):
        with pytest.raises(HeldOnTcp):
            devices.connected(imei, "p-1", "10.9.9.9:1", AT, transport)
    assert db.devices.find_one({"_id": imei}) == held
    devices.connected(imei, "p-2", "10.9.9.9:1", AT, "udp", replacing="s-a")  # its gateway was found dead
    assert db.devices.find_one({"_id": imei})["session_id"] == "p-2"
    devices.connected(imei, "p-3", "10.9.9.9:2", AT, "udp")  # a UDP record: ours to update
    devices.connected("865083030002140", "p-4", "10.9.9.9:3", AT, "udp")  # a new device
    assert db.devices.count_documents({"session_id": {"$in": ["p-3", "p-4"]}}) == 2
    db.devices.update_one({"_id": imei}, {"$set": held})
    devices.connected(imei, "s-b", "10.0.0.2:5000", AT, "tcp")  # a TCP takeover is always written
    assert db.devices.find_one({"_id": imei})["gateway_id"] == "gw-b"
