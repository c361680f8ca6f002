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

import numpy as np

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
from twin.workload import AdapterLoad, Arrival, LengthDist, Workload

__all__ = ["REPAIR_TIGHTEN", "VALIDATION_S", "Validation", "baselines_in_twin",
           "predicted_ok", "repair", "validate"]

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


def _pack(arrivals: Sequence[Arrival]) -> tuple[tuple[str | None, ...], np.ndarray]:
    """Arrivals as one int64 array (time, adapter index, prompt, output tokens) and the
    adapters' names: what a pool's task carries, pickled as one buffer rather than an object
    per request (1.4 s of a 1000-adapter plan's check went to pickling them)."""
    names: dict[str | None, int] = {}
    rows = np.array([(a.time_ns, names.setdefault(a.adapter, len(names)), a.prompt_tokens,
                      a.max_tokens) for a in arrivals], dtype=np.int64).reshape(-1, 4)
    return tuple(names), rows


def _unpack(names: tuple[str | None, ...], rows: np.ndarray) -> list[Arrival]:
    return [Arrival(t, names[k], p, o) for t, k, p, o in rows.tolist()]


def _simulate_part(task: tuple[Any, ...]) -> ClusterResult:
    model, gpu, profile, engines, placement, workload, (names, rows) = task
    return simulate_cluster(model, gpu, profile, engines, placement, workload,
                            RoutingPolicy.PLACEMENT, _unpack(names, rows))


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
    groups = _components(workers)
    group_of = {k: n for n, group in enumerate(groups) for i in group for k in workers[i].shares}
    parts_in: list[list[Any]] = [[] for _ in groups]
    for a in arrivals:  # each arrival to its group, in order (one pass, not one per group)
        n = group_of.get(BASE_MODEL if a.adapter is None else a.adapter)
        if n is not None:
            parts_in[n].append(a)
    loads_in: list[list[AdapterLoad]] = [[] for _ in groups]  # each task's own adapters
    for load in workload.adapters:
        n = group_of.get(BASE_MODEL if load.rank == 0 else load.name)
        if n is not None:
            loads_in[n].append(load)
    tasks = [(predictor.model, predictor.gpu, predictor.profile,
              [plan.gpus[i].engine for i in group],
              Placement(tuple(workers[i] for i in group)),
              dataclasses.replace(workload, adapters=tuple(loads)), _pack(part))
             for group, part, loads in zip(groups, parts_in, loads_in, strict=True)]
    # The longest groups first (by arrivals), so that a pool's workers finish together.
    order = sorted(range(len(tasks)), key=lambda n: -len(parts_in[n]))
    parts: list[ClusterResult] = [None] * len(tasks)  # type: ignore[list-item]
    for n, result in zip(order, map_fn(_simulate_part, [tasks[n] for n in order]),
                         strict=True):
        parts[n] = result
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


def predicted_ok(plan: Plan, predictor: Predictor) -> bool:
    """Every GPU of ``plan`` passes the placer's own check (``Predictor.check``) with its
    engine and its share of each adapter's rate."""
    by_name = {a.name: a for a in plan.adapters}
    return all(predictor.check([dataclasses.replace(by_name[n], rate=r)
                                for n, r in g.rates.items()], g.engine).feasible
               for g in plan.gpus if g.rates)


def baselines_in_twin(adapters: Sequence[AdapterDemand], predictor: Predictor,
                      duration: float, *, twin: bool,
                      map_fn: Callable[..., Iterable[ClusterResult]] = map,
                      ) -> tuple[dict[str, int], dict[str, bool]]:
    """GPU counts of the baselines, and whether each was accepted. Round-robin and
    first-fit get GPUs added until the surrogate's check accepts them (``predicted_ok``: as
    the placer's plans are judged, in seconds at any size), or with ``twin`` until the
    cluster twin does (as the issue defines them; minutes at hundreds of adapters). Neither
    splits an adapter, so when one needs more than a GPU alone the check accepts neither at
    any count: the count is then one GPU per adapter, not accepted, without a search."""
    per_adapter = one_per_adapter(adapters, predictor)
    limit = len(adapters)
    tp = predictor.config.tensor_parallel_size
    if not twin and per_adapter.num_workers > limit:
        return ({"one_per_adapter": per_adapter.num_gpus, "round_robin": limit * tp,
                 "first_fit": limit * tp},
                {"one_per_adapter": True, "round_robin": False, "first_fit": False})
    rr = round_robin(adapters, predictor)
    ff = first_fit(adapters, predictor)

    def accepts(plan: Plan) -> bool:
        if not twin:
            return predicted_ok(plan, predictor)
        return validate(plan, predictor, duration_s=duration, map_fn=map_fn).ok

    rr_plan, rr_ok = ((rr, predicted_ok(rr, predictor)) if not twin else
                      confirm(lambda n: round_robin_plan(adapters, predictor, n),
                              rr.num_workers, accepts, limit))
    ff_plan, ff_ok = confirm(lambda n: first_fit(adapters, predictor, gpus=n), ff.num_workers,
                             accepts, limit)
    return ({"one_per_adapter": per_adapter.num_gpus, "round_robin": rr_plan.num_gpus,
             "first_fit": ff_plan.num_gpus},
            {"one_per_adapter": True if not twin else accepts(per_adapter),
             "round_robin": rr_ok, "first_fit": ff_ok})
