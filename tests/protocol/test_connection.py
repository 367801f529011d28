"""The per-connection protocol core, fed plain bytes: whole, one byte at a time, and packed
together. No socket, no database: what it returns is all there is to check."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from gv50_gevent.protocol.connection import (
    NEED_DATA, Admit, Connection, LocalProtocolError, Received, count_of, guess_kind,
)
from tests.data import device_lines

IMEI = "865083030004642"


def vendor(type_: str, header: str = "+RESP") -> bytes:
    """The vendor's example line of this type, as if one tracker (IMEI) sent them all."""
    line = next(line for line in device_lines() if line.startswith(f"{header}:{type_},"))
    fields = line.split(",")
    fields[2] = IMEI
    return ",".join(fields).encode("ascii")


def count(frame: bytes) -> bytes:
    return frame[-5:-1]


FRI = vendor("GTFRI")
IGN = vendor("GTIGN")
HBD = vendor("GTHBD", "+ACK")
OUT_ACK = vendor("GTOUT", "+ACK")
STREAM = [FRI, HBD, IGN, OUT_ACK, vendor("GTFRI", "+BUFF")]


def events(conn: Connection, admit: bool = True) -> list[Received]:
    """Every event until NEED_DATA; an Admit is answered as `admit` says."""
    out: list[Received] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return out
        if isinstance(event, Admit):
            event = conn.admitted() if admit else conn.refused("not on the list")
        assert isinstance(event, Received)
        out.append(event)


def feed_all(conn: Connection, chunks: Iterable[bytes]) -> list[Received]:
    got: list[Received] = []
    for chunk in chunks:
        conn.receive_data(chunk)
        got += events(conn)
    return got


def summary(got: list[Received]) -> list[tuple[str, str, str | None, bytes | None, bytes | None]]:
    return [(e.kind, e.status, e.imei, e.reply, e.sack) for e in got]


@pytest.mark.parametrize("how", ["whole", "byte by byte", "packed"])
def test_the_same_bytes_give_the_same_events_however_they_arrive(how: str) -> None:
    data = b"".join(STREAM)
    chunks = {"whole": list(STREAM), "byte by byte": [data[i:i + 1] for i in range(len(data))],
              "packed": [data]}[how]
    got = feed_all(Connection(sack_enabled=True), chunks)
    assert [e.message.type for e in got if e.message] == ["GTFRI", "GTHBD", "GTIGN", "GTOUT", "GTFRI"]
    assert summary(got) == [
        ("report", "ok", IMEI, None, b"+SACK:" + count(FRI) + b"$"),
        ("heartbeat", "ok", IMEI, b"+SACK:GTHBD,090302,252F$", None),  # its own reply, no second SACK
        ("report", "ok", IMEI, None, b"+SACK:" + count(IGN) + b"$"),
        ("ack", "ok", IMEI, None, b"+SACK:" + count(OUT_ACK) + b"$"),
        ("report", "ok", IMEI, None, b"+SACK:24CD$"),
    ]
    assert got[-1].message.buffered  # type: ignore[union-attr]
    assert [e.raw for e in got] == [f.decode()[:-1] for f in STREAM]


def test_junk_after_the_frames_is_held_until_it_ends() -> None:
    conn = Connection()
    conn.receive_data(FRI + b"+RESP:GTFRI,0903")
    assert len(events(conn)) == 1 and conn.pending == len(b"+RESP:GTFRI,0903")
    conn.receive_data(b"02$")
    (bad,) = events(conn)
    assert bad.status == "invalid" and bad.kind == "report" and bad.message is None


def test_the_first_imei_binds_the_connection_once_admitted() -> None:
    conn = Connection()
    conn.receive_data(FRI + IGN)
    admit = conn.next_event()
    assert admit == Admit(IMEI) and conn.imei is None
    with pytest.raises(LocalProtocolError):
        conn.next_event()  # the caller must answer first
    first = conn.admitted()
    assert conn.imei == IMEI and first.status == "ok" and first.message.type == "GTFRI"  # type: ignore[union-attr]
    assert first.device == {"protocol_version": FRI.split(b",")[1].decode(), "config.protocol_format": "ascii"}
    second = conn.next_event()
    assert isinstance(second, Received) and second.status == "ok" and second.device is None


def test_a_refused_imei_is_archived_as_rejected_and_the_connection_ends() -> None:
    conn = Connection()
    conn.receive_data(FRI + IGN)
    assert isinstance(conn.next_event(), Admit)
    refused = conn.refused("vehicle is not enabled")
    assert (refused.status, refused.imei, refused.error) == ("rejected", IMEI, "vehicle is not enabled")
    assert refused.close == "refused: vehicle is not enabled" and refused.sack is None
    assert conn.next_event() is NEED_DATA  # nothing after a refusal is read
    (left,) = conn.leftovers("closing")
    assert left.status == "rejected" and left.message is None and left.raw == IGN.decode()[:-1]


def test_another_imei_on_a_bound_connection_is_rejected() -> None:
    conn = Connection(sack_enabled=True)
    feed_all(conn, [FRI])
    other = FRI.replace(IMEI.encode(), b"860000000000009")
    (got,) = feed_all(conn, [other])
    assert got.status == "rejected" and got.imei == "860000000000009" and got.sack is None
    assert "bound to " + IMEI in (got.error or "")


def test_frames_before_any_imei_are_kept_but_not_served() -> None:
    conn = Connection(sack_enabled=True)
    (got,) = feed_all(conn, [b"+RESP:GTXYZ$"])
    assert (got.kind, got.status, got.imei, got.sack) == ("other", "unknown_type", None, None)


