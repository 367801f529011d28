"""The rolling latency figures: percentiles over a fair sample of each second, not its first samples."""

from __future__ import annotations

import random

from gv50_gevent.storage.stats import SAMPLES_PER_SECOND, MinuteLatency
from tests.support import FakeClock



def test_slow_samples_late_in_a_busy_second_count_in_p99() -> None:
    clock = FakeClock()
    latency = MinuteLatency(clock, random.Random(1))
    for _ in range(SAMPLES_PER_SECOND * 4):  # a busy second: fast at first ...
        latency.add(0.001)
    for _ in range(SAMPLES_PER_SECOND):  # ... then a fifth of its samples slow, once the load piles up
        latency.add(2.0)
    figures = latency.percentiles()
    assert figures["samples"] == SAMPLES_PER_SECOND * 5
    assert figures["p99"] == 2000.0 and figures["p50"] == 1.0


def test_seconds_weigh_by_how_many_samples_they_had() -> None:
    clock = FakeClock()
    latency = MinuteLatency(clock, random.Random(2))
    for _ in range(SAMPLES_PER_SECOND * 10):  # a second with 10,000 fast samples
        latency.add(0.002)
    clock.now += 1
    for _ in range(200):  # a quiet second with 200 slow ones: 2% of the minute, above the 1% of p99
        latency.add(0.5)
    figures = latency.percentiles()
    assert figures["samples"] == SAMPLES_PER_SECOND * 10 + 200
    assert figures["p50"] == 2.0 and figures["p99"] == 500.0


def test_samples_older_than_a_minute_are_dropped() -> None:
    clock = FakeClock()
    latency = MinuteLatency(clock)
    latency.add(1.0)
    clock.now += 61
    latency.add(0.01)
    assert latency.percentiles() == {"p50": 10.0, "p99": 10.0, "samples": 1}
