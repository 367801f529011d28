"""The GV50 @Track protocol, pure: bytes -> frames -> typed messages (ASCII `parse`, HEX
`parse_hex`), and commands -> bytes.

This package imports no gevent, socket, pymongo or settings; it works the same under any loop.
"""

from .errors import CommandError, FrameTooLong, InvalidMessage, ProtocolError
from .framing import Frame, Framer
from .hex import encode_hex, hex_crc_ok, parse_hex
from .messages import Ack, DeviceStatus, Heartbeat, Message, Position, Report, Unknown
from .parser import parse
from .reports import REPORTS

__all__ = [
    "REPORTS", "Ack", "CommandError", "DeviceStatus", "Frame", "FrameTooLong", "Framer", "Heartbeat",
    "InvalidMessage", "Message", "Position", "ProtocolError", "Report", "Unknown", "encode_hex", "hex_crc_ok",
    "parse", "parse_hex",
]
