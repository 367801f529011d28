"""Fuzzing: the framer and the parsers (ASCII `parse`, HEX `parse_hex`), fed random bytes and
mutated real lines and frames, never raise anything but ProtocolError (and an unknown type is a
message, not an error).

The short variant runs in CI; `--long` runs a million generated inputs in all (see README)."""

from __future__ import annotations

import os
import random

from hypothesis import HealthCheck, given, settings, strategies as st

from gv50_gevent.protocol import Framer, Message, ProtocolError, Unknown, parse, parse_hex
from tests.data import FAMILY_LINES, VENDOR_EXAMPLES, hex_examples

LONG = os.environ.get("GV50_LONG_TESTS") == "1"
# The long variant feeds a million inputs in all, spread over the three generated-input tests.
EXAMPLES = 340_000 if LONG else 3000


def sample_lines() -> list[str]:
    lines = []
    for path in (VENDOR_EXAMPLES, FAMILY_LINES):
        for raw in path.read_text(encoding="latin-1").splitlines():
            raw = raw.strip()
            if raw.startswith(("+RESP:", "+BUFF:", "+ACK:")):
                lines.append(raw[:-1] if raw.endswith("$") else raw)
    return lines


LINES = sample_lines()
HEX_FRAMES = [data for _, data in hex_examples()]
HEX_HEADERS = [b"+RSP", b"+EVT", b"+INF", b"+HBD", b"+ACK", b"+BSP", b"+BVT", b"+BNF"]
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def parse_cleanly(line: str) -> Message | None:
    try:
        message = parse(line)
    except ProtocolError as exc:
        assert exc.reason and isinstance(exc.frame, bytes)
        return None
    assert isinstance(message, Message) and message.raw == line
    return message


def parse_hex_cleanly(data: bytes) -> Message | None:
    try:
        message = parse_hex(data)
    except ProtocolError as exc:
        assert exc.reason and exc.frame == data
        return None
    assert isinstance(message, Message) and message.raw == data.hex().upper()
    return message


@FUZZ
@given(st.binary(max_size=600))
def test_framer_on_random_bytes(data: bytes) -> None:
    framer = Framer(256)
    for start in range(0, len(data), 37):
        framer.feed(data[start:start + 37])
        while True:
            try:
                frame = framer.next_frame()
            except ProtocolError:
                framer = Framer(256)  # the session closes the connection; a new one starts clean
                break
            if frame is None:
                break
            assert len(frame.data) <= 256
            if frame.binary:
                parse_hex_cleanly(frame.data)
            else:
                parse_cleanly(frame.text)
    assert framer.pending <= 256 + 37


@FUZZ
@given(st.text(max_size=400))
def test_parser_on_random_text(text: str) -> None:
    parse_cleanly(text)


@FUZZ
@given(st.sampled_from(LINES), st.data())
def test_parser_on_mutated_real_lines(line: str, data: st.DataObject) -> None:
    fields = line.split(",")
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(fields) - 1))
        fields[i] = data.draw(st.one_of(
            st.just(""), st.text(max_size=12), st.sampled_from(["-1", "999999999999", "1e308", "nan", "ZZZZ",
                                                                 "20171332256161", "0x10", " ", "$", ",,"]),
            st.just(fields[i][: len(fields[i]) // 2]),
        ))
    if data.draw(st.booleans()):
        del fields[data.draw(st.integers(0, len(fields) - 1)):]
    parse_cleanly(",".join(fields))


def test_every_sample_field_truncated_emptied_or_mistyped() -> None:
    """Systematic: each field of every sample line, truncated, emptied and given a wrong type."""
    outcomes = {"parsed": 0, "unknown": 0, "invalid": 0}
    for line in LINES:
        fields = line.split(",")
        for i in range(1, len(fields)):
            for replacement in (fields[i][:-1], "", "x!", "-" + fields[i], fields[i] + "9" * 20):
                mutated = ",".join([*fields[:i], replacement, *fields[i + 1:]])
                message = parse_cleanly(mutated)
                outcomes["invalid" if message is None else "unknown" if isinstance(message, Unknown) else "parsed"] += 1
    assert sum(outcomes.values()) > 10_000
    assert outcomes["invalid"] > 0 and outcomes["parsed"] > 0


def test_random_bytes_through_framer_in_random_cuts() -> None:
    rng = random.Random(5004)
    stream = "".join(line + "$" for line in LINES).encode("latin-1")
    for _ in range(20 if not LONG else 2000):
        framer = Framer(4096)
        frames = []
        pos = 0
        while pos < len(stream):
            step = rng.randint(1, 300)
            framer.feed(stream[pos:pos + step])
            pos += step
            while (frame := framer.next_frame()) is not None:
                frames.append(frame.text)
        assert frames == LINES


@FUZZ
@given(st.sampled_from(HEX_HEADERS), st.binary(max_size=300), st.booleans())
def test_hex_parser_on_random_frames(header: bytes, body: bytes, crlf: bool) -> None:
    parse_hex_cleanly(header + body + (b"\r\n" if crlf else b""))


@FUZZ
@given(st.sampled_from(HEX_FRAMES), st.data())
def test_hex_parser_on_mutated_real_frames(frame: bytes, data: st.DataObject) -> None:
    mutated = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(mutated) - 1))
        action = data.draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        if action == "flip":
            mutated[at] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "set":
            mutated[at] = data.draw(st.integers(0, 255))
        elif action == "insert":
            mutated[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif len(mutated) > 1:
            del mutated[at]
    parse_hex_cleanly(bytes(mutated))


def test_every_hex_byte_of_every_example_changed() -> None:
    """Systematic: each byte of every V4.01 HEX example set to 0x00, 0xFF and +1, and the frame cut there."""
    outcomes = {"parsed": 0, "invalid": 0}
    for frame in HEX_FRAMES:
        for i in range(len(frame)):
            for mutated in (frame[:i] + bytes([v]) + frame[i + 1:] for v in (0, 0xFF, (frame[i] + 1) & 0xFF)):
                outcomes["invalid" if parse_hex_cleanly(mutated) is None else "parsed"] += 1
            outcomes["invalid" if parse_hex_cleanly(frame[:i]) is None else "parsed"] += 1
    assert sum(outcomes.values()) > 5000
    assert outcomes["invalid"] > 0 and outcomes["parsed"] > 0
