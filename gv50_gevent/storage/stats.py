"""Rolling figures for the gateway's statistics (`gateway_state.stats`, shown by `gv50ctl status`,
and Prometheus `/metrics`): counts over the last minute and since start, latency percentiles over
the last minute and a latency histogram since start. One object per figure feeds both outputs.

Cheap on the hot path: a count is two dict increments (the current second's bucket and the running
total), a latency one list append (bounded per second) and one bucket increment. Everything is
summed only when the statistics are written or scraped.

A second with more latencies than it keeps holds a uniform sample of all of them (reservoir
sampling), not the first ones: under load the slow samples come late in the second, and keeping
only the first would hide them from p99.
"""

from __future__ import annotations

import bisect
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

WINDOW_S = 60
SAMPLES_PER_SECOND = 1000  # latencies kept per second at most: percentiles need no more
# Histogram bucket bounds (seconds) for latencies since start: a SACK or a durable write takes from
# about a millisecond (idle) to tens of seconds (an election, a storm of +BUFF).
LATENCY_BUCKETS_S: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                                        10.0, 30.0, 60.0)


class MinuteCounts:
    """Counts by key over the last minute, in one-second buckets."""

    def __init__(self) -> None:
        self._buckets: deque[tuple[int, dict[str, float]]] = deque()
        self.since_start: dict[str, float] = {}  # the same counts, never reset

    def add(self, key: str, n: float = 1) -> None:
        now = int(time.monotonic())
        buckets = self._buckets
        if not buckets or buckets[-1][0] != now:
            buckets.append((now, {}))
            while buckets[0][0] <= now - WINDOW_S:
                buckets.popleft()
        counts = buckets[-1][1]
        counts[key] = counts.get(key, 0) + n
        total = self.since_start
        total[key] = total.get(key, 0) + n

    def totals(self) -> dict[str, float]:
        cutoff = int(time.monotonic()) - WINDOW_S
        out: dict[str, float] = {}
        for second, counts in self._buckets:
            if second > cutoff:
                for key, n in counts.items():
                    out[key] = out.get(key, 0) + n
        return out


class MinuteLatency:
    """Latency samples (seconds) of the last minute; p50 and p99 in milliseconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self._clock = clock
        self._rng = rng or random.Random()
        # (second, samples kept, how many were added in that second)
        self._buckets: deque[list[Any]] = deque()
        self.counts = [0] * (len(LATENCY_BUCKETS_S) + 1)  # since start, per bucket (the last: above all bounds)
        self.total_s = 0.0

    def add(self, seconds: float) -> None:
        now = int(self._clock())
        buckets = self._buckets
        if not buckets or buckets[-1][0] != now:
            buckets.append([now, [], 0])
            while buckets[0][0] <= now - WINDOW_S:
                buckets.popleft()
        bucket = buckets[-1]
        samples: list[float] = bucket[1]
        bucket[2] += 1
        if len(samples) < SAMPLES_PER_SECOND:
            samples.append(seconds)
        else:  # the n-th sample replaces a kept one with probability SAMPLES_PER_SECOND / n
            slot = self._rng.randrange(bucket[2])
            if slot < SAMPLES_PER_SECOND:
                samples[slot] = seconds
        self.counts[bisect.bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.total_s += seconds

    def histogram(self) -> tuple[list[tuple[float, int]], int, float]:
        """Since start: cumulative counts per upper bound (`inf` last), the count, and the sum in seconds."""
        cumulative, running = [], 0
        for bound, n in zip((*LATENCY_BUCKETS_S, float("inf")), self.counts):
            running += n
            cumulative.append((bound, running))
        return cumulative, running, self.total_s

    def percentiles(self) -> dict[str, Any]:
        cutoff = int(self._clock()) - WINDOW_S
        # Each kept sample stands for `added / kept` samples of its second.
        weighted = sorted((v, added / len(samples)) for second, samples, added in self._buckets
                          if second > cutoff for v in samples)
        if not weighted:
            return {"p50": None, "p99": None, "samples": 0}
        total = sum(w for _, w in weighted)

        def at(q: float) -> float:
            rank = q * total
            seen = 0.0
            for value, weight in weighted:
                seen += weight
                if seen > rank:
                    return round(value * 1000, 2)
            return round(weighted[-1][0] * 1000, 2)

        return {"p50": at(0.50), "p99": at(0.99), "samples": round(total)}
