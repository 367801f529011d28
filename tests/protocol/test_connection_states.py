"""A state machine over the per-connection core: real device lines (tests/data) and HEX frames,
fed whole, byte by byte or in packed chunks, some read ahead for their heartbeats, some left in
the buffer when the connection ends. A simple model says what each frame must give: the first
IMEI is admitted or refused, another IMEI is rejected, every frame of the bound IMEI with a count
is SACKed when SACK is on, every heartbeat is answered exactly once, nothing is read after a
refusal, and the leftovers are what was fed and never handled.

The default run is kept short (a few seconds); `--long` tries many more sequences."""

from __future__ import annotations

import os
from collections import Counter, deque
from dataclasses import dataclass

from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from gv50_gevent.protocol import encode_hex, parse, parse_hex
from gv50_gevent.protocol.connection import (
    NEED_DATA, Admit, Connection, Received, count_of, heartbeat_reply, imei_in, sack,
)
from gv50_gevent.protocol.errors import ProtocolError
from gv50_gevent.protocol.hex import tail_count
from tests.data import device_lines
from tests.protocol.test_hex import FRI_VALUES

IMEI = "865083030004642"
OTHER = "860000000000009"
LONG = os.environ.get("GV50_LONG_TESTS") == "1"


@dataclass(frozen=True)
class Sample:
    """A frame and what it is, read once with the parsers (the core is what is under test)."""

    data: bytes
    raw: str
    imei: str | None  # the IMEI its message names (None: it did not parse)
    status: str  # ok / unknown_type / invalid, on a connection bound to its IMEI
    count: str | None
    heartbeat: bytes | None = None  # its reply, for a heartbeat


def _sample(data: bytes) -> Sample:
    if data.startswith(b"+RSP"):
        raw = data.hex().upper()
        try:
            m = parse_hex(data)
        except ProtocolError:
            return Sample(data, raw, None, "invalid", tail_count(data))
        return Sample(data, raw, m.imei, "ok", m.count)
    raw = data.decode()[:-1]
    try:
        m = parse(raw)
    except ProtocolError:
        return Sample(data, raw, None, "invalid", count_of(raw))
    status = "unknown_type" if m.kind == "other" else "ok"
    beat = heartbeat_reply(m.protocol_version, m.count) if m.kind == "heartbeat" else None
    return Sample(data, raw, m.imei, status, m.count, beat)


def _as(line: str, imei: str) -> bytes:
    fields = line.split(",")
    fields[2] = imei
    return ",".join(fields).encode()


_VENDOR = device_lines()
_HEX = encode_hex("+RSP", "GTFRI", {**FRI_VALUES, "imei": IMEI, "battery_percent": 80, "trip_km": 1.5,
                                    "trip_hour_meter_s": 600}, 0x00FE10BF)
POOL: list[Sample] = [_sample(_as(line, IMEI)) for line in _VENDOR] + [_sample(d) for d in (
    _as(_VENDOR[0], OTHER),  # another tracker's ACK
    _as(next(v for v in _VENDOR if v.startswith("+ACK:GTHBD")), OTHER),  # and heartbeat
    _as(next(v for v in _VENDOR if v.startswith("+RESP:GTFRI")), OTHER),
    f"+RESP:GTZZZ,090302,{IMEI},,1,2,0C1D$".encode(),  # a type we do not know
    f"+RESP:GTFRI,090302,{IMEI},,1,2,3,0A0B$".encode(),  # invalid, with a count
    f"+RESP:GTFRI,090302,{OTHER},,1,2,3,0A0C$".encode(),  # invalid, another IMEI's
    b"+RESP:GTFRI,x$",  # invalid, no count
    _HEX,  # no device type, protocol version or firmware (mask 00FE10BF)
    _HEX[:-4] + b"\x00\x00\r\n",  # its CRC wrong: kept all the same
    _HEX[:11] + b"\xff" + _HEX[12:],  # an IMEI byte above 99: does not decode, the tail has its count
    encode_hex("+RSP", "GTFRI", {**FRI_VALUES, "imei": IMEI}, 1 << 5),  # no Length: its layout sizes it
)]
HEARTBEATS = [s for s in POOL if s.heartbeat]
ODD = POOL[len(_VENDOR):]
assert HEARTBEATS and any(s.status == "invalid" for s in POOL) and any(s.imei == OTHER for s in POOL)
# The vendor lines, and more often than their share the heartbeats and the odd frames.
FRAMES = st.one_of(st.sampled_from(POOL), st.sampled_from(HEARTBEATS), st.sampled_from(ODD))


