"""Check a plan in the cluster twin, and repair what the twin rejects.

The twin routes the plan's rate shares with the gateway's own router, so a plan is validated
as it will be served. ``repair`` moves adapters off the GPUs the twin finds starving (the
smallest loads first, onto the GPU with the most predicted headroom that stays feasible, else
a new GPU) until the twin accepts or the round budget runs out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from planner.features import AdapterDemand
from planner.placer import GpuPlan, Plan, Predictor
from twin.cluster import ClusterResult, simulate_cluster
from twin.routing import Placement, RoutingPolicy, WorkerPlacement
from twin.workload import AdapterLoad, LengthDist, Workload

__all__ = ["Validation", "repair", "validate"]


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


def validate(plan: Plan, predictor: Predictor, *, duration_s: float = 180.0,
             seed: int = 0) -> Validation:
    shares = plan.shares()
    workers = tuple(WorkerPlacement(name=f"gpu-{g.index}",
                                    shares={n: shares[n][g.index] for n in g.rates})
                    for g in plan.gpus)
    # Base-model requests route by key "<base>"; the plan names them by their adapter name.
    result = simulate_cluster(predictor.model, predictor.gpu, predictor.profile,
                              [g.engine for g in plan.gpus], Placement(workers),
                              workload_for(plan.adapters, duration_s, seed),
                              RoutingPolicy.PLACEMENT)
    starved = [i for i, r in enumerate(result.workers) if r.starved or r.starved_adapters]
    return Validation(ok=not starved, result=result, starved_gpus=starved,
                      measured_tps=[r.throughput_tps for r in result.workers],
                      predicted_tps=[g.predicted_tps for g in plan.gpus])


def _demands(gpu: GpuPlan, by_name: dict[str, AdapterDemand]) -> list[AdapterDemand]:
    out = []
    for name, rate in gpu.rates.items():
        a = by_name[name]
        out.append(AdapterDemand(name=name, rank=a.rank, rate=rate, input_tokens=a.input_tokens,
                                 output_tokens=a.output_tokens, input_std=a.input_std,
                                 output_std=a.output_std, cv=a.cv))
    return out


def _regpu(index: int, demands: list[AdapterDemand], predictor: Predictor) -> GpuPlan | None:
    v = predictor.best(demands)
    if not v.feasible or v.engine is None:
        return None
    return GpuPlan(index=index, engine=v.engine, rates={a.name: a.rate for a in demands},
                   predicted_tps=v.predicted_tps, offered_tps=v.offered_tps,
                   starvation_proba=v.proba)


def repair(plan: Plan, predictor: Predictor, validation: Validation, *,
           duration_s: float = 180.0, seed: int = 0,
           rounds: int = 4) -> tuple[Plan, Validation]:
    """Move load off starving GPUs until the twin accepts (at most ``rounds`` twin runs)."""
    by_name = {a.name: a for a in plan.adapters}
    for _ in range(rounds):
        if validation.ok:
            break
        gpus = list(plan.gpus)
        for i in validation.starved_gpus:
            demands = sorted(_demands(gpus[i], by_name), key=lambda a: a.rate)
            if len(demands) <= 1:
                continue  # a lone adapter's GPU: its replicas are the placer's business
            # Take a quarter of the adapters (the smallest loads) off this GPU.
            moved, kept = demands[:max(1, len(demands) // 4)], demands[max(1, len(demands) // 4):]
            fixed = _regpu(i, kept, predictor)
            gpus[i] = fixed or GpuPlan(index=i, engine=gpus[i].engine,
                                       rates={a.name: a.rate for a in kept},
                                       predicted_tps=0.0, offered_tps=0.0, starvation_proba=1.0)
            extra = _regpu(len(gpus), moved, predictor)
            gpus.append(extra or GpuPlan(index=len(gpus), engine=predictor.engine_for(
                moved, min(len(moved), 8)), rates={a.name: a.rate for a in moved},
                predicted_tps=0.0, offered_tps=0.0, starvation_proba=1.0))
        plan = Plan(gpus=gpus, adapters=plan.adapters)
        validation = validate(plan, predictor, duration_s=duration_s, seed=seed)
    return plan, validation
