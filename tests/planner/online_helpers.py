"""Builders shared by the online re-plan and migration tests."""

from __future__ import annotations

import random
from collections.abc import Sequence

from planner.demand import AdapterDemand
from planner.migration import Migration, apply, diff
from planner.online import RunningWorker
from planner.placer import Plan
from twin.routing import BASE_MODEL


def demands(n: int, seed: int, *, base: float = 0.0, scale: float = 1.0) -> list[AdapterDemand]:
    """``n`` adapters with mixed ranks, rates and lengths (plus the base model if ``base``)."""
    rng = random.Random(seed)
    out = [AdapterDemand(name=f"a{i}", rank=rng.choice([8, 16, 32]),
                         rate=rng.uniform(0.05, 2.0) * scale,
                         input_tokens=rng.choice([256, 1024]),
                         output_tokens=rng.choice([64, 256])) for i in range(n)]
    if base:
        out.append(AdapterDemand(name="base", rank=0, rate=base * scale))
    return out


def running(plan: Plan, names: Sequence[str], ranks: dict[str, int]) -> list[RunningWorker]:
    """The workers after ``plan`` is carried out: its GPUs that hold something."""
    return [RunningWorker(n, g.engine, frozenset(BASE_MODEL if ranks[k] == 0 else k
                                                 for k in g.rates))
            for n, g in zip(names, plan.gpus, strict=True) if g.rates]


def holdings(workers: Sequence[RunningWorker]) -> dict[str, frozenset[str]]:
    return {w.name: w.adapters for w in workers}


def step(ads: Sequence[AdapterDemand], workers: Sequence[RunningWorker], plan: Plan,
         ) -> tuple[Migration, list[RunningWorker]]:
    """The migration to ``plan`` and the workers it leaves (checked by ``apply``)."""
    names = [w.name for w in workers]
    m = diff(holdings(workers), plan, names)
    ranks = {a.name: a.rank for a in ads}
    after = apply(holdings(workers), m)
    assert after == {w: frozenset(k for k in s if k != BASE_MODEL) for w, s in m.shares.items()}
    all_names = [*names, *m.added]
    return m, [w for w in running(plan, all_names, ranks) if w.name in m.shares]
