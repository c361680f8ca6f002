"""What the gateway sees of its traffic: per-adapter arrival rates and token lengths over a
sliding window, and per-worker latencies from its own timings.

The replanner turns the window into the planner's ``AdapterDemand`` list: observed rates (in
the workers' time: divided by ``time_scale`` when emulated workers run faster than real time)
and observed mean lengths, falling back to the registered figures until the window has seen
enough. The latency learner reads one worker's traffic over its own interval
(``worker_window``): what was sent to the worker and what it finished, so that a worker whose
load changed in the interval (filling up after a migration, draining after one) can be told
from one in a steady state. Pure bookkeeping: no I/O, the clock is passed in.

Examples
--------
>>> from planner import AdapterDemand
>>> obs = Observer(window_s=10.0)
>>> for t in range(10):
...     obs.arrival("sql", now=float(t))
>>> obs.finished("sql", "w0", prompt_tokens=100, completion_tokens=20, e2e_s=0.5, now=9.0)
>>> round(obs.rates(now=10.0)["sql"], 2)
1.0
>>> [d.input_tokens for d in obs.demands([AdapterDemand(name="sql", rank=8, rate=5.0)],
...                                      now=10.0, min_span_s=5.0)]
[100]
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from planner import MAX_RATE, MAX_TOKENS, AdapterDemand

__all__ = ["MIN_RATE", "SHIFT_Z", "Event", "Observer", "WorkerTraffic"]

T = TypeVar("T")
# ("a", at, adapter) an arrival, ("s", at, adapter, worker) sent to a worker, ("f", at,
# adapter, worker, prompt_tokens, completion_tokens, e2e_s, ttft_s or None) finished
Event = tuple[Any, ...]

MIN_RATE = 1e-3  # req/s a registered adapter that saw no traffic is planned for (it keeps a slot)
# How far (in standard deviations of Poisson counting noise) an adapter's count over the
# recent part of the window must stray from what a rate predicts before the recent rate is
# believed: a stray that far is a change of rate, not chance (p < 1e-4 per adapter and check).
SHIFT_Z = 4.0
RECENT_SHARE = 1 / 3  # the recent part: this share of the window, at least MIN_RECENT_S
MIN_RECENT_S = 2.0


@dataclass(slots=True)
class _Done:
    at: float
    adapter: str
    prompt: int
    completion: int
    ttft: float | None
    e2e: float


@dataclass(frozen=True, slots=True)
class WorkerTraffic:
    """One worker's traffic over an interval, in the workers' time.

    ``demands``: per adapter the rate of requests *sent* to the worker in the interval (the
    load its batch was built from; rank left to the caller) and the mean and deviation of
    the lengths of the requests it finished over the whole window (more samples; lengths do
    not drift with a migration). ``itl_s`` (token-weighted mean inter-token latency),
    ``ttft_p50_s`` and ``intervals`` (the ITL intervals behind it) from the streamed requests
    finished in the interval. ``dispatched`` and ``completed``: requests sent to and finished by
    the worker within the interval: their difference is how much the worker's in-flight count
    changed (about zero in a steady state).
    """

    demands: tuple[AdapterDemand, ...]
    itl_s: float
    ttft_p50_s: float
    intervals: int
    dispatched: int
    completed: int


def _std(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _strays(count: int, expected: float, *, above: bool = False) -> bool:
    """Whether ``count`` arrivals are ``SHIFT_Z`` standard deviations from the ``expected``
    of a Poisson count (above it only, with ``above``); the 1 added to the variance keeps a
    count or two of a near-idle adapter from passing.

    >>> _strays(35, 0.9), _strays(8, 35.0), _strays(30, 35.0), _strays(8, 35.0, above=True)
    (True, True, False, False)
    """
    z = (count - expected) / math.sqrt(expected + 1.0)
    return z >= SHIFT_Z if above else abs(z) >= SHIFT_Z


def _insort(queue: deque[T], item: T, at: Callable[[T], float]) -> None:
    """Insert ``item`` into the time-ordered ``queue``, searching from the newest end."""
    held = []
    while queue and at(queue[-1]) > at(item):
        held.append(queue.pop())
    queue.append(item)
    queue.extend(reversed(held))


def _p50(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


class Observer:
    """Sliding-window counts of the gateway's traffic.

    Parameters
    ----------
    window_s
        How far back rates and lengths look (seconds of wall time).
    """

    def __init__(self, window_s: float = 60.0) -> None:
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s!r}")
        self.window_s = window_s
        self.started: float | None = None
        self._arrivals: dict[str, deque[float]] = defaultdict(deque)
        self._done: dict[str, deque[_Done]] = defaultdict(deque)
        self._by_worker: dict[str, deque[_Done]] = defaultdict(deque)
        self._sent: dict[str, deque[tuple[float, str]]] = defaultdict(deque)
        # told every event this gateway sees (the other replicas merge them: gateway/shared/)
        self.sink: Callable[[Event], None] | None = None

    def arrival(self, adapter: str, *, now: float) -> None:
        """A request for ``adapter`` (``twin.routing.BASE_MODEL`` for the base model)."""
        if self.started is None:
            self.started = now
        self._arrivals[adapter].append(now)
        if self.sink is not None:
            self.sink(("a", now, adapter))

    def dispatched(self, adapter: str, worker: str, *, now: float) -> None:
        """A request for ``adapter`` sent to ``worker`` (a retry elsewhere counts again)."""
        self._sent[worker].append((now, adapter))
        if self.sink is not None:
            self.sink(("s", now, adapter, worker))

    def finished(self, adapter: str, worker: str, *, prompt_tokens: int,
                 completion_tokens: int, e2e_s: float, now: float,
                 ttft_s: float | None = None) -> None:
        """A request served (its usage known)."""
        done = _Done(now, adapter, prompt_tokens, completion_tokens, ttft_s, e2e_s)
        self._done[adapter].append(done)
        self._by_worker[worker].append(done)
        if self.sink is not None:
            self.sink(("f", now, adapter, worker, prompt_tokens, completion_tokens, e2e_s,
                       ttft_s))

    def merge(self, event: Event) -> None:
        """Another replica's event (its time already on this process's clock), in time
        order (events arrive a second or so late: each is inserted from the newest end).

        >>> obs = Observer(window_s=10.0)
        >>> obs.arrival("sql", now=5.0)
        >>> obs.merge(("a", 4.0, "sql")); obs.merge(("f", 4.5, "sql", "w0", 10, 2, 0.3, 0.1))
        >>> list(obs._arrivals["sql"]), obs.started, round(obs.rates(now=6.0)["sql"], 2)
        ([4.0, 5.0], 4.0, 1.0)
        """
        at, adapter = float(event[1]), str(event[2])
        if event[0] == "a":
            self.started = at if self.started is None else min(self.started, at)
            _insort(self._arrivals[adapter], at, lambda x: x)
        elif event[0] == "s":
            _insort(self._sent[str(event[3])], (at, adapter), lambda x: x[0])
        elif event[0] == "f":
            ttft = None if event[7] is None else float(event[7])
            done = _Done(at, adapter, int(event[4]), int(event[5]), ttft, float(event[6]))
            _insort(self._done[adapter], done, lambda x: x.at)
            _insort(self._by_worker[str(event[3])], done, lambda x: x.at)

    def _trim(self, now: float) -> None:
        cut = now - self.window_s
        for times in self._arrivals.values():
            while times and times[0] < cut:
                times.popleft()
        for queues in (self._done, self._by_worker):
            for q in queues.values():
                while q and q[0].at < cut:
                    q.popleft()
        for sent in self._sent.values():
            while sent and sent[0][0] < cut:
                sent.popleft()

    def span(self, now: float) -> float:
        """Seconds the window covers so far (less than ``window_s`` just after start)."""
        if self.started is None:
            return 0.0
        return min(self.window_s, now - self.started)

    def rates(self, *, now: float) -> dict[str, float]:
        """Arrivals per second of wall time, per adapter, over the window."""
        self._trim(now)
        span = self.span(now)
        if span <= 0:
            return {}
        return {k: len(q) / span for k, q in self._arrivals.items() if q}

    def recent_s(self, now: float) -> float:
        """The recent part of the window (0 while the window spans no more than it)."""
        recent = max(MIN_RECENT_S, self.window_s * RECENT_SHARE)
        return recent if self.span(now) > recent else 0.0

    def _recent_counts(self, now: float, recent: float) -> dict[str, int]:
        cut = now - recent
        out = {}
        for name, times in self._arrivals.items():
            k = len(times) - bisect.bisect_left(times, cut)
            if k:
                out[name] = k
        return out

    def tracked_rates(self, *, now: float) -> dict[str, float]:
        """``rates``, except where an adapter's recent count strays ``SHIFT_Z`` standard
        deviations from what its window rate predicts: its rate changed inside the window,
        and the recent rate is the one that holds now (a hot set that rotated is seen within
        seconds instead of a window later, both the adapters that heated and those that
        cooled)."""
        rates = self.rates(now=now)
        recent = self.recent_s(now)
        if not recent:
            return rates
        counts = self._recent_counts(now, recent)
        out = dict(rates)
        for name, rate in rates.items():
            count = counts.get(name, 0)
            if _strays(count, rate * recent):
                out[name] = count / recent
        return out

    def surging(self, planned: Mapping[str, float], *, now: float) -> list[str]:
        """The adapters whose recent count is ``SHIFT_Z`` standard deviations above what
        their ``planned`` rate (requests per wall second) predicts: load the placement was not
        planned for (an adapter missing from ``planned`` is taken as planned at 0)."""
        self._trim(now)
        recent = self.recent_s(now)
        if not recent:
            return []
        return sorted(name for name, count in self._recent_counts(now, recent).items()
                      if _strays(count, planned.get(name, 0.0) * recent, above=True))

    def demands(self, registered: Iterable[AdapterDemand], *, now: float,
                time_scale: float = 1.0, min_span_s: float | None = None
                ) -> list[AdapterDemand]:
        """``registered`` with observed rates and mean lengths where the window has them.

        Until the window spans ``min_span_s`` (default: half of it) the registered figures
        stand. Rates are ``tracked_rates``, divided by ``time_scale`` (workers that run ``k``
        times faster than real time serve ``k`` times the load of the profile the planner
        knows).
        """
        if not self.counted_s(now=now, min_span_s=min_span_s):
            return list(registered)
        rates = self.tracked_rates(now=now)
        out = []
        for d in registered:
            key = d.name
            # Clamped to what a registered adapter may declare (``planner.features``): a flood
            # of requests must not make a demand the planner refuses.
            rate = min(MAX_RATE, max(MIN_RATE, rates.get(key, 0.0) / time_scale))
            done = self._done.get(key)
            if done:
                prompt = sum(x.prompt for x in done) / len(done)
                completion = sum(x.completion for x in done) / len(done)
                d = replace(d, input_tokens=min(MAX_TOKENS, max(1, math.ceil(prompt))),
                            output_tokens=min(MAX_TOKENS, max(1, math.ceil(completion))))
            out.append(replace(d, rate=rate))
        return out

    def counted_s(self, *, now: float, time_scale: float = 1.0,
                  min_span_s: float | None = None) -> float:
        """The seconds, in the workers' time, that ``demands`` counted its rates over (0:
        the registered figures stand, exact as far as the planner knows)."""
        need = self.window_s / 2 if min_span_s is None else min_span_s
        span = self.span(now)
        return 0.0 if span < need else span * time_scale

    def worker_window(self, worker: str, *, now: float, since: float | None = None,
                      time_scale: float = 1.0) -> WorkerTraffic | None:
        """What ``worker`` was sent and served from ``since`` to ``now`` (default: the whole
        window; at most the window), in the workers' time (``time_scale``); None when it
        streamed nothing to time in the interval."""
        self._trim(now)
        done = list(self._by_worker.get(worker, ()))
        start = max(now - self.span(now), since if since is not None else -math.inf)
        interval = now - start
        timed = [x for x in done if x.at >= start and x.ttft is not None and x.completion > 1]
        if not timed or interval <= 0:
            return None
        intervals = sum(x.completion - 1 for x in timed)
        itl = sum(x.e2e - (x.ttft or 0.0) for x in timed) / intervals * time_scale
        ttft = (_p50([x.ttft for x in timed if x.ttft is not None]) or 0.0) * time_scale
        sent: dict[str, int] = defaultdict(int)
        for at, adapter in self._sent.get(worker, ()):
            if at >= start:
                sent[adapter] += 1
        by: dict[str, list[_Done]] = defaultdict(list)
        for x in done:
            by[x.adapter].append(x)
        demands = []
        for name in sorted(set(by) | set(sent)):
            xs = by.get(name, [])
            ins = [float(x.prompt) for x in xs] or [1.0]
            outs = [float(x.completion) for x in xs] or [1.0]
            demands.append(AdapterDemand(
                name=name, rank=8,
                rate=min(MAX_RATE, sent.get(name, 0) / interval / time_scale),
                input_tokens=min(MAX_TOKENS, max(1.0, sum(ins) / len(ins))),
                output_tokens=min(MAX_TOKENS, max(1.0, sum(outs) / len(outs))),
                input_std=min(MAX_TOKENS, _std(ins)), output_std=min(MAX_TOKENS, _std(outs))))
        return WorkerTraffic(demands=tuple(demands), itl_s=itl, ttft_p50_s=ttft,
                             intervals=intervals, dispatched=sum(sent.values()),
                             completed=sum(1 for x in done if x.at >= start))
