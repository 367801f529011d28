"""The stored key of a report's positions and event (storage.documents.report_key): with a send
time it is what it always was; without one, `key_time` (the fix time of a new fix in a report with a
count, else the receive time to the second) keeps a count wrap apart from a resend, and never takes
a new report for a resend."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from gv50_gevent.protocol import Report, encode_hex, parse, parse_hex
from gv50_gevent.storage.documents import event_doc, position_docs
from tests.data import family_lines
from tests.protocol.test_hex_masks import IGN_VALUES, RSP_VALUES, frame

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


def test_without_a_send_time_or_a_count_the_receive_second_keys_it() -> None:
    """Mask 00FE178F (the default without the send time and the count): the same fix comes again
    in the next reports (a tracker standing still, or without a new fix); each is a new report."""
    data = encode_hex("+RSP", "GTFRI", RSP_VALUES, 0x00FE178F)
    first, again = report(data), report(data)
    assert first.sent_at is None and first.count is None
    keys = [position_docs(r, RECEIVED + timedelta(seconds=n))[0]["_id"] for n, r in enumerate((first, again))]
    assert keys[0] != keys[1]
    assert [k["key_time"] for k in keys] == [RECEIVED.replace(microsecond=0) + timedelta(seconds=n) for n in (0, 1)]


def test_a_fix_without_gps_accuracy_is_no_key() -> None:
    """Accuracy 0: no new fix, the tracker repeats its last fix time. A count wrap of such reports
    (same count, same old fix) must not be taken for a resend."""
    stale = report(frame("RSP 00FE17AF", gps_accuracy=0, count="0001"))
    later = RECEIVED + timedelta(days=7, seconds=3)
    (first,) = position_docs(stale, RECEIVED)
    (wrapped,) = position_docs(report(frame("RSP 00FE17AF", gps_accuracy=0, count="0001")), later)
    assert first["_id"] != wrapped["_id"] and wrapped["_id"]["key_time"] == later.replace(microsecond=0)
    ign = report(encode_hex("+EVT", "GTIGN", {**IGN_VALUES, "gps_accuracy": 0, "count": "0002"}, 0x00FE17AF))
    events = [event_doc(ign, at) for at in (RECEIVED, later)]
    assert events[0] is not None and events[1] is not None
    assert events[0]["key_time"] != events[1]["key_time"]
