"""Latency percentiles in bounded memory, for ``tms bench``.

Latencies are counted in buckets whose bounds grow by 1% each (from 1 µs up), so a
percentile is known within 1% however long a run lasts: 100 s to 1 µs is about 2,300
buckets, where keeping every latency of a long run would take hundreds of MB.
"""

from __future__ import annotations

import math

__all__ = ["LatencyHistogram"]

_SMALLEST = 1e-6  # seconds: the lower bound of bucket 0
_GROWTH = math.log(1.01)


class LatencyHistogram:
    """Counts of latencies (seconds), their sum and the largest one."""

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0
        self.max = 0.0
        self._buckets: dict[int, int] = {}

    def __repr__(self) -> str:
        return f"<LatencyHistogram count={self.count} max={self.max:.6f}>"

    def add(self, seconds: float) -> None:
        """Count one latency."""
        self.count += 1
        self.total += seconds
        self.max = max(self.max, seconds)
        index = int(math.log(seconds / _SMALLEST) / _GROWTH) if seconds > _SMALLEST else 0
        self._buckets[index] = self._buckets.get(index, 0) + 1

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def percentile(self, percent: float) -> float:
        """The latency ``percent`` % of calls took at most (within 1%); 0 when empty."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(self.count * percent / 100))
        if rank >= self.count:
            return self.max  # known exactly
        seen = 0
        for index in sorted(self._buckets):
            seen += self._buckets[index]
            if seen >= rank:
                # The geometric middle of the bucket, never above the largest latency seen.
                return min(self.max, _SMALLEST * math.exp((index + 0.5) * _GROWTH))
        return self.max