class ConnectionMachine(RuleBasedStateMachine):
    @initialize(sack_on=st.booleans(), admit=st.booleans())
    def start(self, sack_on: bool, admit: bool) -> None:
        self.conn = Connection(sack_enabled=sack_on)
        self.sack_on, self.admit = sack_on, admit
        self.bound: str | None = None
        self.closed = False
        self.ended = False
        self.unfed = bytearray()  # written by the tracker, not fed yet
        self.written: deque[Sample] = deque()  # the frames of `unfed`, in order
        self.looked = 0  # how far into `unfed` answer_ahead has looked
        self.undrained: deque[tuple[Sample, int]] = deque()  # fed, not yet taken out, with where they end
        self.fed = 0  # bytes fed to the core
        self.closed_at: int | None = None  # bytes fed when the connection was refused
        self.ahead: Counter[str] = Counter()  # heartbeats answered ahead, not yet come through
        self.replies = 0  # heartbeat replies given, ahead or in their turn
        self.heartbeats = 0  # heartbeats that came through while the connection was served

    # -- the tracker writes; the gateway reads ahead and feeds -----------------------------------

    @precondition(lambda self: not self.ended)
    @rule(frames=st.lists(FRAMES, min_size=1, max_size=5))
    def write(self, frames: list[Sample]) -> None:
        for sample in frames:
            self.unfed += sample.data
            self.written.append(sample)

    @precondition(lambda self: not self.ended and len(self.unfed) > self.looked)
    @rule()
    def read_ahead(self) -> None:
        """Heartbeats in bytes read while waiting for storage are answered at once, by the bound
        connection, for its own IMEI only; each exactly once."""
        replies, seen = self.conn.answer_ahead(bytes(self.unfed[self.looked:]))
        expected = []
        if self.bound is not None and not self.closed:
            at = 0
            for sample in self.written:
                end = at + len(sample.data)
                if at >= self.looked + seen:
                    break
                if at >= self.looked and sample.heartbeat and sample.imei == self.bound and end <= self.looked + seen:
                    expected.append(sample.heartbeat)
                    self.ahead[sample.raw] += 1
                at = end
        assert replies == expected
        self.replies += len(replies)
        self.looked += seen

    @precondition(lambda self: not self.ended and self.unfed)
    @rule(how=st.sampled_from(["whole", "byte by byte", "chunks"]), drain=st.booleans(), data=st.data())
    def feed(self, how: str, drain: bool, data: st.DataObject) -> None:
        payload = bytes(self.unfed)
        if how == "whole":
            chunks = [payload]
        elif how == "byte by byte":
            chunks = [payload[i:i + 1] for i in range(len(payload))]
        else:
            cuts = sorted(data.draw(st.lists(st.integers(1, len(payload)), max_size=6)))
            chunks = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)]) if b > a]
        if not self.closed:
            end = self.fed
            for sample in self.written:
                end += len(sample.data)
                self.undrained.append((sample, end))
        for chunk in chunks:
            self.conn.receive_data(chunk)
            if not self.closed:
                self.fed += len(chunk)  # what arrives after a refusal is not read
            if drain:
                self._drain()
        self.unfed.clear()
        self.written.clear()
        self.looked = 0
        if drain:
            self._drain()

    @precondition(lambda self: not self.ended)
    @rule()
    def read(self) -> None:
        self._drain()

    @precondition(lambda self: not self.ended)
    @rule(data=st.data())
    def end(self, data: st.DataObject) -> None:
        """The connection ends with frames fed and never handled, and maybe half a frame."""
        cut = data.draw(st.sampled_from([s for s in POOL if not s.data.startswith(b"+RSP")]))
        part = cut.data[:data.draw(st.integers(0, len(cut.data) - 2))]
        self.conn.receive_data(part)
        left = self.conn.leftovers("test")
        expected = []
        for sample, end in self.undrained:
            start = end - len(sample.data)
            if end <= self.fed:
                expected.append((sample.raw, "rejected"))  # whole in the buffer, never handled
            elif start < self.fed:
                expected.append((sample.data[:self.fed - start].decode("latin-1"), "invalid"))  # cut by the refusal
        if part and not self.closed:
            expected.append((part.decode(), "invalid"))
        assert [(e.raw, e.status) for e in left] == expected
        assert all(e.sack is None and e.reply is None for e in left)
        assert self.conn.pending == 0 and self.conn.leftovers("again") == []
        self.undrained.clear()
        self.ended = True

    @precondition(lambda self: self.ended)
    @rule()
    def after_the_end(self) -> None:
        assert self.conn.next_event() is NEED_DATA and self.conn.pending == 0

    # -- what each frame must give ----------------------------------------------------------------

    def _drain(self) -> None:
        while True:
            event = self.conn.next_event()
            if event is NEED_DATA:
                return
            assert self.undrained, f"an event for a frame never fed: {event}"
            sample, end = self.undrained.popleft()
            assert end <= self.fed
            if isinstance(event, Admit):
                assert self.bound is None and sample.imei is not None and event.imei == sample.imei
                if not self.admit:
                    got = self.conn.refused("not on the list")
                    assert (got.raw, got.status, got.sack, got.reply) == (sample.raw, "rejected", None, None)
                    assert got.close == "refused: not on the list"
                    self.closed = True
                    continue
                self.bound = sample.imei
                event = self.conn.admitted()
            assert isinstance(event, Received) and not self.closed
            self._check(sample, event)

    def _check(self, sample: Sample, got: Received) -> None:
        assert got.raw == sample.raw
        assert got.close is None
        if sample.imei is not None and sample.imei != self.bound:
            assert (got.status, got.imei, got.sack, got.reply) == ("rejected", sample.imei, None, None)
            return
        if sample.imei is None and self.bound is None:
            assert got.sack is None and got.reply is None  # nobody admitted: nobody answered
            assert got.status == sample.status
            return
        assert got.status == sample.status
        named = imei_in(sample.raw) if sample.status == "invalid" else None
        answered = (self.sack_on and sample.count is not None and sample.heartbeat is None
                    and named in (None, self.bound))
        assert got.sack == (sack(sample.count) if answered else None), sample.raw  # type: ignore[arg-type]
        if sample.heartbeat:
            self.heartbeats += 1
            if self.ahead[sample.raw]:
                self.ahead[sample.raw] -= 1
                assert got.reply is None  # answered when it was read ahead
            else:
                assert got.reply == sample.heartbeat
                self.replies += 1
        else:
            assert got.reply is None

    @invariant()
    def bounded_and_bound_once(self) -> None:
        if not hasattr(self, "conn"):
            return
        assert self.conn.imei == self.bound
        if not self.closed and not self.ended:
            # The buffer holds exactly the frames fed and not yet taken out: nothing lost, nothing kept twice.
            assert self.conn.pending == sum(len(sample.data) for sample, _ in self.undrained)
        # Every heartbeat that came through was answered once; the others answered ahead are on their way.
        assert self.replies == self.heartbeats + sum(self.ahead.values())


ConnectionMachine.TestCase.settings = settings(
    max_examples=2000 if LONG else 150, stateful_step_count=25, deadline=None, database=None,
    suppress_health_check=list(HealthCheck),
)
TestConnectionMachine = ConnectionMachine.TestCase
