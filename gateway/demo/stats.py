"""What the demo's client saw: counts, latencies and a sliding request rate (one class, one
source of truth; every count is derived from what was recorded).

Latencies are recorded in wall seconds and reported in simulated seconds (times the time
scale), the latencies the same traffic would see at real speed.

Examples
--------
>>> s = DemoStats(time_scale=2.0)
>>> s.record(now=1.0, e2e_s=0.5, ttft_s=0.1)
>>> s.record(now=1.2, e2e_s=0.7, ttft_s=None)
>>> s.fail(now=1.3, error="APIConnectionError")
>>> s.requests, s.failed, s.ttft_percentile(50)
(3, 1, 0.2)
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field

import numpy as np

__all__ = ["DemoStats"]

WINDOW_S = 5.0  # the sliding window of the live request rate, wall seconds


@dataclass(slots=True)
class DemoStats:
    """Requests the demo finished (ok or failed) and their latencies."""

    time_scale: float = 1.0
    ok: int = 0
    failed: int = 0
    streamed: int = 0
    in_flight: int = 0
    ttft_s: list[float] = field(default_factory=list)
    e2e_s: list[float] = field(default_factory=list)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)
    _recent: collections.deque[float] = field(default_factory=collections.deque)

    @property
    def requests(self) -> int:
        """Requests answered or failed."""
        return self.ok + self.failed

    def record(self, *, now: float, e2e_s: float, ttft_s: float | None) -> None:
        """A request answered in full; ``ttft_s`` for streamed ones (wall seconds)."""
        self.ok += 1
        self.e2e_s.append(e2e_s)
        if ttft_s is not None:
            self.streamed += 1
            self.ttft_s.append(ttft_s)
        self._tick(now)

    def fail(self, *, now: float, error: str) -> None:
        self.failed += 1
        self.errors[error] += 1
        self._tick(now)

    def _tick(self, now: float) -> None:
        self._recent.append(now)
        while self._recent and self._recent[0] < now - WINDOW_S:
            self._recent.popleft()

    def rate(self, now: float, since: float) -> float:
        """Requests finished per wall second over the last ``WINDOW_S`` (or since start)."""
        while self._recent and self._recent[0] < now - WINDOW_S:
            self._recent.popleft()
        span = min(WINDOW_S, now - since)
        return len(self._recent) / span if span > 0 else 0.0

    def _percentile(self, values: list[float], q: float) -> float:
        if not values:
            return math.nan
        return float(np.percentile(values, q)) * self.time_scale

    def ttft_percentile(self, q: float) -> float:
        """Time to first token of streamed requests, simulated seconds (NaN: none yet)."""
        return self._percentile(self.ttft_s, q)

    def e2e_percentile(self, q: float) -> float:
        """End-to-end latency of all answered requests, simulated seconds."""
        return self._percentile(self.e2e_s, q)
