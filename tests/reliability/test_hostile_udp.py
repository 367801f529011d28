"""Hostile input over UDP: a flood of garbage datagrams and forged IMEIs while real trackers report.
The gateway keeps serving the others, answers nothing it should not, and records what came."""

from __future__ import annotations

import random
import socket

from tests.integration.test_ingest import FRI, HBD, IMEI
from tests.integration.test_transports import UdpTracker
from tests.support import wait_for

GARBAGE = 3000


def heartbeat_answered(real: UdpTracker, i: int, tries: int = 5) -> bool:
    for attempt in range(tries):
        count = f"{(i + attempt) % 0xFFFF:04X}"
        real.send(HBD.replace("252F", count))
        deadline = 5.0
        while (data := real.receive(deadline)) is not None:
            if data.endswith(f",{count}$".encode()):
                return True
            deadline = 1.0
    return False


def test_a_garbage_flood_and_forged_imeis_do_not_disturb_real_trackers(start_gateway) -> None:
    gw = start_gateway(SACK_MODE="all", AUTO_REGISTER="false")
    db = gw.db
    db.vehicles.insert_one({"_id": IMEI, "enabled": True})
    real = UdpTracker(gw.port)
    tcp = gw.connect()
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rng = random.Random(7)
    try:
        tcp.send_line(HBD.replace(IMEI, "865083030009999"))  # not registered: refused, closed
        assert tcp.is_closed(5)
        for i in range(GARBAGE):
            kind = i % 3
            if kind == 0:
                data = rng.randbytes(rng.randint(1, 1400))
            elif kind == 1:  # a forged, unregistered IMEI
                data = FRI.replace(IMEI, f"8650830{i:08d}").encode() + b"$"
            else:  # a frame that does not parse, for the registered IMEI
                data = FRI[: rng.randint(20, len(FRI) - 1)].encode() + b"$"
            flood.sendto(data, ("127.0.0.1", gw.port))
            if i % 500 == 0:
                # Served in the middle of the flood. UDP may drop a datagram when the socket's buffer
                # is full; a real tracker sends its next heartbeat, and so does this one.
                assert heartbeat_answered(real, i), f"no heartbeat reply during the flood (datagram {i})"
        real.send(FRI)
        real.receive_until(b"+SACK:1854$")
        assert wait_for(lambda: db.positions.count_documents({}) == 1, what="only the real report stored")
        assert db.positions.find_one()["imei"] == IMEI
        forged = wait_for(lambda: db.messages.count_documents({"status": "rejected"}) >= GARBAGE // 3 and
                          db.messages.count_documents({"status": "rejected"}), timeout=30, what="forged archived")
        assert forged >= GARBAGE // 3
        # The flood got no answers: a forged source address cannot be used to amplify.
        flood.settimeout(0.5)
        try:
            answered = flood.recv(65536)
        except (socket.timeout, TimeoutError):
            answered = b""
        assert answered == b""
        assert db.vehicles.count_documents({}) == 1  # AUTO_REGISTER=false: nobody new
        assert db.devices.count_documents({"online": True}) == 1
        log = gw.log()
        assert "Traceback" not in log
    finally:
        real.close()
        tcp.close()
        flood.close()