def test_a_bad_frame_on_a_bound_connection_is_sacked_once_stored() -> None:
    conn = Connection(sack_enabled=True)
    feed_all(conn, [FRI])
    (bad,) = feed_all(conn, [b"+RESP:GTFRI,090302," + IMEI.encode() + b",,1,2,3,0A0B$"])
    assert (bad.kind, bad.status, bad.message) == ("report", "invalid", None)
    assert bad.sack == b"+SACK:0A0B$" and bad.error  # stored with its reason: a resend would not improve it
    (other,) = feed_all(conn, [b"+RESP:GTFRI,090302,865083030004643,,1,2,3,0A0C$"])
    assert (other.status, other.sack) == ("invalid", None)  # another tracker's line: not this one's to answer


def test_a_type_we_do_not_know_is_sacked_once_stored() -> None:
    conn = Connection(sack_enabled=True)
    (first, unknown, late) = feed_all(conn, [b"+RESP:GTZZZ,090302," + IMEI.encode() + b",,1,2,20170712154623,0C1D$",
                                             b"+BUFF:GTZZZ,090302," + IMEI.encode() + b",,0C1E$", b"+RESP:GTZZZ,1,2$"])
    assert (first.status, first.imei, first.sack) == ("unknown_type", IMEI, b"+SACK:0C1D$")  # it bound the connection
    assert (unknown.status, unknown.sack) == ("unknown_type", b"+SACK:0C1E$")
    assert (late.status, late.sack) == ("unknown_type", None)  # no count to echo
    assert first.message is not None and first.message.count == "0C1D"
    # A refused IMEI gets nothing, whatever its frame.
    conn = Connection(sack_enabled=True)
    conn.receive_data(b"+RESP:GTZZZ,090302," + IMEI.encode() + b",,0C1F$")
    assert isinstance(conn.next_event(), Admit)
    refused = conn.refused("not on the list")
    assert (refused.status, refused.sack, refused.close) == ("rejected", None, "refused: not on the list")


def test_without_sack_mode_only_heartbeats_are_answered() -> None:
    got = feed_all(Connection(), STREAM)
    assert [(e.reply, e.sack) for e in got] == [(None, None), (b"+SACK:GTHBD,090302,252F$", None)] + [(None, None)] * 3


def test_sack_can_be_switched_on_for_a_live_connection() -> None:
    conn = Connection()
    feed_all(conn, [FRI])
    conn.sack_enabled = True
    (got,) = feed_all(conn, [IGN])
    assert got.sack == b"+SACK:" + count(IGN) + b"$"


def test_an_oversize_frame_is_archived_within_the_cap_and_ends_the_connection() -> None:
    conn = Connection(max_frame_bytes=128)
    (got,) = feed_all(conn, [b"+RESP:GTFRI," + b"9" * 500])
    assert got.status == "invalid" and got.close and "oversize" in got.close and len(got.raw) == 128
    conn.receive_data(FRI)
    assert conn.next_event() is NEED_DATA and conn.pending == 0


def test_leftovers_keep_whole_frames_and_the_unfinished_one() -> None:
    conn = Connection()
    feed_all(conn, [FRI])
    conn.receive_data(IGN + b"+RESP:GTFRI,09")
    left = conn.leftovers("idle for 1800s")
    assert [(e.kind, e.status) for e in left] == [("report", "rejected"), ("report", "invalid")]
    assert left[1].raw == "+RESP:GTFRI,09" and "idle for 1800s" in (left[1].error or "")
    assert conn.pending == 0 and conn.leftovers("again") == []


def test_guesses_for_frames_that_did_not_parse() -> None:
    assert guess_kind("+BUFF:GTFRI,x") == "report" and guess_kind("+ACK:GTHBD,x") == "heartbeat"
    assert guess_kind("+ACK:GTOUT,x") == "ack" and guess_kind("GET /") == "other"
    assert count_of("+RESP:GTFRI,1,2,0a0b") == "0A0B" and count_of("+RESP:GTFRI,1,2,0A0") is None


def test_heartbeats_read_ahead_are_answered_once() -> None:
    conn = Connection(sack_enabled=True)
    feed_all(conn, [FRI])
    ahead = IGN + HBD + b"+RESP:GTFRI,0903"  # read while waiting for storage, not fed yet
    replies, seen = conn.answer_ahead(ahead)
    assert replies == [b"+SACK:GTHBD,090302,252F$"] and seen >= len(IGN + HBD)
    assert conn.answer_ahead(b"+ACK:GTHBD,090302,860000000000001,,20170718163021,0001$")[0] == []  # not its IMEI
    assert conn.answer_ahead(HBD[:20]) == ([], 0)  # cut: looked at again once more bytes are in
    got = feed_all(conn, [ahead[:-len(b"+RESP:GTFRI,0903")]])
    assert [(e.kind, e.reply) for e in got] == [("report", None), ("heartbeat", None)]  # no second reply
    (again,) = feed_all(conn, [HBD])  # the same heartbeat sent again later is answered again
    assert again.reply == b"+SACK:GTHBD,090302,252F$"
    # The same heartbeat twice in what was read ahead: two answers then, none in their turn.
    replies, _ = conn.answer_ahead(HBD + HBD)
    assert replies == [b"+SACK:GTHBD,090302,252F$"] * 2
    assert [e.reply for e in feed_all(conn, [HBD + HBD])] == [None, None]
