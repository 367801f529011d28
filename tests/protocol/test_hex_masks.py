"""HEX frames under the AT+GTHRM masks a user may choose: whatever a mask leaves out is None in
the message, never a reason to refuse the frame. The connection core takes such frames as its
first ones, SACKs them, SACKs the frames it cannot decode when their tail has a count, and counts
every CRC mismatch."""

from __future__ import annotations

from typing import Any

import pytest

from gv50_gevent.protocol import Report, encode_hex, parse_hex
from gv50_gevent.protocol.connection import Admit, Connection, Received
from gv50_gevent.protocol.hex import DEFAULT_MASKS, head_imei, tail_count
from gv50_gevent.simulator.hexmode import hex_frame
from tests.protocol.test_connection import feed_all
from tests.protocol.test_hex import FRI_VALUES, bits, utc

IMEI = FRI_VALUES["imei"]
# What the +RSP masks below may ask for beyond FRI_VALUES.
RSP_VALUES: dict[str, Any] = {**FRI_VALUES, "battery_percent": 80, "trip_km": 1.5, "trip_hour_meter_s": 600}
IGN_VALUES: dict[str, Any] = {
    "device_type": 9, "protocol": "0302", "firmware": "020E", "imei": IMEI, "duration_s": 1377, "number": 1,
    "gps_accuracy": 1, "speed_kmh": 0.0, "azimuth": 24, "altitude_m": 63, "longitude": 117.201525,
    "latitude": 31.83304, "fix_time": utc(2017, 7, 31, 8, 4, 20), "mcc": "0460", "mnc": "0001", "lac": "5504",
    "cell_id": "582B", "trip_km": 0.1, "mileage_km": 0.1, "trip_hour_meter_s": 60, "hour_meter_s": 3600,
    "battery_percent": 90, "external_power_mv": 12000, "inputs": 0, "outputs": 0, "motion": "21", "satellites": 7,
    "sent_at": utc(2017, 7, 31, 16, 4, 23), "count": "0233",
}
# The masks a user clears bits of to save data (spec 3.30 / 1.7), and what they leave out.
MASKS: dict[str, tuple[str, str, int, dict[str, Any]]] = {
    # the default FE17BF without bits 8-10: no device type, protocol version or firmware
    "RSP 00FE10BF": ("+RSP", "GTFRI", 0x00FE10BF, RSP_VALUES),
    "EVT 00F000BF": ("+EVT", "GTIGN", 0x00F000BF, IGN_VALUES),
    # the default without bit 4: no send time
    "RSP 00FE17AF": ("+RSP", "GTFRI", 0x00FE17AF, RSP_VALUES),
    "EVT 00FE17AF": ("+EVT", "GTIGN", 0x00FE17AF, IGN_VALUES),
    # none of the optional bits: the IMEI, the number, the accuracy, the coordinates and the fix time
    # (without the Length, bit 7, a frame is framed by the size its layout fixes)
    "RSP 00000000": ("+RSP", "GTFRI", 0, RSP_VALUES),
    "EVT 00000000": ("+EVT", "GTIGN", 0, IGN_VALUES),
    "RSP 00000080": ("+RSP", "GTFRI", bits(7), RSP_VALUES),
    "RSP 00000020": ("+RSP", "GTFRI", bits(5), RSP_VALUES),  # the count only
    # the send time and the count only, and the device name in place of the IMEI
    "RSP device name": ("+RSP", "GTFRI", bits(4, 5, 6), {**RSP_VALUES, "device_name": "truck7"}),
}


def frame(name: str, **changes: Any) -> bytes:
    header, type_, mask, values = MASKS[name]
    return encode_hex(header, type_, {**values, **changes}, mask)


@pytest.mark.parametrize("name", sorted(MASKS))
def test_a_frame_decodes_whatever_its_mask_leaves_out(name: str) -> None:
    header, type_, mask, values = MASKS[name]
    known = IMEI if mask & bits(6) else None  # a device-name frame needs the connection's IMEI
    m = parse_hex(frame(name), imei=known)
    assert isinstance(m, Report) and (m.type, m.imei) == (type_, IMEI)
    assert m.protocol_version == ("090302" if mask & bits(8) and mask & bits(9) else None)
    assert m.sent_at == (values["sent_at"] if mask & bits(4) else None)
    assert m.count == (values["count"] if mask & bits(5) else None)
    assert m.firmware is None or mask & bits(10)
    assert m.warnings == ()  # a mask is the user's choice, not an odd value
    (p,) = m.positions
    assert (p.longitude, p.latitude, p.fix_time) == (values["longitude"], values["latitude"], values["fix_time"])
    assert p.speed_kmh == (values["speed_kmh"] if mask & bits(0) else None)
    assert p.cell_id == (values["cell_id"] if mask & bits(3) else None)


