"""Check a plan in the cluster twin, and repair what the twin rejects.

The twin routes the plan's rate shares with the gateway's own router, so a plan is validated
as it will be served. ``repair`` keeps the GPUs the twin accepts and re-places the load of the
others with a stricter margin, until the twin accepts or the round budget runs out.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from planner.baselines import (
    confirm,
    first_fit,
    one_per_adapter,
    round_robin,
    round_robin_plan,
)
from planner.demand import AdapterDemand
from planner.placer import Plan, Predictor, place
from twin.cluster import ClusterResult, simulate_cluster
from twin.results import SimulationResult
from twin.routing import BASE_MODEL, Placement, RoutingPolicy, WorkerPlacement
from twin.workload import AdapterLoad, LengthDist, Workload

__all__ = ["REPAIR_TIGHTEN", "VALIDATION_S", "Validation", "baselines_in_twin", "repair",
           "validate"]

# Twin seconds a plan is checked for (the gateway's plans and re-plans, ``lorafleet plan``'s
# default, bench/placement.py): the acceptance test of every plan, so also the run length at
# which bench/surrogate.py scores the surrogate's largest feasible adapters per GPU.
VALIDATION_S = 180.0
# Each repair round's margin: the placer's ``headroom`` times this.
REPAIR_TIGHTEN = 0.85


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


def _components(workers: Sequence[WorkerPlacement]) -> list[list[int]]:
    """Groups of workers that share an adapter (directly or through others): the router
    couples only those, so each group can be simulated on its own."""
    parent = list(range(len(workers)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, w in enumerate(workers):
        for key in w.shares:
            if key in first:
                parent[find(i)] = find(first[key])
            else:
                first[key] = i
    groups: dict[int, list[int]] = {}
    for i in range(len(workers)):
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def _simulate_part(task: tuple[Any, ...]) -> ClusterResult:
    model, gpu, profile, engines, placement, workload, arrivals = task
    return simulate_cluster(model, gpu, profile, engines, placement, workload,
                            RoutingPolicy.PLACEMENT, arrivals)


def validate(plan: Plan, predictor: Predictor, *, duration_s: float = VALIDATION_S,
             seed: int = 0, map_fn: Callable[..., Iterable[ClusterResult]] = map) -> Validation:
    """Run the plan in the cluster twin. Workers that share no adapter are simulated as
    separate groups (pass a process pool's ``map`` as ``map_fn`` to run them in parallel);
    the arrivals are generated once for the whole plan, so the result does not depend on it.
    The merged ``ttft_p99_s`` is the worst group's."""
    started = time.perf_counter()
    # Base-model requests route by BASE_MODEL, as the gateway routes them (twin.routing).
    workers = plan.assign([f"gpu-{g.index}" for g in plan.gpus]).placement.workers
    workload = workload_for(plan.adapters, duration_s, seed)
    arrivals, _ = workload.generate(min(g.engine.max_model_len for g in plan.gpus))
    tasks = []
    groups = _components(workers)
    for group in groups:
        keys = {k for i in group for k in workers[i].shares}
        part = [a for a in arrivals if (BASE_MODEL if a.adapter is None else a.adapter) in keys]
        tasks.append((predictor.model, predictor.gpu, predictor.profile,
                      [plan.gpus[i].engine for i in group],
                      Placement(tuple(workers[i] for i in group)), workload, part))
    parts = list(map_fn(_simulate_part, tasks))
    by_gpu: dict[int, SimulationResult] = {}
    for group, part_result in zip(groups, parts, strict=True):
        by_gpu.update(zip(group, part_result.workers, strict=True))
    ordered = [by_gpu[i] for i in range(len(plan.gpus))]
    names = [w.name for w in workers]
    result = ClusterResult.of_workers(
        ordered, names, ttft_p99_s=max((p.ttft_p99_s for p in parts), default=float("nan")),
        wall_seconds=time.perf_counter() - started)
    starved = [i for i, r in enumerate(ordered) if r.starved or r.starved_adapters]
    return Validation(ok=not starved, result=result, starved_gpus=starved,
                      measured_tps=[r.throughput_tps for r in ordered],
                      predicted_tps=[g.predicted_tps for g in plan.gpus])


def repair(plan: Plan, predictor: Predictor, validation: Validation, *,
           duration_s: float = VALIDATION_S, seed: int = 0, rounds: int = 4,
           tighten: float = REPAIR_TIGHTEN,
           map_fn: Callable[..., Iterable[ClusterResult]] = map) -> tuple[Plan, Validation]:
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
        validation = validate(plan, predictor, duration_s=duration_s, seed=seed, map_fn=map_fn)
    return plan, validation


def baselines_in_twin(adapters: Sequence[AdapterDemand], predictor: Predictor,
                      duration: float, *, twin: bool,
                      map_fn: Callable[..., Iterable[ClusterResult]] = map,
                      ) -> tuple[dict[str, int], dict[str, bool]]:
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
        return validate(plan, predictor, duration_s=duration, map_fn=map_fn).ok

    limit = len(adapters)
    rr_plan, rr_ok = confirm(lambda n: round_robin_plan(adapters, predictor, n),
                             rr.num_workers, accepts, limit)
    ff_plan, ff_ok = confirm(lambda n: first_fit(adapters, predictor, gpus=n), ff.num_workers,
                             accepts, limit)
    counts.update(round_robin=rr_plan.num_gpus, first_fit=ff_plan.num_gpus)
    return counts, {"one_per_adapter": accepts(per_adapter), "round_robin": rr_ok,
                    "first_fit": ff_ok}
