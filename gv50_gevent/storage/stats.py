"""Rolling figures for the gateway's statistics (`gateway_state.stats`, shown by `gv50ctl status`):
counts over the last minute, and latency percentiles over the last minute.

Cheap on the hot path: a count is one dict increment into the current second's bucket, a latency
one list append (bounded per second). Everything is summed only when the statistics are written.
"""

from __future__ import annotations

import time
from collections import deque
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

    def __init__(self) -> None:
        self._buckets: deque[tuple[int, list[float]]] = deque()

    def add(self, seconds: float) -> None:
        now = int(time.monotonic())
        buckets = self._buckets
        if not buckets or buckets[-1][0] != now:
            buckets.append((now, []))
            while buckets[0][0] <= now - WINDOW_S:
                buckets.popleft()
        samples = buckets[-1][1]
        if len(samples) < SAMPLES_PER_SECOND:
            samples.append(seconds)

    def percentiles(self) -> dict[str, Any]:
        cutoff = int(time.monotonic()) - WINDOW_S
        values = sorted(v for second, samples in self._buckets if second > cutoff for v in samples)
        if not values:
            return {"p50": None, "p99": None, "samples": 0}

        def at(q: float) -> float:
            return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 2)

        return {"p50": at(0.50), "p99": at(0.99), "samples": len(values)}
