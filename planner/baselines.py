"""What the placer is measured against: naive placements and a lower bound.

Each baseline gives a plan; ``planner.validation`` confirms any plan in the cluster twin. GPU
counts come from the same surrogate-backed feasibility check the placer uses, so the
comparison isolates the packing, and the twin then confirms (or refutes) every count.

- ``one_per_adapter``: each adapter alone, on as many GPUs as its load needs.
- ``round_robin``: adapter i on GPU i mod N for the smallest N the check accepts.
- ``first_fit``: memory only: fill each GPU to the largest ``max_loras`` that fits in memory,
  ignoring load (what a slot-counting operator does).

The lower bounds are in ``planner.bound``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace

from planner.demand import AdapterDemand
from planner.placer import SLOT_CANDIDATES, GpuPlan, Plan, Predictor, Verdict
from twin.errors import InsufficientMemoryError
from twin.memory import plan_memory

__all__ = [
    "confirm",
    "first_fit",
    "one_per_adapter",
    "round_robin",
    "round_robin_plan",
]


def _gpu(index: int, adapters: Sequence[AdapterDemand], predictor: Predictor,
         max_loras: int | None = None, verdict: Verdict | None = None) -> GpuPlan:
    """A GPU of a baseline: the best setting, or ``max_loras`` slots; ``verdict`` when the
    caller has already asked the predictor."""
    loras = max(1, sum(1 for a in adapters if not a.is_base))
    if verdict is None:
        verdict = predictor.best(adapters) if max_loras is None else predictor.check(
            adapters, predictor.engine_for(adapters, max_loras))
    engine = verdict.engine or predictor.engine_for(adapters, min(loras, max_loras or loras))
    return GpuPlan.judged(index, engine, {a.name: a.rate for a in adapters}, verdict)


def one_per_adapter(adapters: Sequence[AdapterDemand], predictor: Predictor) -> Plan:
    """Each adapter alone, on as many GPUs as its load needs: one when the check accepts it
    alone at its rate, else ``ceil(rate / capacity)`` (``Predictor.alone_capacity``, a
    bisection asked only for those)."""
    gpus: list[GpuPlan] = []
    for a in adapters:
        verdict = predictor.best([a])
        if verdict.feasible:
            gpus.append(_gpu(len(gpus), [a], predictor, verdict=verdict))
            continue
        cap = predictor.alone_capacity(a)
        parts = max(1, math.ceil(a.rate / cap)) if cap > 0 else 1
        for _ in range(parts):
            gpus.append(_gpu(len(gpus), [replace(a, rate=a.rate / parts)], predictor))
    return Plan(gpus=gpus, adapters=list(adapters))


def _round_robin_plan(adapters: Sequence[AdapterDemand], n: int,
                      predictor: Predictor) -> tuple[Plan, bool]:
    groups: list[list[AdapterDemand]] = [[] for _ in range(n)]
    for i, a in enumerate(adapters):
        groups[i % n].append(a)
    gpus, ok = [], True
    for i, g in enumerate(groups):
        verdict = predictor.best(g) if g else None
        ok = ok and (verdict is None or verdict.feasible)
        gpus.append(_gpu(i, g, predictor, verdict=verdict) if g else GpuPlan(
            index=i, engine=predictor.engine_for([], 1), rates={}, predicted_tps=0.0,
            offered_tps=0.0, starvation_proba=0.0))
    return Plan(gpus=gpus, adapters=list(adapters)), ok


def round_robin_plan(adapters: Sequence[AdapterDemand], predictor: Predictor,
                     gpus: int) -> Plan:
    """Adapter i on GPU i mod ``gpus``."""
    return _round_robin_plan(adapters, gpus, predictor)[0]


def round_robin(adapters: Sequence[AdapterDemand], predictor: Predictor,
                start: int = 1) -> Plan:
    """The smallest N (searched upwards by doubling, then bisection) that round-robin
    assignment makes feasible."""
    lo, hi = max(0, start - 1), max(1, start)
    while not _round_robin_plan(adapters, hi, predictor)[1]:
        if hi >= len(adapters):
            return _round_robin_plan(adapters, len(adapters), predictor)[0]
        lo, hi = hi, min(len(adapters), hi * 2)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _round_robin_plan(adapters, mid, predictor)[1]:
            hi = mid
        else:
            lo = mid
    return _round_robin_plan(adapters, hi, predictor)[0]


def first_fit(adapters: Sequence[AdapterDemand], predictor: Predictor,
              gpus: int | None = None) -> Plan:
    """Fill each GPU to the largest slot count memory allows at the adapters' top rank; with
    ``gpus`` given, spread the same order evenly over that many GPUs instead (the way to add
    GPUs until the twin accepts)."""
    ordered = sorted(adapters, key=lambda a: (-a.rank, a.name))
    if gpus is not None:
        size = -(-len(ordered) // max(1, gpus))
        groups = [ordered[i:i + size] for i in range(0, len(ordered), size)]
        return Plan(gpus=[_gpu(i, g, predictor, max_loras=_memory_slots(g[:1], predictor,
                                                                        len(g)))
                          for i, g in enumerate(groups)], adapters=list(adapters))
    plan: list[GpuPlan] = []
    i = 0
    while i < len(ordered):
        slots = _memory_slots(ordered[i:i + 1], predictor, len(ordered) - i)
        group = ordered[i:i + slots]
        plan.append(_gpu(len(plan), group, predictor, max_loras=min(slots, len(group))))
        i += slots
    return Plan(gpus=plan, adapters=list(adapters))


def _memory_slots(head: Sequence[AdapterDemand], predictor: Predictor, cap: int) -> int:
    """The largest slot count (at most ``cap``) vLLM starts with at ``head``'s rank."""
    slots = 1
    for s in SLOT_CANDIDATES:
        try:
            plan_memory(predictor.model, predictor.gpu, predictor.engine_for(head, s),
                        predictor.profile.memory)
        except InsufficientMemoryError:
            break
        slots = s
        if s >= cap:
            break
    return min(slots, max(cap, 1))


def confirm(build: Callable[[int], Plan], start: int, accepts: Callable[[Plan], bool],
            limit: int) -> tuple[Plan, bool]:
    """The plan ``build(n)`` for the smallest ``n >= start`` that ``accepts`` (the twin), by
    doubling then bisection; ``(build(limit), False)`` if none up to ``limit`` does."""
    lo, hi = start - 1, start
    while hi <= limit and not accepts(build(hi)):
        lo, hi = hi, min(limit + 1, max(hi + 1, hi * 2))
    if hi > limit:
        return build(limit), False
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if accepts(build(mid)):
            hi = mid
        else:
            lo = mid
    return build(hi), True
