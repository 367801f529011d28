"""Sample lines for the protocol tests, read from `../shared/protocol` beside the repository
(never copied into it)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_PROTOCOL = Path(__file__).resolve().parents[2] / ".." / "shared" / "protocol"
SAMPLES = SHARED_PROTOCOL / "samples"
VENDOR_EXAMPLES = SAMPLES / "gv50_v401_examples.txt"
TRACCAR_LINES = SAMPLES / "traccar_gl200_text.txt"
DEVICE_HEADERS = ("+RESP:", "+BUFF:", "+ACK:")


def device_lines(path: Path) -> list[str]:
    """Device-originated lines (`+RESP:`, `+BUFF:`, `+ACK:`), as printed, `$` included when present."""
    return [line.rstrip("\r\n") for line in path.read_text(encoding="ascii").splitlines()
            if line.startswith(DEVICE_HEADERS)]


@pytest.fixture(scope="session")
def vendor_lines() -> list[str]:
    return device_lines(VENDOR_EXAMPLES)


@pytest.fixture(scope="session")
def traccar_lines() -> list[str]:
    return [line for line in TRACCAR_LINES.read_text(encoding="ascii").splitlines() if line]
