"""The project's own test data: device lines, kept as facts.

- `gv50_v401_examples.txt`: every complete example line (commands and device messages) printed
  in Queclink's GV50 @Track Air Interface Protocol V4.01, with the section and page it is on.
- `gv50_v401_hex_examples.txt`: the HEX example frames of the same document's chapter 4, one per
  line as hex bytes, with the section and page each is printed on.
- `gl200_family_lines.txt`: device lines of the same @Track text family (GV55, GV300, GL300 and
  others) published in open-source decoders' test suites and issue threads; see `SOURCES.md`.
"""

from __future__ import annotations

from pathlib import Path

DATA = Path(__file__).resolve().parent
VENDOR_EXAMPLES = DATA / "gv50_v401_examples.txt"
FAMILY_LINES = DATA / "gl200_family_lines.txt"
DEVICE_HEADERS = ("+RESP:", "+BUFF:", "+ACK:")


def device_lines(path: Path = VENDOR_EXAMPLES) -> list[str]:
    """Device-originated lines (`+RESP:`, `+BUFF:`, `+ACK:`), as printed, `$` included when present."""
    return [line.rstrip("\r\n") for line in path.read_text(encoding="ascii").splitlines()
            if line.startswith(DEVICE_HEADERS)]


def family_lines() -> list[str]:
    return [line for line in FAMILY_LINES.read_text(encoding="ascii").splitlines() if line]


def vendor_commands() -> list[str]:
    """The `AT+GT...$` command lines of the vendor document."""
    return [line.strip() for line in VENDOR_EXAMPLES.read_text(encoding="ascii").splitlines()
            if line.startswith("AT+")]


HEX_EXAMPLES = DATA / "gv50_v401_hex_examples.txt"


def hex_examples() -> list[tuple[str, bytes]]:
    """The V4.01 chapter 4 HEX example frames: (the comment above each, its bytes)."""
    frames: list[tuple[str, bytes]] = []
    comment = ""
    for line in HEX_EXAMPLES.read_text(encoding="ascii").splitlines():
        if line.startswith("# section"):
            comment = line[2:]
        elif line and not line.startswith("#"):
            frames.append((comment, bytes.fromhex(line)))
    return frames
