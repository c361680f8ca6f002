"""The greedy min-GPU placer (the paper's, PAPER.md), extended with replicas of hot adapters
and followed by an improvement search.

1. An adapter whose load exceeds what one GPU serves of it alone is split into replicas, its
   rate shared among them (the gateway routes by those shares).
2. Adapters are grouped by rank, highest first; inside a group ordered zig-zag by rate
   (largest, smallest, next largest, ...).
3. GPUs are filled one at a time. At test points (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, ...
   adapters, and the last one) the candidate set is checked (``planner.predictor``): some
   ``max_loras`` setting must fit in memory (vLLM's start-up arithmetic, exact) and be
   predicted not to starve by the surrogate; the best such setting by predicted throughput is
   kept. When a test point fails, a bisection back to the last good one finds the largest
   feasible prefix; the rest goes back to the queue and the next GPU is opened.
4. The improvement search (``planner.improve``) empties what GPUs it can within
   ``PlannerConfig.search_seconds``.

Pure: adapters, specs and a surrogate in, a ``Plan`` out.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Protocol

import numpy as np

from planner.demand import AdapterDemand
from planner.engine_time import CEILING, request_seconds
from planner.improve import improve
from planner.plan import GpuPlan, Plan, merged
from planner.predictor import SLOT_CANDIDATES, PlannerConfig, Predictor, Verdict
from planner.surrogate import Surrogate
from twin.profile import CalibrationProfile
from twin.specs import GpuSpec, ModelSpec

__all__ = [
    "SLOT_CANDIDATES",
    "GpuPlan",
    "Objective",
    "Plan",
    "PlannerConfig",
    "Predictor",
    "Verdict",
    "merged",
    "place",
    "place_with",
    "replicate",
]

TEST_POINTS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512, 768, 1024)


def _zigzag(items: list[AdapterDemand]) -> list[AdapterDemand]:
    ordered = sorted(items, key=lambda a: (-a.rate, a.name))
    out: list[AdapterDemand] = []
    lo, hi = 0, len(ordered) - 1
    while lo <= hi:
        out.append(ordered[lo])
        if lo != hi:
            out.append(ordered[hi])
        lo, hi = lo + 1, hi - 1
    return out


MAX_REPLICAS = 1024  # GPUs one adapter may be split over
# An adapter whose engine load alone is under this share of the ceiling is taken to fit one
# GPU without asking the surrogate (a check per adapter was most of the time to place 10,000);
# the fill splits it all the same if the surrogate refuses it alone.
SURE_SHARE = 0.5


def alone_loads(adapters: Sequence[AdapterDemand], predictor: Predictor) -> np.ndarray:
    """Each adapter's engine load alone on one GPU (one slot at its rank), at the margin."""
    out = np.zeros(len(adapters))
    by_rank: dict[int, list[int]] = {}
    for i, a in enumerate(adapters):
        by_rank.setdefault(a.rank, []).append(i)
    for idx in by_rank.values():
        group = [adapters[i] for i in idx]
        engine = predictor.engine_for(group[:1], 1)
        step, kv = predictor.engine_model(engine)
        seconds = request_seconds(group, engine, step, kv, 1.0)
        out[idx] = np.array([a.rate for a in group]) * predictor.rate_scale * seconds
    return out


def split(adapter: AdapterDemand, predictor: Predictor) -> list[AdapterDemand]:
    """``adapter`` as equal-rate replicas, as many as one GPU's capacity for it needs."""
    cap = predictor.alone_capacity(adapter)
    # At most MAX_REPLICAS: past that the load is beyond any fleet, and the plan says so
    # (its replicas overloaded) instead of placing without end.
    parts = min(MAX_REPLICAS, math.ceil(adapter.rate / cap)) if cap > 0 else 1
    return [replace(adapter, rate=adapter.rate / parts)] * parts