def test_what_the_connection_knows_fills_in_the_version_and_nothing_else_is_needed() -> None:
    m = parse_hex(frame("RSP 00FE10BF"), protocol_version="090302")
    assert m.protocol_version == "090302"
    m = parse_hex(frame("RSP 00FE10BF"))
    assert m.protocol_version is None and m.count == "1854"


def test_the_simulators_hex_mode_with_a_mask_without_versions() -> None:
    line = ("+RESP:GTFRI,090302,865083030004642,,13337,10,1,1,18.6,272,31,117.201342,31.855243,20170712074622,"
            "0460,0001,5504,29CF,00,347.8,00021:54:10,,,,220101,23,0,15,20170712154623,1854$")
    data = hex_frame(line, {"RSP": 0x00FE10BF, "EVT": 0x00F000BF, "HBD": DEFAULT_MASKS["HBD"]})
    assert data is not None
    m = parse_hex(data)
    assert (m.imei, m.protocol_version, m.count) == (IMEI, None, "1854")


def first_frames(frames: list[bytes], *, sack: bool = True) -> list[Received]:
    conn = Connection(sack_enabled=sack)
    got = feed_all(conn, [b"".join(frames)])
    assert conn.imei == IMEI
    return got


@pytest.mark.parametrize("name", ["RSP 00FE10BF", "EVT 00F000BF", "RSP 00FE17AF", "RSP 00000020"])
def test_a_connections_first_frames_without_versions_are_admitted_stored_and_sacked(name: str) -> None:
    counts = [f"{n:04X}" for n in range(1, 6)]
    got = first_frames([frame(name, count=c) for c in counts])
    assert [(e.status, e.imei, e.sack) for e in got] == [("ok", IMEI, f"+SACK:{c}$".encode()) for c in counts]
    version = "090302" if MASKS[name][2] & bits(8) else None
    assert all(e.message is not None and e.message.protocol_version == version for e in got)
    assert got[0].device == ({"protocol_version": "090302", "config.protocol_format": "hex"} if version else
                             {"config.protocol_format": "hex"})


def test_the_version_the_device_record_knows_fills_in_a_frame_without_one() -> None:
    conn = Connection(sack_enabled=True, protocol_version="090302")  # the caller read it from the device record
    (got,) = feed_all(conn, [frame("RSP 00FE10BF")])
    assert got.message is not None and got.message.protocol_version == "090302"
    assert got.device == {"config.protocol_format": "hex"}  # nothing new to note about the version


def test_a_frame_without_a_count_is_stored_without_a_sack() -> None:
    (got,) = first_frames([frame("RSP 00000000")])
    assert (got.status, got.sack, got.message.count) == ("ok", None, None)  # type: ignore[union-attr]
    hbd = encode_hex("+HBD", None, {"imei": IMEI}, bits(0, 7))  # a heartbeat with its Length and IMEI only
    conn = Connection(sack_enabled=True)
    (beat,) = feed_all(conn, [hbd])
    assert (beat.status, beat.reply, beat.sack) == ("ok", b"+SACK:GTHBD,,$", None)  # nothing to echo
    conn.protocol_version = "090302"  # what the device record says
    (beat,) = feed_all(conn, [hbd])
    assert beat.reply == b"+SACK:GTHBD,090302,$"


def test_a_number_above_one_is_stored_with_a_warning_and_sacked() -> None:
    (got,) = first_frames([frame("RSP 00FE10BF", number=2)])
    assert (got.status, got.sack) == ("ok", b"+SACK:1854$")
    assert got.message.warnings == ("number 2 outside 0-1",)  # type: ignore[union-attr]


# -- frames that do not decode: their count is at the tail ----------------------------------------


def test_the_count_is_read_from_the_tail_when_the_mask_has_it() -> None:
    assert tail_count(frame("RSP 00FE10BF")) == "1854"
    assert tail_count(frame("EVT 00F000BF")) == "0233"
    assert tail_count(frame("RSP 00000000")) is None  # no count bit
    hbd = encode_hex("+HBD", None, {"imei": IMEI, "count": "0A0B"}, bits(6, 7))
    assert tail_count(hbd) == "0A0B"
    assert tail_count(b"+RESP:GTFRI,1$") is None and tail_count(b"+RSP") is None


