"""The Framer replays the same bytes whole, one byte at a time, packed together and in random
chunks, and always yields the same frames. HEX frames are framed by their Length field, or
without one by the size their layout fixes."""

from __future__ import annotations

import random

import pytest

from gv50_gevent.protocol import Frame, Framer, FrameTooLong, ProtocolError, encode_hex, parse_hex
from tests.protocol.test_hex import FRI_VALUES, bits

# Reference frames of spec 1.7 (V4.01 p. 141 and 172). The +ACK carries 0x24 (`$`) as its Length byte.
HEX_ACK = bytes.fromhex(
    "2B 41 43 4B 01 EF 24 09 01 03 03 02 56 50 22 00 0A 00 27 07 00 07 F9 07 DD 01 1E 0A 15 0A 01 01 F9 19 0D 0A")
HEX_HBD = bytes.fromhex(
    "2B 48 42 44 EF 20 09 01 03 03 02 56 50 22 00 0A 00 27 07 07 DD 01 1D 14 02 13 00 39 D2 5B 0D 0A")


def drain(framer: Framer) -> list[Frame]:
    frames = []
    while (frame := framer.next_frame()) is not None:
        frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def frames(vendor_lines: list[str], traccar_lines: list[str]) -> list[bytes]:
    """Every device line of both sample files as a frame; Traccar lines without `$` get one."""
    lines = vendor_lines + traccar_lines
    out = [(line if line.endswith("$") else line + "$").encode("ascii") for line in lines]
    assert len(out) == 85 + 296
    return out


def test_reference_hex_frames_are_what_the_spec_prints() -> None:
    assert len(HEX_ACK) == 36 and HEX_ACK[6] == 36 and HEX_ACK[6:7] == b"$"
    assert len(HEX_HBD) == 32 and HEX_HBD[5] == 32
    assert HEX_ACK.endswith(b"\r\n") and HEX_HBD.endswith(b"\r\n")


def test_whole_one_frame_per_feed(frames: list[bytes]) -> None:
    framer = Framer()
    got = []
    for frame in frames:
        framer.feed(frame)
        got += drain(framer)
    assert [f.data for f in got] == frames
    assert not any(f.binary for f in got) and framer.pending == 0


def test_all_packed_into_one_buffer(frames: list[bytes]) -> None:
    framer = Framer()
    framer.feed(b"".join(frames))
    assert [f.data for f in drain(framer)] == frames
    assert framer.pending == 0


def test_one_byte_at_a_time(frames: list[bytes]) -> None:
    framer = Framer()
    got = []
    for byte in b"".join(frames):
        framer.feed(bytes([byte]))
        got += drain(framer)
    assert [f.data for f in got] == frames


def test_random_chunks(frames: list[bytes]) -> None:
    data = b"".join(frames)
    rng = random.Random(50)
    framer = Framer()
    got = []
    i = 0
    while i < len(data):
        step = rng.randint(1, 700)
        framer.feed(data[i:i + step])
        got += drain(framer)
        i += step
    assert [f.data for f in got] == frames


def test_crlf_and_blanks_between_frames_are_skipped(frames: list[bytes]) -> None:
    seps = [b"\r\n", b"\n", b"  ", b"\r\n\r\n", b"\t", b""]
    data = b"".join(frame + seps[i % len(seps)] for i, frame in enumerate(frames))
    framer = Framer()
    framer.feed(b"\r\n" + data)
    assert [f.data for f in drain(framer)] == frames
    assert framer.pending == 0


def test_a_partial_frame_waits_for_more(frames: list[bytes]) -> None:
    framer = Framer()
    first, second = frames[0], frames[1]
    framer.feed(first + second[:10])
    assert [f.data for f in drain(framer)] == [first]
    assert framer.next_frame() is None and framer.pending == 10
    framer.feed(second[10:])
    assert framer.next_frame() == Frame(second)


def test_junk_before_a_frame_stays_in_it_for_the_parser_to_reject() -> None:
    framer = Framer()
    framer.feed(b"hello+RESP:GTPNA,090302,865083030002554,,20170731153318,01F9$")
    frame = framer.next_frame()
    assert frame is not None and frame.data.startswith(b"hello+RESP")


def test_text_drops_the_terminator(frames: list[bytes]) -> None:
    framer = Framer()
    framer.feed(frames[0])
    frame = framer.next_frame()
    assert frame is not None and frame.text == frames[0][:-1].decode()


def test_oversize_without_terminator_raises() -> None:
    framer = Framer(max_frame_bytes=64)
    framer.feed(b"+RESP:GTFRI," + b"1" * 52)  # exactly 64 bytes: still waiting
    assert framer.next_frame() is None
    framer.feed(b"1")
    with pytest.raises(FrameTooLong) as info:
        framer.next_frame()
    assert info.value.frame == (b"+RESP:GTFRI," + b"1" * 52)
    assert "64" in info.value.reason


