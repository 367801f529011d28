"""Rolling figures for the gateway's statistics (`gateway_state.stats`, shown by `gv50ctl status`):
counts over the last minute, and latency percentiles over the last minute.

Cheap on the hot path: a count is one dict increment into the current second's bucket, a latency
one list append (bounded per second). Everything is summed only when the statistics are written.

A second with more latencies than it keeps holds a uniform sample of all of them (reservoir
sampling), not the first ones: under load the slow samples come late in the second, and keeping
only the first would hide them from p99.
"""

from __future__ import annotations

import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any

WINDOW_S = 60
SAMPLES_PER_SECOND = 1000  # latencies kept per second at most: percentiles need no more


class MinuteCounts:
    """Counts by key over the last minute, in one-second buckets."""

    def __init__(self) -> None:
        self._buckets: deque[tuple[int, dict[str, float]]] = deque()

    def add(self, key: str, n: float = 1) -> None:
        now = int(time.monotonic())
        buckets = self._buckets
        if not buckets or buckets[-1][0] != now:
            buckets.append((now, {}))
            while buckets[0][0] <= now - WINDOW_S:
                buckets.popleft()
        counts = buckets[-1][1]
        counts[key] = counts.get(key, 0) + n

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
