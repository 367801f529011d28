"""The one error root of the protocol layer.

`ProtocolError` means the *peer* sent something we cannot accept; it always carries the offending
frame so the session can archive it and carry on. `CommandError` means *we* were asked to encode
something invalid (an operator's bad command parameters); nothing is ever sent for it.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """The device (or whoever is on the socket) sent bytes we cannot accept."""

    def __init__(self, reason: str, frame: bytes | str = b"") -> None:
        super().__init__(reason)
        self.reason = reason
        self.frame = frame.encode("latin-1", "backslashreplace") if isinstance(frame, str) else bytes(frame)

    def __str__(self) -> str:
        preview = self.frame[:80].decode("latin-1")
        return f"{self.reason}: {preview!r}" if preview else self.reason


class FrameTooLong(ProtocolError):
    """More than MAX_FRAME_BYTES arrived without a frame terminator."""


class InvalidMessage(ProtocolError):
    """A complete frame whose fields do not fit the message type's layout."""


class CommandError(ValueError):
    """A command cannot be encoded: `field` names the parameter and the message says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
