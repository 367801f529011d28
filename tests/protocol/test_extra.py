"""`Report.extra()` reads the validated values directly instead of calling `model_dump`: it must
give exactly what `model_dump` gives (the stored `positions` and `events` fields), in the same
order and with the same types, for every report we have lines of."""

from __future__ import annotations

from typing import Any

from gv50_gevent.protocol import InvalidMessage, Report, parse, parse_hex
from gv50_gevent.protocol.messages import _SHARED_FIELDS
from tests.data import device_lines, family_lines, hex_examples


def _reports() -> list[Report]:
    reports = []
    for line in [*device_lines(), *family_lines()]:
        try:
            message: Any = parse(line.rstrip("$"))
        except InvalidMessage:
            continue
        if message.kind == "report":
            reports.append(message)
    for _, frame in hex_examples():
        try:
            message = parse_hex(frame)
        except InvalidMessage:
            continue
        if message.kind == "report":
            reports.append(message)
    return reports


def test_extra_is_model_dump_for_every_report_we_have_lines_of() -> None:
    reports = _reports()
    assert len({r.type for r in reports}) >= 30  # the examples cover the families
    for report in reports:
        fast, dumped = report.extra(), report.model_dump(exclude=_SHARED_FIELDS, exclude_none=True)
        assert fast == dumped, report.raw
        assert list(fast) == list(dumped) and [type(v) for v in fast.values()] == [type(v) for v in dumped.values()]


def test_extra_gives_a_copy_of_a_nested_status() -> None:
    line = ("+RESP:GTFRI,090302,865083030004642,,13337,10,1,1,18.6,272,30.8,117.201342,31.855243,20170712074622,"
            "0460,0001,5504,29CF,00,347.8,00021:54:10,,,,220101,23,0,15,20170712154623,1854")
    report: Any = parse(line)
    first = report.extra()
    assert first["status"] == {"motion_state": "22", "inputs": 1, "outputs": 1}
    first["status"]["inputs"] = 9  # a stored document changed later must not change the shared status
    assert report.extra()["status"]["inputs"] == 1 and report.status.inputs == 1