def test_oversize_with_terminator_raises() -> None:
    framer = Framer(max_frame_bytes=64)
    framer.feed(b"+RESP:GTFRI," + b"2" * 60 + b"$")
    with pytest.raises(FrameTooLong):
        framer.next_frame()
    ok = Framer(max_frame_bytes=64)
    line = b"+RESP:GTFRI," + b"2" * 51 + b"$"
    assert len(line) == 64
    ok.feed(line)
    assert ok.next_frame() == Frame(line)


def test_the_vendor_lines_fit_the_default_cap(frames: list[bytes]) -> None:
    assert max(map(len, frames)) < Framer().max_frame_bytes


# -- HEX ------------------------------------------------------------------------------------


@pytest.mark.parametrize("hex_frame", [HEX_ACK, HEX_HBD], ids=["ack", "hbd"])
def test_hex_frame_is_binary_and_framed_by_length(hex_frame: bytes) -> None:
    framer = Framer()
    framer.feed(hex_frame)
    assert framer.next_frame() == Frame(hex_frame, binary=True)
    assert framer.pending == 0


@pytest.mark.parametrize("hex_frame", [HEX_ACK, HEX_HBD], ids=["ack", "hbd"])
def test_hex_frame_split_across_feeds(hex_frame: bytes) -> None:
    framer = Framer()
    got = []
    for byte in hex_frame:
        framer.feed(bytes([byte]))
        got += drain(framer)
    assert got == [Frame(hex_frame, binary=True)]


def test_hex_then_ascii_then_hex(frames: list[bytes]) -> None:
    ascii_frame = frames[0]
    data = HEX_ACK + ascii_frame + b"\r\n" + HEX_HBD + ascii_frame
    expected = [Frame(HEX_ACK, True), Frame(ascii_frame), Frame(HEX_HBD, True), Frame(ascii_frame)]
    whole = Framer()
    whole.feed(data)
    assert drain(whole) == expected
    byte_by_byte = Framer()
    got = []
    for byte in data:
        byte_by_byte.feed(bytes([byte]))
        got += drain(byte_by_byte)
    assert got == expected


def test_ascii_ack_is_not_hex() -> None:
    framer = Framer()
    framer.feed(b"+ACK")
    assert framer.next_frame() is None  # cannot tell yet: byte 4 decides
    framer.feed(b":GTHBD,090302,865083030004642,,20170718163021,252F$")
    frame = framer.next_frame()
    assert frame is not None and not frame.binary and frame.text.startswith("+ACK:GTHBD")


def test_hex_frame_with_impossible_length_raises() -> None:
    framer = Framer()
    framer.feed(HEX_HBD[:5] + b"\x02" + HEX_HBD[6:])
    with pytest.raises(ProtocolError, match="impossible length"):
        framer.next_frame()
    big = Framer(max_frame_bytes=64)
    big.feed(b"+RSP\x07\x00\xfe\x17\xbf\xff\xff")  # mask 00FE17BF (Length on): 65535 bytes announced
    with pytest.raises(ProtocolError, match="impossible length"):
        big.next_frame()


def test_hex_frames_whose_mask_leaves_out_the_length_are_framed_by_their_layout() -> None:
    imei = FRI_VALUES["imei"]
    no_length = [
        encode_hex("+RSP", "GTFRI", FRI_VALUES, 0),  # none of the optional bits
        encode_hex("+BSP", "GTFRI", FRI_VALUES, bits(4, 5)),  # the send time and the count
        encode_hex("+EVT", "GTIGN", {**FRI_VALUES, "duration_s": 5}, bits(5)),
        encode_hex("+HBD", None, {"imei": imei, "count": "0001"}, bits(6, 7)),
        encode_hex("+ACK", "GTOUT", {"imei": imei, "sub_id": 0, "serial": "0A0B", "count": "0002"}, bits(6)),
    ]
    stream = b"".join(no_length) + HEX_HBD + b"+ACK:GTHBD,090302," + imei.encode() + b",,20170718163021,252F$"
    for chunks in ([stream], [stream[i:i + 1] for i in range(len(stream))]):
        framer = Framer()
        got = []
        for chunk in chunks:
            framer.feed(chunk)
            got += drain(framer)
        assert [f.data for f in got[:6]] == [*no_length, HEX_HBD] and not got[6].binary
    assert all(parse_hex(f).imei == imei for f in no_length)
    # A frame whose size its layout does not fix (GTLBC's phone number says its own length) cannot be.
    lbc = encode_hex("+RSP", "GTLBC", {**FRI_VALUES, "call_number": "+15550100"}, bits(5))
    framer = Framer()
    framer.feed(lbc)
    with pytest.raises(ProtocolError, match="size is not fixed"):
        framer.next_frame()
