"""The ``min-latency`` objective: latency targets and fixed GPU counts.

Two forms, both behind ``placer.Objective`` (``place(..., objective=MinLatency(...))``):

- a target (``target_s``): the greedy min-GPU placer, with a GPU feasible only if, besides
  the memory and starvation checks, its predicted median TTFT (or E2E) is at most the target
  (``LatencyPredictor``): the fewest GPUs that meet it;
- a GPU count (``gpus``): the adapters spread over that many GPUs to minimise the worst
  predicted latency (``spread``): an adapter carrying more than an even share of the load is
  split into replicas (the gateway routes among them by share), then greedy
  least-predicted-latency assignment, heaviest load first, from which (or from round-robin,
  if that is better) single moves and pairwise swaps off the worst GPU continue while they
  lower it.

Latency is predicted by ``planner.latency_estimate`` (analytic, conservative), not the
surrogate's ``LatencyModel``, whose held-out TTFT error is too large (that module says how
much). Pure: adapters and a predictor in, a ``Plan`` out.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from planner.demand import AdapterDemand
from planner.features import worker_features
from planner.latency_estimate import LatencyEstimate, estimate_latency
from planner.placer import (
    SLOT_CANDIDATES,
    GpuPlan,
    Plan,
    Predictor,
    Verdict,
    merged,
    place_with,
    replicate,
)
from planner.validation import Validation, validate
from twin.cluster import ClusterResult
from twin.errors import InsufficientMemoryError
from twin.specs import EngineConfig

__all__ = [
    "LatencyMetric",
    "LatencyPredictor",
    "MinLatency",
    "ObjectiveName",
    "over_target",
    "plan_latency",
    "repair_latency",
    "spread",
]

_INF = LatencyEstimate(math.inf, math.inf, math.inf)


class ObjectiveName(enum.StrEnum):
    MIN_GPUS = "min-gpus"
    MIN_LATENCY = "min-latency"


class LatencyMetric(enum.StrEnum):
    """Which median a target bounds: time to first token, or end to end."""

    TTFT = "ttft"
    E2E = "e2e"

    def of(self, estimate: LatencyEstimate) -> float:
        return estimate.ttft_s if self is LatencyMetric.TTFT else estimate.e2e_s


class LatencyPredictor(Predictor):
    """A ``Predictor`` that also predicts latency and, with ``target_s``, rejects a GPU whose
    predicted median ``metric`` is above it."""

    def __init__(self, base: Predictor, metric: LatencyMetric = LatencyMetric.TTFT,
                 target_s: float | None = None) -> None:
        super().__init__(base.surrogate, base.model, base.gpu, base.profile, base.config)
        self.metric = metric
        self.target_s = target_s

    def latency(self, adapters: Sequence[AdapterDemand], engine: EngineConfig,
                ) -> LatencyEstimate:
        """Predicted medians in real seconds (infinite if vLLM would not start)."""
        scale = self.config.capacity_scale  # a slower worker: more load, in slower seconds
        step = self.profile.step_model(self.model, self.gpu, engine)
        try:
            scaled = adapters if scale == 1.0 else [
                dataclasses.replace(a, rate=a.rate / scale) for a in adapters]
            x = worker_features(scaled, engine, self.model, self.gpu, step, self.profile.memory)
        except InsufficientMemoryError:
            return _INF
        e = estimate_latency(x, step, engine, self.profile.request_overhead_s)
        return LatencyEstimate(e.ttft_s / scale, e.itl_s / scale, e.e2e_s / scale)

    def check(self, adapters: Sequence[AdapterDemand], engine: EngineConfig) -> Verdict:
        v = super().check(adapters, engine)
        if not v.feasible or self.target_s is None:
            return v
        if self.metric.of(self.latency(adapters, engine)) <= self.target_s:
            return v
        return Verdict(False, v.engine, v.predicted_tps, v.offered_tps, v.proba)

    def engine_and_latency(self, adapters: Sequence[AdapterDemand],
                           ) -> tuple[EngineConfig, LatencyEstimate]:
        """The engine the placer would pick for ``adapters`` (a slot per LoRA when memory
        allows, else the most slots that fit) and its predicted latency (no surrogate)."""
        loras = max(1, sum(1 for a in adapters if not a.is_base))
        enough = next((s for s in SLOT_CANDIDATES if s >= loras), SLOT_CANDIDATES[-1])
        for slots in [enough, *(s for s in reversed(SLOT_CANDIDATES) if s < enough)]:
            engine = self.engine_for(adapters, slots)
            estimate = self.latency(adapters, engine)
            if math.isfinite(estimate.ttft_s):
                return engine, estimate
        return self.engine_for(adapters, 1), _INF


@dataclass(frozen=True, slots=True, kw_only=True)
class MinLatency:
    """Meet ``target_s`` on every GPU with the fewest GPUs, or, with ``gpus``, the best worst
    latency on exactly that many (``target_s`` is then only reported against).

    Examples
    --------
    >>> MinLatency(target_s=0.5).metric
    <LatencyMetric.TTFT: 'ttft'>
    >>> MinLatency(target_s=0.0)
    Traceback (most recent call last):
    ...
    ValueError: target_s: must be a finite number of seconds > 0, got 0.0
    """

    metric: LatencyMetric = LatencyMetric.TTFT
    target_s: float | None = None
    gpus: int | None = None

    def __post_init__(self) -> None:
        if self.target_s is None and self.gpus is None:
            raise ValueError("target_s: give a latency target or a GPU count (gpus)")
        if self.target_s is not None and not (math.isfinite(self.target_s)
                                              and self.target_s > 0):
            raise ValueError(f"target_s: must be a finite number of seconds > 0, "
                             f"got {self.target_s!r}")
        if self.gpus is not None and self.gpus < 1:
            raise ValueError(f"gpus: must be >= 1, got {self.gpus!r}")

    def place(self, adapters: Sequence[AdapterDemand], predictor: Predictor) -> Plan:
        if self.gpus is not None:
            return spread(adapters, predictor, self.gpus, self.metric)
        return place_with(adapters, LatencyPredictor(predictor, self.metric, self.target_s))


def plan_latency(plan: Plan, predictor: Predictor) -> list[LatencyEstimate]:
    """Predicted medians of each GPU of ``plan`` with its own engine (0 for an empty one)."""
    lp = LatencyPredictor(predictor)
    by_name = {a.name: a for a in plan.adapters}
    return [lp.latency([dataclasses.replace(by_name[n], rate=r) for n, r in g.rates.items()],
                       g.engine) if g.rates else LatencyEstimate(0.0, 0.0, 0.0)
            for g in plan.gpus]


def _load(a: AdapterDemand) -> float:
    return a.rate * (a.input_tokens + a.output_tokens)


def _items(adapters: Sequence[AdapterDemand], predictor: Predictor,
           gpus: int) -> list[AdapterDemand]:
    """Adapters as items to assign: hot ones split into replicas as the placer splits them,
    any heavier than an even share of the load (tokens/s over ``gpus``) split so that no
    replica is, then the heaviest split further while there are fewer items than GPUs (an
    idle GPU lowers no one's latency)."""
    share = sum(_load(a) for a in adapters) / gpus
    items: list[AdapterDemand] = []
    for a in replicate(adapters, predictor):
        parts = math.ceil(_load(a) / share - 1e-9) if 0 < share < _load(a) else 1
        items += [dataclasses.replace(a, rate=a.rate / parts)] * parts
    counts: dict[str, int] = {}
    for a in items:
        counts[a.name] = counts.get(a.name, 0) + 1
    while 0 < len(items) < gpus:
        heavy = max(items, key=lambda a: (_load(a), a.name))
        if heavy.rate <= 0:
            break
        parts = counts[heavy.name] + 1
        total = heavy.rate * counts[heavy.name]
        items = [a for a in items if a.name != heavy.name]
        items += [dataclasses.replace(heavy, rate=total / parts)] * parts
        counts[heavy.name] = parts
    return sorted(items, key=lambda a: (-_load(a), a.name))


class _Spread:
    """Groups of items on ``n`` GPUs with their predicted latency (memoized by content)."""

    def __init__(self, lp: LatencyPredictor, groups: list[list[AdapterDemand]],
                 memo: dict[tuple[tuple[str, float], ...], float]) -> None:
        self.lp = lp
        self.memo = memo
        self.groups = groups
        self.cost = [self.of(g) for g in groups]

    def of(self, group: Sequence[AdapterDemand]) -> float:
        key = tuple(sorted((a.name, a.rate) for a in group))
        if key not in self.memo:
            self.memo[key] = (self.lp.metric.of(self.lp.engine_and_latency(merged(group))[1])
                              if group else 0.0)
        return self.memo[key]

    @property
    def worst(self) -> float:
        return max(self.cost, default=0.0)

    def _candidates(self, w: int) -> Iterator[tuple[int, list[AdapterDemand],
                                                    list[AdapterDemand]]]:
        """(GPU, the worst GPU's new group, that GPU's new group): moves, then swaps."""
        group = self.groups[w]
        for i, a in enumerate(group):
            rest = group[:i] + group[i + 1:]
            for g, other in enumerate(self.groups):
                if g == w:
                    continue
                yield g, rest, [*other, a]
                for j, b in enumerate(other):
                    if b.name != a.name:
                        yield g, [*rest, b], [*other[:j], *other[j + 1:], a]

    def improve(self, budget: int) -> None:
        """Take the first move or swap off the worst GPU that lowers the worst latency,
        until none does or ``budget`` candidates have been tried."""
        while budget > 0:
            w = max(range(len(self.cost)), key=lambda i: self.cost[i])
            worst = self.cost[w]
            for g, mine, theirs in self._candidates(w):
                budget -= 1
                if budget < 0:
                    return
                mine_cost = self.of(mine)
                if mine_cost < worst and (their_cost := self.of(theirs)) < worst:
                    self.groups[w], self.groups[g] = mine, theirs
                    self.cost[w], self.cost[g] = mine_cost, their_cost
                    break
            else:
                return


def spread(adapters: Sequence[AdapterDemand], predictor: Predictor, gpus: int,
           metric: LatencyMetric = LatencyMetric.TTFT, *, budget: int = 4000) -> Plan:
    """``adapters`` on exactly ``gpus`` GPUs, minimising the worst predicted median
    ``metric``; at most about ``budget`` latency predictions in the local search."""
    if gpus < 1:
        raise ValueError(f"gpus: must be >= 1, got {gpus!r}")
    lp = LatencyPredictor(predictor, metric)
    groups: list[list[AdapterDemand]] = [[] for _ in range(gpus)]
    memo: dict[tuple[tuple[str, float], ...], float] = {}
    state = _Spread(lp, groups, memo)
    for item in _items(adapters, predictor, gpus):
        trial = [state.of([*g, item]) for g in state.groups]
        best = min(range(gpus), key=lambda i: (trial[i], i))
        state.groups[best].append(item)
        state.cost[best] = trial[best]
    robin = _Spread(lp, [list(adapters[i::gpus]) for i in range(gpus)], memo)
    if robin.worst < state.worst:
        state = robin
    state.improve(budget)
    out = []
    for i, group in enumerate(state.groups):
        items = merged(group)
        engine = lp.engine_and_latency(items)[0]
        v = predictor.check(items, engine) if items else Verdict(True, engine, 0.0, 0.0, 0.0)
        out.append(GpuPlan.judged(i, engine, {a.name: a.rate for a in items}, v))
    return Plan(gpus=out, adapters=list(adapters))


def over_target(plan: Plan, validation: Validation, metric: LatencyMetric,
                target_s: float) -> list[int]:
    """GPUs the twin finds starving or above ``target_s`` (its median ``metric``)."""
    bad = set(validation.starved_gpus)
    for i, w in enumerate(validation.result.workers):
        measured = w.ttft_p50_s if metric is LatencyMetric.TTFT else w.e2e_p50_s
        if plan.gpus[i].rates and not measured <= target_s:  # NaN: nothing finished
            bad.add(i)
    return sorted(bad)


def repair_latency(plan: Plan, predictor: LatencyPredictor, validation: Validation, *,
                   duration_s: float = 180.0, seed: int = 0, rounds: int = 3,
                   tighten: float = 0.85,
                   map_fn: Callable[..., Iterable[ClusterResult]] = map,
                   ) -> tuple[Plan, Validation]:
    """``validate.repair`` for a latency target: the load of the GPUs the twin finds starving
    or above the target is placed again with the target and headroom ``tighten`` times
    stricter each round; the GPUs it accepts stay. At most ``rounds`` more twin runs."""
    assert predictor.target_s is not None
    by_name = {a.name: a for a in plan.adapters}
    lp = predictor
    for _ in range(rounds):
        bad = over_target(plan, validation, predictor.metric, predictor.target_s)
        if not bad:
            break
        rates: dict[str, float] = {}
        for i in bad:
            for name, rate in plan.gpus[i].rates.items():
                rates[name] = rates.get(name, 0.0) + rate
        moved = [dataclasses.replace(by_name[n], rate=r) for n, r in rates.items()]
        stricter = lp.with_config(dataclasses.replace(lp.config,
                                                      headroom=lp.config.headroom * tighten))
        assert lp.target_s is not None
        lp = LatencyPredictor(stricter, lp.metric, lp.target_s * tighten)
        fresh = place_with(moved, lp)
        keep = [g for i, g in enumerate(plan.gpus) if i not in set(bad)]
        gpus = [dataclasses.replace(g, index=i) for i, g in enumerate([*keep, *fresh.gpus])]
        plan = Plan(gpus=gpus, adapters=plan.adapters)
        validation = validate(plan, predictor, duration_s=duration_s, seed=seed, map_fn=map_fn)
    return plan, validation
