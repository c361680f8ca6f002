"""Scraping each worker's ``/metrics`` for what only the worker knows: its running batch, its
queue, its KV-cache use and its engine's inter-token latency (vLLM's
``vllm:num_requests_running``, ``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``,
``vllm:inter_token_latency_seconds``; ``v1/metrics/loggers.py``).

Only those series are read, by a line scan rather than a full exposition parse: a
vLLM scrape runs to hundreds of lines of histograms the gateway does not need.

Examples
--------
>>> read_gauges('vllm:num_requests_running{engine="0",model_name="m"} 3.0\\n'
...             'vllm:num_requests_waiting{engine="0",model_name="m"} 1.0\\n')
{'running': 3.0, 'waiting': 1.0}
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass

__all__ = ["GAUGES", "Sample", "WorkerGauges", "read_gauges"]

GAUGES = {"vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting",
          "vllm:kv_cache_usage_perc": "kv_usage",
          # the engine's own inter-token latency (a histogram: its running sum and count)
          "vllm:inter_token_latency_seconds_sum": "itl_sum",
          "vllm:inter_token_latency_seconds_count": "itl_count"}


def read_gauges(text: str) -> dict[str, float]:
    """The three gauges from a Prometheus text exposition (summed over label sets)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        key = GAUGES.get(name)
        if key is None:
            continue
        try:
            value = float(line.rsplit(" ", 1)[1])
        except (IndexError, ValueError):
            continue
        out[key] = out.get(key, 0.0) + value
    return out


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    running: float
    waiting: float
    kv_usage: float
    itl_sum: float = 0.0
    itl_count: float = 0.0


class WorkerGauges:
    """Recent scrapes per worker."""

    def __init__(self, keep_s: float = 600.0) -> None:
        self.keep_s = keep_s
        self._samples: dict[str, deque[Sample]] = defaultdict(deque)

    def add(self, worker: str, gauges: dict[str, float], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        q = self._samples[worker]
        q.append(Sample(now, gauges.get("running", 0.0), gauges.get("waiting", 0.0),
                        gauges.get("kv_usage", 0.0), gauges.get("itl_sum", 0.0),
                        gauges.get("itl_count", 0.0)))
        while q and q[0].at < now - self.keep_s:
            q.popleft()

    def mean(self, worker: str, field: str, since: float) -> float | None:
        """Mean of ``field`` over the scrapes since ``since`` (None: no scrape)."""
        values = [getattr(s, field) for s in self._samples.get(worker, ()) if s.at >= since]
        return sum(values) / len(values) if values else None

    def series(self, field: str, since: float) -> dict[str, list[tuple[float, float]]]:
        """Every worker's ``(time, field)`` scrapes since ``since``, oldest first."""
        return {w: [(s.at, getattr(s, field)) for s in q if s.at >= since]
                for w, q in self._samples.items()}

    def itl(self, worker: str, since: float) -> tuple[float, int] | None:
        """The engine's mean inter-token latency since ``since`` and the intervals behind it,
        from the histogram's sum and count (None: fewer than two scrapes, or a restart)."""
        samples = [s for s in self._samples.get(worker, ()) if s.at >= since]
        if len(samples) < 2:
            return None
        count = samples[-1].itl_count - samples[0].itl_count
        total = samples[-1].itl_sum - samples[0].itl_sum
        if count <= 0 or total < 0:
            return None
        return total / count, int(count)
