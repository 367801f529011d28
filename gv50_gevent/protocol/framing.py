"""Cut a TCP byte stream into frames. Framing never parses.

ASCII frames end with `$`. HEX frames (spec 1.7) are binary, carry their whole length in a header
field and end with CRC + CR LF; `0x24` (`$`) is a common byte inside them, so they are framed by
length and handed on undecoded. The Length field is there only when the frame's mask says so
(AT+GTHRM): without it, the frame's size is what the layout of its type and mask fixes
(`hex.hex_frame_size`), and a frame whose size its layout does not fix (a variable-length field,
or a type V4.01 does not define) cannot be framed. "Need more bytes" is an ordinary answer
(`None`), not an error.
"""

from __future__ import annotations

from typing import NamedTuple

from .errors import FrameTooLong, ProtocolError
from .hex import hex_frame_size

# Stray CR/LF and spaces between frames: some firmwares and most humans with netcat send them.
_SKIP = b"\r\n\t "
# HEX headers: the offset/size of their Length field, and where the mask whose bit says whether it
# is there sits (offset, size, bit) (spec 1.7). `+ACK` is HEX only when its fifth byte is not `:`.
_HEX_LENGTH = {
    b"+RSP": (9, 2, 5, 4, 7),
    b"+EVT": (9, 2, 5, 4, 7),
    b"+BSP": (9, 2, 5, 4, 7),
    b"+BVT": (9, 2, 5, 4, 7),
    b"+INF": (9, 2, 5, 2, 0),
    b"+BNF": (9, 2, 5, 2, 0),
    b"+HBD": (5, 1, 4, 1, 0),
    b"+ACK": (6, 1, 5, 1, 0),
}
# The smallest well-formed HEX frame is a mask-less heartbeat: header, mask, CRC, CR LF.
_HEX_MIN = 9


class Frame(NamedTuple):
    data: bytes
    binary: bool = False

    @property
    def text(self) -> str:
        """The ASCII frame without its `$` (latin-1 so that any garbage byte survives for archiving)."""
        return self.data[:-1].decode("latin-1") if self.data.endswith(b"$") else self.data.decode("latin-1")


class Framer:
    """Feed bytes in, take complete frames out; the buffer never grows past `max_frame_bytes`."""

    def __init__(self, max_frame_bytes: int = 4096) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    @property
    def pending(self) -> int:
        return len(self._buf)

    def clear(self) -> None:
        """Drop what is buffered (after a fatal frame: the stream cannot be trusted)."""
        self._buf.clear()

    def peek(self) -> bytes:
        """The incomplete frame held so far (for archiving it when the connection is dropped)."""
        return bytes(self._buf)

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None until more bytes arrive.

        Raises FrameTooLong when a frame exceeds the cap, and ProtocolError for a HEX frame whose
        Length field is impossible. After either the stream cannot be trusted: close it.
        """
        buf = self._buf
        start = 0
        while start < len(buf) and buf[start] in _SKIP:
            start += 1
        if start:
            del buf[:start]
        if not buf:
            return None
        head = bytes(buf[:4])
        spec = _HEX_LENGTH.get(head)
        if spec is not None and head == b"+ACK":
            if len(buf) < 5:
                return None
            if buf[4] == ord(":"):
                spec = None
        if spec is not None:
            return self._hex_frame(*spec)
        end = buf.find(b"$")
        if end < 0:
            if len(buf) > self.max_frame_bytes:
                raise FrameTooLong(f"no '$' within {self.max_frame_bytes} bytes", bytes(buf[:self.max_frame_bytes]))
            return None
        if end + 1 > self.max_frame_bytes:
            raise FrameTooLong(f"frame of {end + 1} bytes exceeds {self.max_frame_bytes}",
                               bytes(buf[:self.max_frame_bytes]))
        frame = bytes(buf[: end + 1])
        del buf[: end + 1]
        return Frame(frame)

    def _hex_frame(self, offset: int, size: int, mask_at: int, mask_size: int, bit: int) -> Frame | None:
        buf = self._buf
        if len(buf) < offset + size:
            return None
        if int.from_bytes(buf[mask_at : mask_at + mask_size], "big") >> bit & 1:
            length = int.from_bytes(buf[offset : offset + size], "big")
        else:
            # No Length field (the mask leaves it out): the size the layout fixes for this type and mask.
            fixed = hex_frame_size(bytes(buf[: mask_at + mask_size]))
            if fixed is None:
                raise ProtocolError("HEX frame without a Length field, of a type or mask whose size is not fixed",
                                    bytes(buf[: self.max_frame_bytes]))
            length = fixed
        if length < max(_HEX_MIN, offset + size) or length > self.max_frame_bytes:
            raise ProtocolError(f"HEX frame with impossible length {length}", bytes(buf[: self.max_frame_bytes]))
        if len(buf) < length:
            return None
        frame = bytes(buf[:length])
        del buf[:length]
        return Frame(frame, binary=True)
