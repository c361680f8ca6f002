"""Check a plan in the cluster twin, and repair what the twin rejects.

The twin routes the plan's rate shares with the gateway's own router, so a plan is validated
as it will be served. ``repair`` keeps the GPUs the twin accepts and re-places the load of the
others with a stricter margin, until the twin accepts or the round budget runs out.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from planner.baselines import (
    confirm,
    first_fit,
    one_per_adapter,
    round_robin,
    round_robin_plan,
)
from planner.features import AdapterDemand
from planner.placer import Plan, Predictor, place
from twin.cluster import ClusterResult, simulate_cluster
from twin.routing import BASE_MODEL, Placement, RoutingPolicy, WorkerPlacement
from twin.workload import AdapterLoad, LengthDist, Workload

__all__ = ["Validation", "baselines_in_twin", "repair", "validate"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Validation:
    ok: bool
    result: ClusterResult
    starved_gpus: list[int]
    measured_tps: list[float]
    predicted_tps: list[float]


def _length(mean: float, std: float) -> LengthDist:
    if std <= 0:
        return LengthDist(dist="fixed", value=max(1, round(mean)))
    return LengthDist(dist="lognormal", mean=mean, std=std)


def workload_for(adapters: Sequence[AdapterDemand], duration_s: float, seed: int) -> Workload:
    loads = tuple(AdapterLoad(name=a.name, rank=a.rank, rate=a.rate,
                              input=_length(a.input_tokens, a.input_std),
                              output=_length(a.output_tokens, a.output_std))
                  for a in adapters)
    return Workload(adapters=loads, duration_s=duration_s, seed=seed)


def _keyed(shares: dict[str, float], base: set[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, share in shares.items():
        key = BASE_MODEL if name in base else name
        out[key] = out.get(key, 0.0) + share
    return out


def validate(plan: Plan, predictor: Predictor, *, duration_s: float = 180.0,
             seed: int = 0) -> Validation:
    shares = plan.shares()
    base = {a.name for a in plan.adapters if a.rank == 0}
    # Base-model requests route by BASE_MODEL, as the gateway routes them (twin.routing).
    workers = tuple(WorkerPlacement(name=f"gpu-{g.index}", shares=_keyed(
        {n: shares[n][g.index] for n in g.rates}, base)) for g in plan.gpus)
    result = simulate_cluster(predictor.model, predictor.gpu, predictor.profile,
                              [g.engine for g in plan.gpus], Placement(workers),
                              workload_for(plan.adapters, duration_s, seed),
                              RoutingPolicy.PLACEMENT)
    starved = [i for i, r in enumerate(result.workers) if r.starved or r.starved_adapters]
    return Validation(ok=not starved, result=result, starved_gpus=starved,
                      measured_tps=[r.throughput_tps for r in result.workers],
                      predicted_tps=[g.predicted_tps for g in plan.gpus])


def repair(plan: Plan, predictor: Predictor, validation: Validation, *,
           duration_s: float = 180.0, seed: int = 0, rounds: int = 4,
           tighten: float = 0.85) -> tuple[Plan, Validation]:
    """Re-place the load of the GPUs the twin finds starving, with a stricter margin each
    round (``headroom`` times ``tighten``), keeping the GPUs it accepted; at most ``rounds``
    more twin runs."""
    by_name = {a.name: a for a in plan.adapters}
    config = predictor.config
    for _ in range(rounds):
        if validation.ok:
            break
        bad = set(validation.starved_gpus)
        keep = [g for i, g in enumerate(plan.gpus) if i not in bad]
        rates: dict[str, float] = {}
        for i in sorted(bad):
            for name, rate in plan.gpus[i].rates.items():
                rates[name] = rates.get(name, 0.0) + rate
        moved = [dataclasses.replace(by_name[name], rate=rate) for name, rate in rates.items()]
        config = dataclasses.replace(config, headroom=config.headroom * tighten)
        fresh = place(moved, predictor.model, predictor.gpu, predictor.profile,
                      predictor.surrogate, config)
        gpus = [dataclasses.replace(g, index=i) for i, g in enumerate([*keep, *fresh.gpus])]
        plan = Plan(gpus=gpus, adapters=plan.adapters)
        validation = validate(plan, predictor, duration_s=duration_s, seed=seed)
    return plan, validation


def baselines_in_twin(adapters: Sequence[AdapterDemand], predictor: Predictor,
                      duration: float, *, twin: bool) -> tuple[dict[str, int], dict[str, bool]]:
    """GPU counts of the baselines; with ``twin``, each confirmed in the cluster twin (GPUs
    added until it accepts, as the issue defines them)."""
    per_adapter = one_per_adapter(adapters, predictor)
    rr = round_robin(adapters, predictor)
    ff = first_fit(adapters, predictor)
    counts = {"one_per_adapter": per_adapter.num_gpus, "round_robin": rr.num_gpus,
              "first_fit": ff.num_gpus}
    if not twin:
        return counts, {}

    def accepts(plan: Plan) -> bool:
        return validate(plan, predictor, duration_s=duration).ok

    limit = len(adapters)
    rr_plan, rr_ok = confirm(lambda n: round_robin_plan(adapters, predictor, n), rr.num_gpus,
                             accepts, limit)
    ff_plan, ff_ok = confirm(lambda n: first_fit(adapters, predictor, gpus=n), ff.num_gpus,
                             accepts, limit)
    counts.update(round_robin=rr_plan.num_gpus, first_fit=ff_plan.num_gpus)
    return counts, {"one_per_adapter": accepts(per_adapter), "round_robin": rr_ok,
                    "first_fit": ff_ok}