def replicate(adapters: Sequence[AdapterDemand], predictor: Predictor,
              sure_share: float = 0.0) -> list[AdapterDemand]:
    """Split adapters that one GPU cannot carry into equal-rate replicas; an adapter whose
    engine load alone is under ``sure_share`` of the ceiling is kept whole unasked."""
    loads = alone_loads(adapters, predictor) if sure_share > 0 else np.ones(len(adapters))
    out = []
    for a, load in zip(adapters, loads, strict=True):
        if a.rate <= 0 or load < sure_share * CEILING or predictor.best([a]).feasible:
            out.append(a)  # fits one GPU: no bisection needed
            continue
        out.extend(split(a, predictor))
    return out


class Objective(Protocol):
    """What a plan optimises, beside never starving (``planner.objective.MinLatency``);
    ``place`` without one packs onto the fewest GPUs (``min-gpus``)."""

    def place(self, adapters: Sequence[AdapterDemand], predictor: Predictor) -> Plan: ...


def place(adapters: Sequence[AdapterDemand], model: ModelSpec, gpu: GpuSpec,
          profile: CalibrationProfile, surrogate: Surrogate,
          config: PlannerConfig | None = None, *, objective: Objective | None = None) -> Plan:
    """Pack ``adapters`` onto the fewest GPUs the surrogate predicts will not starve (or as
    ``objective`` says)."""
    names = [a.name for a in adapters]
    if len(set(names)) != len(names):
        raise ValueError("adapters: names must be unique")
    predictor = Predictor(surrogate, model, gpu, profile, config or PlannerConfig())
    return (place_with(adapters, predictor) if objective is None
            else objective.place(adapters, predictor))


def place_with(adapters: Sequence[AdapterDemand], predictor: Predictor) -> Plan:
    """``place`` with a predictor already bound to the model, GPU, profile and config."""
    items = replicate(adapters, predictor, SURE_SHARE)
    groups: dict[int, list[AdapterDemand]] = {}
    for a in items:
        groups.setdefault(a.rank, []).append(a)
    queue = [a for rank in sorted(groups, reverse=True) for a in _zigzag(groups[rank])]
    gpus: list[GpuPlan] = []
    while queue:
        take, verdict = _fill(queue, predictor)
        if verdict is None:  # the head does not fit one GPU alone: its replicas go first
            queue = split(queue[0], predictor) + queue[1:]
            take, verdict = _fill(queue, predictor)
            if verdict is None:  # not even a replica fits (memory): alone, as it is
                engine = predictor.engine_for(queue[:1], 1)
                take, verdict = 1, Verdict(True, engine, 0.0, 0.0, 1.0)
        assert verdict.engine is not None
        rates: dict[str, float] = {}
        for a in queue[:take]:
            rates[a.name] = rates.get(a.name, 0.0) + a.rate
        gpus.append(GpuPlan.judged(len(gpus), verdict.engine, rates, verdict))
        queue = queue[take:]
    by_name = {a.name: a for a in adapters}
    deadline = time.perf_counter() + predictor.config.search_seconds
    return Plan(gpus=improve(gpus, by_name, predictor, deadline), adapters=list(adapters))


def _fill(queue: list[AdapterDemand], predictor: Predictor) -> tuple[int, Verdict | None]:
    """The longest feasible prefix of ``queue`` and its verdict; ``(1, None)`` when not even
    its head fits one GPU alone."""

    def best(n: int) -> Verdict:
        return predictor.best(merged(queue[:n]))

    first = best(1)
    if not first.feasible:
        return 1, None
    good, good_verdict = 1, first
    points = [p for p in TEST_POINTS if 1 < p < len(queue)] + [len(queue)]
    for n in points:
        if n <= good:
            continue
        v = best(n)
        if v.feasible:
            good, good_verdict = n, v
            continue
        lo, hi = good, n  # feasible at lo, not at hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            vm = best(mid)
            if vm.feasible:
                lo, good_verdict = mid, vm
            else:
                hi = mid
        return lo, good_verdict
    return good, good_verdict
