"""The stored key of a report's positions and event (storage.documents.report_key): with a send
time it is what it always was; without one, `key_time` (the fix time, else the receive time to the
second) keeps a count wrap apart from a resend."""

from __future__ import annotations

from datetime import datetime, timezone

from gv50_gevent.protocol import Report, parse, parse_hex
from gv50_gevent.storage.documents import event_doc, position_docs
from tests.data import family_lines
from tests.protocol.test_hex_masks import frame

RECEIVED = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)


def report(data: bytes | str) -> Report:
    message = parse_hex(data) if isinstance(data, bytes) else parse(data)
    assert isinstance(message, Report)
    return message


def test_a_key_with_a_send_time_is_unchanged() -> None:
    (doc,) = position_docs(report(frame("RSP 00FE10BF")), RECEIVED)
    assert list(doc["_id"]) == ["imei", "report", "sent_at", "count", "index"]
    event = event_doc(report(frame("EVT 00F000BF")), RECEIVED)
    assert event is not None and "key_time" not in event


def test_without_a_send_time_the_fix_time_keys_positions_and_events() -> None:
    fri = report(frame("RSP 00FE17AF"))
    (doc,) = position_docs(fri, RECEIVED)
    assert doc["_id"] == {"imei": fri.imei, "report": "GTFRI", "sent_at": None, "count": "1854",
                          "key_time": fri.positions[0].fix_time, "index": 0}
    assert "key_time" not in doc  # in the key only: the document has fix_time itself
    wrapped = report(frame("RSP 00FE17AF", fix_time=fri.positions[0].fix_time.replace(day=19)))  # type: ignore[union-attr]
    assert position_docs(wrapped, RECEIVED)[0]["_id"] != doc["_id"]
    assert position_docs(report(frame("RSP 00FE17AF")), RECEIVED)[0]["_id"] == doc["_id"]  # a resend
    ign = report(frame("EVT 00FE17AF"))
    event = event_doc(ign, RECEIVED)
    assert event is not None and event["key_time"] == ign.positions[0].fix_time and event["sent_at"] is None


def test_without_a_send_time_or_a_fix_time_the_receive_second_keys_it() -> None:
    line = family_lines()[170].removesuffix("$").replace(",20140818105815,", ",,")  # no send time, no fix time
    fri = report(line)
    assert fri.sent_at is None and fri.positions[0].fix_time is None
    (doc,) = position_docs(fri, RECEIVED)
    assert doc["_id"]["key_time"] == RECEIVED.replace(microsecond=0)
    assert doc["warnings"] == ["sent_at empty: no send time"]
