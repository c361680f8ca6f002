"""The exact optimum on small instances: the fewest GPUs over every grouping of the adapters,
with the placer's own feasibility check (so the gap to it measures the greedy, not the
surrogate). Dynamic programming over subsets: feasibility is computed once per subset
(``2^n``), the partition in ``O(3^n)``; practical up to about 12 adapters. Adapters that need
replicas (more load than one GPU carries alone) are outside its scope.
"""

from __future__ import annotations

from collections.abc import Sequence

from planner.demand import AdapterDemand
from planner.placer import Predictor

__all__ = ["exact_min_gpus"]


def exact_min_gpus(adapters: Sequence[AdapterDemand], predictor: Predictor,
                   max_adapters: int = 12) -> int | None:
    """The minimum number of GPUs, or None when some adapter cannot be placed alone."""
    n = len(adapters)
    if n > max_adapters:
        raise ValueError(f"adapters: at most {max_adapters} for the exact optimum, got {n}")
    full = (1 << n) - 1
    feasible = [False] * (full + 1)
    for mask in range(1, full + 1):
        group = [adapters[i] for i in range(n) if mask >> i & 1]
        feasible[mask] = predictor.best(group).feasible
    if not all(feasible[1 << i] for i in range(n)):
        return None
    inf = n + 1
    best = [inf] * (full + 1)
    best[0] = 0
    for mask in range(1, full + 1):
        low = mask & -mask  # the group holding the lowest adapter: avoids counting twice
        sub = mask
        while sub:
            if sub & low and feasible[sub] and best[mask ^ sub] + 1 < best[mask]:
                best[mask] = best[mask ^ sub] + 1
            sub = (sub - 1) & mask
    return best[full]
