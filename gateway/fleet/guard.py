"""The starvation guard: evidence that a worker starves some of its requests now, without
waiting for the learner to notice that the worker is slower than the plan assumed.

Three kinds of evidence, each read from what the gateway sees (``Evidence``):

- **lockout**: a streamed request to an adapter has waited ``lockout_s`` on a worker without
  its first token, and no request of that adapter on that worker got a token or finished in
  that time. This is vLLM's skip rule at work (``vllm/v1/core/sched/scheduler.py``,
  ``schedule``: a waiting request whose LoRA is not in the step is skipped while the step
  holds ``max_loras`` LoRAs), or a queue so deep that its TTFT will pass the bound anyway;
- **ttft**: the TTFT p99 of the streamed requests a worker finished over the last
  ``window_s`` passes ``ttft_bound_s`` (at least ``min_ttfts`` of them);
- **queue**: the worker's ``vllm:num_requests_waiting`` stayed above zero and grew, by at
  least ``queue_growth`` requests, over a whole ``window_s`` of scrapes, to a queue that
  takes ``lockout_s`` or more to clear at the rate the worker finished requests over that
  window (at least one). A queue of a few requests on a busy worker is a second's wait, not
  starvation: on the fleet bench, guard re-plans on growth alone cost a GPU at the default
  settings.

The replanner re-plans at once (trigger ``starvation``) with the worker's speed lowered by
``penalty`` (the placer then gives it less load). Hysteresis, like the surge re-plan's: only
evidence gathered after a worker's last finding counts for it (a full window of queue
scrapes, requests sent after it), guard re-plans are at least ``lockout_s`` apart and back
off while they follow each other closely (5, 10, 20 ... s apart, at most ``relax_s / 2``),
and a penalty is lifted one step per ``relax_s`` without new evidence. Pure bookkeeping: the
clock and the scrapes are passed in.

Examples
--------
>>> guard = StarvationGuard(GuardConfig(ttft_bound_s=10.0))
>>> k = guard.sent("w0", "sql", streamed=True, now=0.0)
>>> guard.check(now=4.0, queues={})
[]
>>> [f.evidence.value for f in guard.check(now=6.0, queues={})]
['lockout']
"""

from __future__ import annotations

import enum
import itertools
import math
from collections import defaultdict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Evidence", "Finding", "GuardConfig", "StarvationGuard"]


class Evidence(enum.StrEnum):
    """What showed a worker starving (``lorafleet_starvation_findings_total{evidence}``)."""

    LOCKOUT = "lockout"
    TTFT = "ttft"
    QUEUE = "queue"


@dataclass(frozen=True, slots=True)
class Finding:
    """One piece of evidence: the worker, what showed it, the adapter (lockouts) and a line
    for the log."""

    worker: str
    evidence: Evidence
    detail: str
    adapter: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardConfig:
    """The guard's thresholds, in wall seconds (``ttft_bound_s``: the gateway's bound divided
    by its ``time_scale``).

    ``lockout_s`` defaults to half the bound: a request that waited that long without a token
    is on its way past it.
    """

    ttft_bound_s: float = 10.0
    lockout_s: float | None = None
    window_s: float = 10.0
    min_ttfts: int = 20
    queue_growth: float = 2.0
    penalty: float = 0.8
    floor: float = 0.5
    relax_s: float = 120.0

    def __post_init__(self) -> None:
        if not (self.ttft_bound_s > 0 and self.window_s > 0 and self.relax_s > 0):
            raise ValueError("ttft_bound_s, window_s and relax_s must be > 0")
        if not 0 < self.floor <= self.penalty < 1:
            raise ValueError("must hold: 0 < floor <= penalty < 1")

    @property
    def lockout(self) -> float:
        return self.ttft_bound_s / 2 if self.lockout_s is None else self.lockout_s


@dataclass(slots=True)
class _Request:
    worker: str
    adapter: str
    sent: float
    awaiting_first: bool  # streamed, and no first token yet: a lockout candidate


def _p99(values: Sequence[float]) -> float:
    """Nearest-rank 99th percentile (the largest of fewer than 100 values)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def _slope(points: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of ``(time, value)`` points."""
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return sum((t - mt) * (v - mv) for t, v in points) / den if den > 0 else 0.0


