"""One simulated GV50 on a real TCP socket: the lines it writes, its buffer, its answers to commands.

A `SimTracker` behaves like a GV50 in TCP long-connection mode (SRI report mode 3):

* every message carries a count number that goes up by one per message (reports, ACKs and
  heartbeats alike) and wraps from FFFF to 0000; the send time is device local time, here UTC;
* with SACK enabled, each `+RESP` report stays in a bounded buffer (600, like the device's
  non-volatile buffer) until the server answers `+SACK:<count>$`; reports written while the
  connection is down are buffered too, and after a reconnect the buffer is replayed as `+BUFF`
  with the original send time and count (spec 1.5, 1.6); `backfill()` fills that buffer as if the
  tracker had been offline, for a reconnect storm;
* it decodes `AT+GT...$` commands and answers with `+ACK` echoing the serial (A7, or A8 for GEO and
  RTO), then the report the command asks for (RTO 1 -> GTRTL, 8 -> GTVER, A -> GTIOS,
  2 -> its settings as GTALM packets, or GTALS for one command);
* it keeps its settings as the dump blocks of V4.01 4.3.2 (`settings`, tag -> values; empty until
  `load_settings` gives it a dump), and a setting command it acknowledges changes the slots it
  fills (unless `Behaviour.keep_settings`: a command that does not take).

Sockets come from `gevent.socket` directly, so the class cooperates with gevent whether or not the
process was monkey-patched; importing this module patches nothing.
"""

from __future__ import annotations

import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import gevent
from gevent import socket as gsocket
from gevent.lock import Semaphore

from ..protocol.commands import CommandLine, decode_command
from ..protocol.config_blocks import BLOCKS, COMMAND_FORMS
from ..protocol.errors import ProtocolError
from .hexmode import hex_frame
from ..protocol.parser import parse
from ..protocol.reports_info import SettingsReport

PROTOCOL_VERSION: Final = "090302"   # GV50, protocol 3.02: what the V4.01 report examples carry
BUFFER_LIMIT: Final = 600            # reports kept in the device's non-volatile buffer (spec 1.6)
RECV_BYTES: Final = 4096
REPLAY_CHUNK: Final = 50             # +BUFF lines per write when a buffer is replayed
HBD_PENDING_LIMIT: Final = 64        # heartbeats awaiting their reply, per tracker
# AT+GTRTO sub-command -> the name its +ACK carries in the inserted field (V4.01 3.2.7.1, p. 56-60).
RTO_NAMES: Final[dict[str, str]] = {
    "0": "GPS", "1": "RTL", "2": "READ", "3": "REBOOT", "4": "RESET", "6": "CID", "7": "CSQ", "8": "VER",
    "9": "BAT", "A": "IOS", "B": "TMZ", "C": "GIR", "D": "DELBUF", "E": "GSV",
}
A8_TYPES: Final = frozenset({"GTGEO", "GTRTO"})
# How GTALM spreads the blocks over its four packets (V4.01 4.3.2).
GTALM_PACKETS: Final[tuple[tuple[str, ...], ...]] = (
    ("BSI", "SRI", "CFG", "TOW", "EPS", "DIS", "TMA", "FRI", "GEO", "SPD", "PIN", "OWH", "DOG", "IDL", "HMC", "HBM",
     "WLT", "HRM", "PDS", "OUT", "SSR", "RMD"),
    ("FFC", "CMD"),
    ("UDF", "GAM"),
    ("VVS", "AVS"),
)

# What a simulated tracker is set to out of the box (`factory_reset`): the blocks a profile can
# set, in the dump's slot order, with plausible defaults (a 60 s fixed report, this gateway's port).
FACTORY_SETTINGS: Final[dict[str, tuple[str, ...]]] = {
    "BSI": ("internet", "", "", "", "", "", ""),
    "SRI": ("3", "", "1", "127.0.0.1", "5004", "", "0", "", "5", "0", "0", "0", "", "0"),
    "FRI": ("1", "0", "", "0", "0000", "0000", "", "60", "1000", "1000", "", "0", "300", "", "", "", ""),
    "HRM": ("", "", "6F", "FE17BF", "FE17BF", "F77D", "EF", "", "", "", ""),
}