def test_a_hex_frame_that_does_not_decode_is_sacked_by_its_tail_count() -> None:
    good = frame("RSP 00FE10BF", count="0001")
    broken = frame("RSP 00FE10BF", count="0002")
    at = broken.index(b"\x07\xe1\x07\x0c\x07\x2e")  # the fix time (2017-07-12 07:46): month 13
    broken = broken[:at + 2] + b"\x0d" + broken[at + 3:]
    got = first_frames([good, broken])
    assert [(e.status, e.sack) for e in got] == [("ok", b"+SACK:0001$"), ("invalid", b"+SACK:0002$")]
    assert "month" in (got[1].error or "")
    # Not before the connection is bound: nobody was admitted to be answered.
    (alone,) = feed_all(Connection(sack_enabled=True), [broken])
    assert (alone.status, alone.sack) == ("invalid", None)
    # Nor without SACK mode.
    assert [e.sack for e in first_frames([good, broken], sack=False)] == [None, None]


def test_an_unknown_hex_type_is_sacked() -> None:
    data = frame("RSP 00FE10BF", report_id_type=0, count="00AA")
    unknown = data[:4] + b"\x11" + data[5:]  # type 17: not in V4.01
    got = first_frames([frame("RSP 00FE10BF", count="0001"), unknown])
    assert [(e.status, e.sack) for e in got] == [("ok", b"+SACK:0001$"), ("unknown_type", b"+SACK:00AA$")]


def test_every_hex_frame_of_a_read_has_its_crc_checked() -> None:
    bad = [frame("RSP 00FE10BF", count=f"{n:04X}") for n in range(1, 5)]
    bad = [f[:-4] + bytes([f[-4] ^ 0xFF]) + f[-3:] for f in bad]  # the CRC's first byte flipped
    broken = bad[-1][:12] + b"\xff" + bad[-1][13:]  # an IMEI byte above 99: does not decode
    good = frame("RSP 00FE10BF", count="0009")
    got = first_frames([*bad, good, broken])
    assert [e.crc_ok for e in got] == [False] * 4 + [True, False]
    assert [e.status for e in got] == ["ok"] * 5 + ["invalid"]


# -- whose frame it is, when it does not decode -----------------------------------------------------


def _no_month(data: bytes) -> bytes:
    """The frame with its fix time's month made 13: it no longer decodes (its head still does)."""
    at = data.index(b"\x07\xe1\x07\x0c\x07\x2e")
    return data[:at + 2] + b"\x0d" + data[at + 3:]


def test_the_imei_is_read_from_the_head_where_the_mask_puts_it() -> None:
    for name in MASKS:
        expected = None if name == "RSP device name" else IMEI  # a device name is no IMEI
        assert head_imei(frame(name)) == expected, name
    other = "868034001000397"
    assert head_imei(_no_month(frame("RSP 00FE10BF", imei=other))) == other
    assert head_imei(encode_hex("+HBD", None, {"imei": IMEI, "count": "0A0B"}, bits(6, 7))) == IMEI
    assert head_imei(encode_hex("+HBD", None, {"count": "0A0B"}, bits(6))) is None  # no unique ID
    assert head_imei(frame("RSP 00FE10BF")[:12]) is None  # cut short inside the IMEI
    assert head_imei(b"+RESP:GTFRI,1$") is None and head_imei(b"+RSP") is None


def test_a_hex_frame_that_does_not_decode_is_sacked_only_for_the_connections_imei() -> None:
    other = "868034001000397"
    foreign = _no_month(frame("RSP 00FE10BF", imei=other, count="0002"))
    named = _no_month(frame("RSP device name", count="0003"))  # its IMEI cannot be read: the link's own
    got = first_frames([frame("RSP 00FE10BF", count="0001"), foreign, named])
    assert [(e.status, e.imei, e.sack) for e in got] == [
        ("ok", IMEI, b"+SACK:0001$"), ("invalid", IMEI, None), ("invalid", IMEI, b"+SACK:0003$")]


def test_a_refused_and_a_left_over_hex_frame_count_their_crc() -> None:
    def flipped(data: bytes) -> bytes:
        return data[:-4] + bytes([data[-4] ^ 0xFF]) + data[-3:]

    conn = Connection(sack_enabled=True)
    conn.receive_data(flipped(frame("RSP 00FE10BF", count="0001")))
    assert isinstance(conn.next_event(), Admit)
    refused = conn.refused("not on the list")
    assert (refused.status, refused.crc_ok) == ("rejected", False)

    conn = Connection(sack_enabled=True)
    conn.receive_data(flipped(frame("RSP 00FE10BF", count="0001")) + flipped(frame("RSP 00FE10BF", count="0002")))
    assert isinstance(conn.next_event(), Admit)  # held, never answered: the connection ends
    left = conn.leftovers("closed by peer")
    assert [(e.status, e.crc_ok) for e in left] == [("rejected", False), ("rejected", False)]
    conn = Connection(sack_enabled=True)
    conn.receive_data(frame("RSP 00FE10BF", count="0001"))
    assert [e.crc_ok for e in conn.leftovers("idle")] == [True]