class StarvationGuard:
    """Tracks requests in flight and finds starvation evidence (see the module doc)."""

    def __init__(self, config: GuardConfig | None = None) -> None:
        self.config = config or GuardConfig()
        self._ids = itertools.count()
        self._inflight: dict[int, _Request] = {}
        self._progress: dict[tuple[str, str], float] = {}  # (worker, adapter): last token
        self._ttfts: dict[str, deque[tuple[float, float]]] = defaultdict(deque)
        self._ends: dict[str, deque[float]] = defaultdict(deque)  # worker: requests finished
        self._since: dict[str, float] = {}  # worker: its last finding (evidence counts after)
        self._factor: dict[str, float] = {}
        self._relaxed: dict[str, float] = {}
        self.last_fired = -math.inf
        self._spacing = self.config.lockout

    # -- the request path ----------------------------------------------------------------

    def sent(self, worker: str, adapter: str, *, streamed: bool, now: float) -> int:
        """A request for ``adapter`` sent to ``worker``; returns its key for ``first_token``
        and ``ended``."""
        key = next(self._ids)
        self._inflight[key] = _Request(worker, adapter, now, streamed)
        return key

    def first_token(self, key: int, *, now: float) -> None:
        """The request's first token reached the gateway."""
        req = self._inflight.get(key)
        if req is not None:
            self._progress[req.worker, req.adapter] = now
            req.awaiting_first = False

    def ended(self, key: int, *, now: float, ttft_s: float | None = None) -> None:
        """The request finished (or failed, or its client left); ``ttft_s``: its time to
        first token, if streamed and served."""
        req = self._inflight.pop(key, None)
        if req is None:
            return
        self._progress[req.worker, req.adapter] = now
        cut = now - self.config.window_s
        ends = self._ends[req.worker]
        ends.append(now)
        while ends and ends[0] < cut:
            ends.popleft()
        if ttft_s is not None:
            q = self._ttfts[req.worker]
            q.append((now, ttft_s))
            while q and q[0][0] < cut:
                q.popleft()

    # -- evidence ------------------------------------------------------------------------

    def check(self, *, now: float,
              queues: Mapping[str, Sequence[tuple[float, float]]]) -> list[Finding]:
        """The evidence, at most one finding per worker (lockouts first); ``queues``: each
        worker's recent ``(time, waiting)`` scrapes, oldest first."""
        cfg = self.config
        found: dict[str, Finding] = {}
        lockout = cfg.lockout
        for req in self._inflight.values():
            if (not req.awaiting_first or req.worker in found or now - req.sent < lockout
                    or req.sent < self._since.get(req.worker, -math.inf)
                    or self._progress.get((req.worker, req.adapter), -math.inf)
                    > now - lockout):
                continue
            found[req.worker] = Finding(
                req.worker, Evidence.LOCKOUT, adapter=req.adapter,
                detail=f"a request for {req.adapter} waited {now - req.sent:.1f} s with no "
                       f"token, none of {req.adapter}'s requests served in {lockout:.1f} s")
        for worker, q in self._ttfts.items():
            since = max(now - cfg.window_s, self._since.get(worker, -math.inf))
            ttfts = [t for at, t in q if at >= since]
            if worker in found or len(ttfts) < cfg.min_ttfts:
                continue
            p99 = _p99(ttfts)
            if p99 > cfg.ttft_bound_s:
                found[worker] = Finding(worker, Evidence.TTFT, detail=(
                    f"TTFT p99 {p99:.1f} s over {len(ttfts)} requests > {cfg.ttft_bound_s:g} s"))
        for worker, samples in queues.items():
            if worker in found:
                continue
            start = now - cfg.window_s
            if self._since.get(worker, -math.inf) > start:
                continue  # a whole window after its last finding
            points = [(at, w) for at, w in samples if at >= start]
            if not (len(points) >= 3 and points[-1][0] - points[0][0] >= 0.6 * cfg.window_s
                    and min(w for _, w in points) > 0
                    and points[-1][1] - points[0][1] >= cfg.queue_growth
                    and _slope(points) > 0):
                continue
            # nothing finished: a worker filling up (its first requests are still running at
            # start-up: on the fleet bench 256 tokens take longer than the window) or hung
            # (the health checks' case, and a streamed request there is a lockout)
            finished = sum(1 for at in self._ends.get(worker, ()) if at >= start)
            clear_s = points[-1][1] * cfg.window_s / finished if finished else 0.0
            if clear_s >= lockout:
                found[worker] = Finding(worker, Evidence.QUEUE, detail=(
                    f"queue grew {points[0][1]:g} -> {points[-1][1]:g} over "
                    f"{points[-1][0] - points[0][0]:.0f} s, {clear_s:.1f} s to clear"))
        return sorted(found.values(), key=lambda f: f.worker)

    def due(self, *, now: float) -> bool:
        """Whether a guard re-plan may run now: ``lockout_s`` after the last, twice the last
        spacing when that one followed its predecessor closely (a fleet the re-plans cannot
        help, one worker and no actuator, is not re-planned every few seconds), up to
        ``relax_s / 2``."""
        return now - self.last_fired >= self._spacing

    def fired(self, findings: Sequence[Finding], *, now: float) -> None:
        """A re-plan answers ``findings``: each worker's speed is lowered one step, and its
        evidence starts over."""
        cfg = self.config
        close = now - self.last_fired < 2 * self._spacing
        self._spacing = min(self._spacing * 2, cfg.relax_s / 2) if close else cfg.lockout
        self.last_fired = now
        for f in findings:
            self._since[f.worker] = now
            self._relaxed[f.worker] = now
            self._factor[f.worker] = max(cfg.floor, self._factor.get(f.worker, 1.0)
                                         * cfg.penalty)

    def factor(self, worker: str, *, now: float) -> float:
        """What ``worker``'s speed is multiplied by (1.0: no penalty); one step back towards
        1.0 per ``relax_s`` without a finding."""
        f = self._factor.get(worker)
        if f is None:
            return 1.0
        steps = int((now - self._relaxed[worker]) // self.config.relax_s)
        if steps > 0:
            f = min(1.0, f / self.config.penalty ** steps)
            self._relaxed[worker] += steps * self.config.relax_s
            if f >= 1.0 - 1e-9:
                del self._factor[worker], self._relaxed[worker]
                return 1.0
            self._factor[worker] = f
        return f