_clock_cache: list[Any] = [-1, ""]


def device_time(now: float | None = None) -> str:
    """YYYYMMDDHHMMSS in UTC (the device's default time zone is +0:00)."""
    second = int(time.time() if now is None else now)
    if _clock_cache[0] != second:
        _clock_cache[0] = second
        _clock_cache[1] = time.strftime("%Y%m%d%H%M%S", time.gmtime(second))
    return _clock_cache[1]


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How a tracker misbehaves (or not). One instance is shared by a whole fleet."""

    sack: bool = False                  # SACK Enable: keep reports until +SACK:<count>$ arrives
    track_sacked: bool = False          # remember every SACKed report line (for tests)
    silent: bool = False                # never ACK a command
    ack_delay: float = 0.0              # seconds between a command arriving and its ACK
    duplicate_ack: bool = False         # write every ACK twice
    disconnect_after: int | None = None  # drop the first connection after this many messages
    disconnect_on_command: bool = False  # drop the connection when a command arrives, unanswered
    reboot_on_command: bool = True      # RTO 3 (REBOOT) closes the connection after its ACK
    # Bytes per write when the buffer is replayed (about; whole lines); None = REPLAY_CHUNK lines.
    # A GV50 coming back after an outage sends its buffer back to back: 600 reports are about
    # 100 KB, more than the gateway reads at once.
    replay_bytes: int | None = None
    keep_settings: bool = False         # ACK setting commands but change nothing (they did not take)
    hex: bool = False                   # Protocol Format 1: reports, events, heartbeats as HEX frames


DEFAULT_BEHAVIOUR: Final = Behaviour()


class SimTracker:
    """A GV50: builds lines, keeps its buffer, talks over one socket at a time."""

    __slots__ = (
        "imei", "version", "behaviour", "lat", "lon", "speed", "azimuth", "altitude", "mileage", "ignition",
        "output1", "count", "settings", "sock", "down_at", "buffer", "sacked", "commands", "on_sack",
        "on_hbd_reply", "on_down", "_hbd_pending", "last_sack_at", "_lock", "_reader",
        "_conn_messages", "_dropped_once",
        "sent", "fri_sent", "hbd_sent", "acks_sent", "resp_sent", "replayed", "sacks_received", "sacked_count",
        "hbd_replies", "hbd_unanswered", "buffer_dropped", "connects", "disconnects", "dropped_by_peer",
        "bad_commands", "rejects",
    )

    def __init__(self, imei: str, behaviour: Behaviour = DEFAULT_BEHAVIOUR, *, lat: float = 31.855243,
                 lon: float = 117.201342, count: int = 0, version: str = PROTOCOL_VERSION) -> None:
        if not (imei.isdigit() and len(imei) == 15):
            raise ValueError(f"IMEI must be 15 digits, not {imei!r}")
        self.imei = imei
        self.version = version
        self.behaviour = behaviour
        self.lat, self.lon = lat, lon
        self.speed, self.azimuth, self.altitude, self.mileage = 0.0, 0, 30.0, 0.0
        self.ignition = True
        self.output1 = False
        self.count = (count - 1) & 0xFFFF     # next_count() returns `count` first
        self.settings: dict[str, tuple[str, ...]] = dict(FACTORY_SETTINGS)  # dump tag -> values, as GTALM lists
        self.rejects: set[str] = set()  # command tags (`FRI`) it does not accept: no ACK, nothing changes
        self.sock: Any = None
        self.down_at = 0.0
        self.buffer: OrderedDict[str, tuple[str, float]] = OrderedDict()  # count -> (+RESP line, sent at)
        self.sacked: set[str] | None = set() if behaviour.track_sacked else None
        self.commands: list[list[Any]] = []   # [arrived_at (epoch s), acked_at or None, raw line]
        self.on_sack: Callable[[float], None] | None = None   # SACK latency in seconds, for a fleet
        # A heartbeat's reply: its latency in seconds, whether it was the connection's first
        # heartbeat, and how long the reply came after the SACKs of every report written before
        # the heartbeat (0 when it came first): the time it was held back beyond its own turn.
        self.on_hbd_reply: Callable[[float, bool, float], None] | None = None
        self.on_down: Callable[[], None] | None = None  # the connection dropped (for a fleet's driver)
        self._hbd_pending: dict[str, tuple[float, bool]] = {}
        self.last_sack_at = 0.0  # monotonic time of the last SACK that released a buffered report
        self._lock = Semaphore()
        self._reader: gevent.Greenlet | None = None
        self._conn_messages = 0
        self._dropped_once = False
        self.sent = self.fri_sent = self.hbd_sent = self.acks_sent = self.resp_sent = self.replayed = 0
        self.sacks_received = self.sacked_count = self.hbd_replies = self.hbd_unanswered = self.buffer_dropped = 0
        self.connects = self.disconnects = self.dropped_by_peer = self.bad_commands = 0

    # --- counters and motion ---

    def next_count(self) -> str:
        self.count = (self.count + 1) & 0xFFFF
        return f"{self.count:04X}"

    def move(self, seconds: float) -> None:
        """Drive on for `seconds`: a gentle random walk at 20-90 km/h."""
        self.speed = min(90.0, max(20.0, self.speed + random.uniform(-5, 5) if self.speed else random.uniform(30, 60)))
        self.azimuth = (self.azimuth + random.randint(-15, 15)) % 360
        km = self.speed * seconds / 3600
        self.lat = max(-89.0, min(89.0, self.lat + km / 111.32 * math.cos(math.radians(self.azimuth))))
        self.lon = (self.lon + km / (111.32 * math.cos(math.radians(self.lat))) * math.sin(math.radians(self.azimuth))
                    + 180) % 360 - 180
        self.mileage += km

    def _block(self, accuracy: int, speed: float, azimuth: int, altitude: float, lat: float, lon: float,
               fix_time: str) -> str:
        # Position block P(k), spec 2.3: 12 fields, GPS UTC time, MCC/MNC/LAC/cell, reserved 00.
        cell = f"{int(self.imei[-4:]) & 0xFFFF:04X}"
        return (f"{accuracy},{speed:.1f},{azimuth},{altitude:.1f},{lon:.6f},{lat:.6f},{fix_time},"
                f"0460,0001,5504,{cell},00")

    def _status(self) -> str:
        # SSIIOO (spec 2.4): motion state, input status (bit 0 ignition), output status (bit 0 output 1).
        motion = ("22" if self.speed > 0 else "21") if self.ignition else "11"
        return f"{motion}{'01' if self.ignition else '00'}{'01' if self.output1 else '00'}"

    # --- the lines (each one takes the next count number) ---

    def fri(self, lat: float | None = None, lon: float | None = None, speed: float | None = None, *,
            azimuth: int | None = None, altitude: float | None = None, accuracy: int = 1,
            report_type: str = "10", fix_time: str | None = None, now: float | None = None) -> str:
        """+RESP:GTFRI in V4.01's 30-field layout (4.1.2), one position."""
        sent = device_time(now)
        block = self._block(accuracy, self.speed if speed is None else speed,
                            self.azimuth if azimuth is None else azimuth,
                            self.altitude if altitude is None else altitude,
                            self.lat if lat is None else lat, self.lon if lon is None else lon, fix_time or sent)
        hours = self.mileage / 50  # an hour meter that agrees with an average of 50 km/h
        meter = f"{int(hours):05d}:{int(hours * 60) % 60:02d}:{int(hours * 3600) % 60:02d}"
        return (f"+RESP:GTFRI,{self.version},{self.imei},,12450,{report_type},1,{block},{self.mileage:.1f},{meter},"
                f",,,{self._status()},23,0,12,{sent},{self.next_count()}$")

    def _ignition(self, kind: str, duration_s: int, now: float | None) -> str:
        # Event reports carry the last known fix with accuracy 0 (spec 2.3).
        sent = device_time(now)
        block = self._block(0, 0.0, self.azimuth, self.altitude, self.lat, self.lon, sent)
        return (f"+RESP:{kind},{self.version},{self.imei},,{min(duration_s, 999999)},{block},,"
                f"{self.mileage:.1f},{sent},{self.next_count()}$")

    def ign(self, off_for_s: int = 600, now: float | None = None) -> str:
        """+RESP:GTIGN (4.4.4, 21 fields); the tracker's ignition is on afterwards."""
        self.ignition = True
        return self._ignition("GTIGN", off_for_s, now)

    def igf(self, on_for_s: int = 600, now: float | None = None) -> str:
        """+RESP:GTIGF (4.4.4, 21 fields); the tracker stops and its ignition is off afterwards."""
        self.ignition, self.speed = False, 0.0
        return self._ignition("GTIGF", on_for_s, now)

    def heartbeat(self, now: float | None = None) -> str:
        """+ACK:GTHBD (spec 1.4, 6 fields)."""
        return f"+ACK:GTHBD,{self.version},{self.imei},,{device_time(now)},{self.next_count()}$"

    def ack(self, command: CommandLine, now: float | None = None) -> str:
        """The +ACK for a command: A7, or A8 with the GEO ID / RTO sub-command name before the serial."""
        head = f"+ACK:{command.type},{self.version},{self.imei},,"
        if command.type in A8_TYPES:
            sub = command.fields[0] if command.fields else None
            if command.type == "GTRTO":
                sub = RTO_NAMES.get((sub or "").upper(), sub)
            head += f"{sub or ''},"
        return f"{head}{command.serial},{device_time(now)},{self.next_count()}$"

    def rtl(self, now: float | None = None) -> str:
        """+RESP:GTRTL (4.1.1) with a fresh fix, as after AT+GTRTO sub-command 1."""
        sent = device_time(now)
        block = self._block(1, self.speed, self.azimuth, self.altitude, self.lat, self.lon, sent)
        return f"+RESP:GTRTL,{self.version},{self.imei},,,00,1,{block},{self.mileage:.1f},{sent},{self.next_count()}$"

    def ver(self, now: float | None = None) -> str:
        """+RESP:GTVER (4.3.7): model, software 020E, hardware 0105 as in the V4.01 example."""
        return f"+RESP:GTVER,{self.version},{self.imei},,GV50,020E,0105,{device_time(now)},{self.next_count()}$"

    def ios(self, now: float | None = None) -> str:
        """+RESP:GTIOS (4.3.9): input status (ignition bit 0), output status (output 1 bit 0)."""
        inputs, outputs = ("01" if self.ignition else "00"), ("01" if self.output1 else "00")
        return (f"+RESP:GTIOS,{self.version},{self.imei},,0,0,0,{inputs},{outputs},{device_time(now)},"
                f"{self.next_count()}$")

    def backfill(self, reports: int, every_s: float = 30.0, now: float | None = None) -> None:
        """Fill the buffer with `reports` GTFRI made while the tracker was offline, one every
        `every_s` seconds up to `now`, as a GV50 holds them until it can send them (its buffer
        keeps BUFFER_LIMIT; older ones are dropped). The next `connect()` replays them as +BUFF."""
        end = time.time() if now is None else now
        for k in range(reports):
            self.move(every_s)
            self.send_report(self.fri(now=end - (reports - 1 - k) * every_s))

    # --- settings ---

    def load_settings(self, dump_lines: list[str]) -> None:
        """Take the settings a GTALM / GTALC / GTALS dump lists (another unit's lines will do)."""
        for line in dump_lines:
            report = parse(line[:-1] if line.endswith("$") else line)
            if not isinstance(report, SettingsReport):
                raise ValueError(f"not a settings dump: {line[:40]}")
            for tag, values in report.blocks().items():
                self.settings["TMA" if tag == "TMZ" else tag] = tuple(v or "" for v in values)

    def answer_lines(self, raw: str) -> list[str]:
        """What this tracker answers to one command line when it has no connection of its own (UDP):
        its +ACK, and its settings dump for a read; a setting it acknowledges changes. Nothing for a
        command it rejects (`rejects`)."""
        command = decode_command(raw)
        if command.type[2:] in self.rejects:
            return []
        lines = [self.ack(command)]
        if command.type != "GTRTO":
            self._apply_setting(command)
        elif (command.fields[0] or "").upper() == "2":
            lines += self.settings_reports((command.fields[1:2] or (None,))[0])
        return lines

    def factory_reset(self) -> None:
        """Back to the factory settings, as after a reset by SMS or the manage tool."""
        self.settings = dict(FACTORY_SETTINGS)

    def _apply_setting(self, command: CommandLine) -> None:
        """A setting command changes the slots it fills, where the dump lists the command's slots
        as they are sent, and OUT's DOS report (not TMA, WLT, RMD, nor the repeated GEO/FFC/CMD/UDF
        entries)."""
        tag = command.type[2:]
        block = BLOCKS.get(tag)
        if tag == "OUT" and "OUT" in self.settings and not self.behaviour.keep_settings and len(command.fields) > 6:
            # The dump's OUT block carries only the DOS report switch, command slot 7.
            if command.fields[6]:
                self.settings["OUT"] = (command.fields[6], *self.settings["OUT"][1:])
            return
        if (self.behaviour.keep_settings or tag not in self.settings or tag in COMMAND_FORMS or block is None
                or block.repeat != 1 or not block.slots or len(command.fields) != block.width):
            return
        values = list(self.settings[tag])
        for k, value in enumerate(command.fields):
            if value:
                values[k] = value
        self.settings[tag] = tuple(values)

    def settings_reports(self, command: str | None = None, now: float | None = None) -> list[str]:
        """The answer to AT+GTRTO sub-command 2: GTALM packets, or GTALS for one command."""
        if command:
            tag = "TMA" if command == "TMZ" else command
            values = ",".join(self.settings.get(tag, ("",) * BLOCKS[tag].width if tag in BLOCKS else ()))
            return [f"+RESP:GTALS,{self.version},{self.imei},,{command},{values},{device_time(now)},"
                    f"{self.next_count()}$"]
        total = len(GTALM_PACKETS)
        lines = []
        for n, tags in enumerate(GTALM_PACKETS, 1):
            blocks = ",".join(",".join((tag, *self.settings[tag])) for tag in tags if tag in self.settings)
            lines.append(f"+RESP:GTALM,{self.version},{self.imei},,{total},{n},{blocks},{device_time(now)},"
                         f"{self.next_count()}$")
        return lines

    @staticmethod
    def buff(line: str) -> str:
        """The replayed form of a report: `+RESP` becomes `+BUFF`, nothing else changes."""
        return "+BUFF:" + line[len("+RESP:"):] if line.startswith("+RESP:") else line

    # --- the connection ---

    @property
    def connected(self) -> bool:
        return self.sock is not None

    def connect(self, host: str, port: int, timeout: float = 10.0, hello: bool = True) -> None:
        """Open a connection (raises OSError), start reading it, then replay the buffer as +BUFF.
        With nothing to replay, `hello` sends a heartbeat so the gateway learns the IMEI at once."""
        if self.sock is not None:
            raise RuntimeError(f"{self.imei} is already connected")
        sock = gsocket.create_connection((host, port), timeout=timeout)
        sock.settimeout(None)
        sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
        self.sock = sock
        self.connects += 1
        self._conn_messages = 0
        self._reader = gevent.spawn(self._read_loop, sock)
        if self.buffer:
            self.replay()
        elif hello:
            self.send_line(self.heartbeat(), hello=True)

    def disconnect(self) -> None:
        """Close the connection (abruptly, as a device losing its network would)."""
        sock, self.sock = self.sock, None
        if sock is None:
            return
        self.disconnects += 1
        self.down_at = time.monotonic()
        self.hbd_unanswered += len(self._hbd_pending)  # their replies can no longer come
        self._hbd_pending.clear()
        try:
            sock.close()
        except OSError:
            pass
        reader, self._reader = self._reader, None
        if reader is not None and reader is not gevent.getcurrent():
            reader.kill(block=False)
        if self.on_down is not None:
            self.on_down()

    def wire(self, line: str) -> bytes:
        """The bytes of a line as this tracker sends it: ASCII, or its HEX frame in HEX mode."""
        if self.behaviour.hex:
            frame = hex_frame(line)
            if frame is not None:
                return frame
        return line.encode("ascii")

    def _write(self, data: bytes) -> bool:
        sock = self.sock
        if sock is None:
            return False
        try:
            with self._lock:
                sock.sendall(data)
        except OSError:
            if self.sock is sock:
                self.dropped_by_peer += 1
                self.disconnect()
            return False
        return True

    def _after_message(self, messages: int = 1) -> None:
        self._conn_messages += messages
        limit = self.behaviour.disconnect_after
        if limit is not None and not self._dropped_once and self._conn_messages >= limit:
            self._dropped_once = True
            self.disconnect()

    def send_line(self, line: str, *, hello: bool = False) -> bool:
        """Write a line that is never buffered (ACKs, heartbeats). False if it was lost. `hello`
        marks a connection's first heartbeat, whose reply waits for the gateway's admission check.
        A heartbeat's reply latency counts from this call: a write that waits for a full socket
        is part of what the device sees."""
        started = time.monotonic()
        if not self._write(self.wire(line)):
            return False
        self.sent += 1
        if line.startswith("+ACK:GTHBD"):
            self.hbd_sent += 1
            if self.on_hbd_reply is not None:
                if len(self._hbd_pending) >= HBD_PENDING_LIMIT:
                    self.hbd_unanswered += len(self._hbd_pending)  # replies that never came: keep the map small
                    self._hbd_pending.clear()
                self._hbd_pending[line[line.rindex(",") + 1:-1]] = (started, hello)
        elif line.startswith("+ACK:"):
            self.acks_sent += 1
        self._after_message()
        return True

    def send_report(self, line: str) -> bool:
        """Write a +RESP report. It is buffered when the connection is down or the write fails, and
        (with SACK) until the server acknowledges it. False if it was not written now."""
        count = line[line.rindex(",") + 1:-1]
        if self.behaviour.sack or self.sock is None:
            self._buffer(count, line)
        if not self._write(self.wire(line)):
            self._buffer(count, line)
            return False
        self._sent_report(count, line)
        return True

    def _sent_report(self, count: str, line: str) -> None:
        self.sent += 1
        if line.startswith("+RESP:GTFRI"):
            self.fri_sent += 1
        else:
            self.resp_sent += 1
        if not self.behaviour.sack:
            self.buffer.pop(count, None)
        self._after_message()

    @property
    def writable(self) -> bool:
        """Connected, and no write of another greenlet is waiting for the socket."""
        return self.sock is not None and not self._lock.locked()

    def offer_report(self, line: str) -> bool:
        """`send_report` for a fleet's pacing greenlet, which sends every tracker's reports and
        must never wait for one congested socket: the report is written only as far as the socket
        takes it now (the rest by a greenlet of its own, holding the write lock so later writes
        stay behind it). When the socket takes nothing, the report stays in the buffer, as a
        device keeps what it could not send. False if nothing was written."""
        sock = self.sock
        if sock is None:
            return self.send_report(line)  # buffered until the next connection
        count = line[line.rindex(",") + 1:-1]
        if self._lock.locked():
            self._buffer(count, line)
            return False
        if self.behaviour.sack:
            self._buffer(count, line)  # kept until the server acknowledges it
        data = self.wire(line)
        try:
            sent = sock.send(data, 0, 0.0)  # gevent: a timeout of 0 raises instead of waiting
        except BlockingIOError:
            self._buffer(count, line)
            return False
        except OSError:
            self.dropped_by_peer += 1
            self.disconnect()
            self._buffer(count, line)
            return False
        if sent < len(data):
            self._lock.acquire()  # free: checked above, and nothing yielded since
            gevent.spawn(self._write_rest, sock, data[sent:])
        self._sent_report(count, line)
        return True

    def _write_rest(self, sock: Any, data: bytes) -> None:
        try:
            sock.sendall(data)
        except OSError:
            if self.sock is sock:
                self.dropped_by_peer += 1
                self.disconnect()
        finally:
            self._lock.release()

    def _buffer(self, count: str, line: str) -> None:
        if count in self.buffer:
            return
        if len(self.buffer) >= BUFFER_LIMIT:
            self.buffer.popitem(last=False)   # the oldest report is lost
            self.buffer_dropped += 1
        self.buffer[count] = (line, time.monotonic())

    def replay(self) -> int:
        """Send every buffered report again as +BUFF (the originals stay until SACKed)."""
        if self.sock is None or not self.buffer:
            return 0
        lines = [line for line, _ in self.buffer.values()]
        if not self.behaviour.sack:
            self.buffer.clear()  # without SACK, a report the socket took counts as delivered
        written = 0
        for start, end in self._replay_chunks(lines):
            if not self._write(b"".join(self.wire(self.buff(line)) for line in lines[start:end])):
                for line in lines[start:]:
                    self._buffer(line[line.rindex(",") + 1:-1], line)
                break
            written += end - start
        self.replayed += written
        self.sent += written
        return written

    def _replay_chunks(self, lines: list[str]) -> list[tuple[int, int]]:
        """(start, end) of the lines each replay write carries."""
        limit = self.behaviour.replay_bytes
        if limit is None:
            return [(start, min(len(lines), start + REPLAY_CHUNK)) for start in range(0, len(lines), REPLAY_CHUNK)]
        chunks: list[tuple[int, int]] = []
        start, size = 0, 0
        for i, line in enumerate(lines):
            if size and size + len(line) > limit:
                chunks.append((start, i))
                start, size = i, 0
            size += len(line)
        if start < len(lines):
            chunks.append((start, len(lines)))
        return chunks

    @property
    def awaiting_heartbeat(self) -> bool:
        """A heartbeat on this connection still waits for its reply."""
        return bool(self._hbd_pending)

    def wait_sacked(self, timeout: float) -> bool:
        """Wait (cooperatively) until every buffered report is SACKed; False on timeout."""
        deadline = time.monotonic() + timeout
        while self.buffer and time.monotonic() < deadline:
            gevent.sleep(0.02)
        return not self.buffer

    # --- what the server sends ---

    def _read_loop(self, sock: Any) -> None:
        pending = b""
        while True:
            try:
                data = sock.recv(RECV_BYTES)
            except OSError:
                data = b""
            if not data:
                if self.sock is sock:
                    self.dropped_by_peer += 1  # EOF or reset: the server closed it, not us
                    self._reader = None  # this greenlet is ending on its own
                    self.disconnect()
                return
            pending += data
            *lines, pending = pending.split(b"$")
            if len(pending) > 8192:
                pending = b""  # nothing the server sends is this long: drop the garbage
            for raw in lines:
                self.handle_line(raw.decode("latin-1").strip())
                if self.sock is not sock:
                    return

    def handle_line(self, line: str) -> None:
        """One line from the server, without its `$`."""
        if line.startswith("+SACK:GTHBD"):
            self.hbd_replies += 1
            pending = self._hbd_pending.pop(line.rpartition(",")[2].upper(), None)
            if pending is not None and self.on_hbd_reply is not None:
                now = time.monotonic()
                sent_at, hello = pending
                # The buffer keeps reports in the order they were written: if its oldest was
                # written before the heartbeat, the reply overtook a report not yet SACKed.
                oldest = next(iter(self.buffer.values()))[1] if self.buffer else None
                behind = 0.0 if oldest is not None and oldest <= sent_at else now - max(sent_at, self.last_sack_at)
                self.on_hbd_reply(now - sent_at, hello, behind)
        elif line.startswith("+SACK:"):
            self._sacked(line[6:].upper())
        elif line.startswith("AT+"):
            self._command(line + "$")

    def _sacked(self, count: str) -> None:
        self.sacks_received += 1
        entry = self.buffer.pop(count, None) if self.behaviour.sack else None
        if entry is None:
            return
        line, sent_at = entry
        self.sacked_count += 1
        self.last_sack_at = time.monotonic()
        if self.sacked is not None:
            self.sacked.add(line)
        if self.on_sack is not None:
            self.on_sack(time.monotonic() - sent_at)

    def _command(self, raw: str) -> None:
        record: list[Any] = [time.time(), None, raw]
        self.commands.append(record)
        try:
            command = decode_command(raw)
        except ProtocolError:
            self.bad_commands += 1  # V4.01 does not say; expect silence (spec 3.0)
            return
        if command.type[2:] in self.rejects:
            return  # a value it does not take: V4.01 trackers stay silent
        if self.behaviour.disconnect_on_command:
            self.disconnect()
        elif not self.behaviour.silent:
            if self.behaviour.ack_delay > 0:
                gevent.spawn_later(self.behaviour.ack_delay, self._answer, command, record)
            else:
                self._answer(command, record)

    def _answer(self, command: CommandLine, record: list[Any]) -> None:
        line = self.ack(command)
        if not self.send_line(line):
            return
        record[1] = time.time()
        if self.behaviour.duplicate_ack:
            self.send_line(line)
        sub = (command.fields[0] or "").upper() if command.type == "GTRTO" and command.fields else None
        if command.type == "GTOUT" and command.fields:
            self.output1 = command.fields[0] == "1"
            self._apply_setting(command)
        elif sub == "1":
            self.send_report(self.rtl())
        elif sub == "8":
            self.send_report(self.ver())
        elif sub == "A":
            self.send_report(self.ios())
        elif sub == "2":
            for report in self.settings_reports((command.fields[1:2] or (None,))[0]):
                self.send_report(report)
        elif command.type != "GTRTO":
            self._apply_setting(command)
        elif sub == "D" or (sub == "4" and (command.fields[1:2] or (None,))[0] in (None, "BUF")):
            self.buffer.clear()  # DELBUF, RESET (BUF): the device forgets its buffered reports
        elif sub == "3" and self.behaviour.reboot_on_command:
            gevent.sleep(0.2)    # the ACK leaves before the modem goes down
            self.disconnect()

    # --- results ---

    def stats(self) -> dict[str, int]:
        return {
            "sent": self.sent, "fri_sent": self.fri_sent, "heartbeats_sent": self.hbd_sent,
            "acks_sent": self.acks_sent, "resp_sent": self.resp_sent, "replayed": self.replayed,
            "sacks_received": self.sacks_received, "sacked": self.sacked_count, "unsacked": len(self.buffer),
            "heartbeat_replies": self.hbd_replies,
            "heartbeats_unanswered": self.hbd_unanswered + len(self._hbd_pending),
            "buffer_dropped": self.buffer_dropped, "commands": len(self.commands), "bad_commands": self.bad_commands,
            "connects": self.connects, "disconnects": self.disconnects, "dropped_by_peer": self.dropped_by_peer,
        }
