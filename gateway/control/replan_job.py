"""One re-plan, as it runs in the replanner's worker process: a snapshot in, a migration out.

Everything here is CPU-bound (the surrogate, the placer, the cluster twin) and runs in a
process of its own so the serving event loop never waits on it. The surrogate is loaded once
per process.

- ``incremental`` (the periodic default): ``planner.online.replan`` keeps what still fits on
  the running workers with their fixed engine settings, moves only what must move or what frees
  a worker, within the move budget.
- ``fresh`` (an operator's ``{"fresh": true}``): the placer from scratch, mapped
  onto the workers by ``planner.migration.diff`` to move as few adapters as possible.

Either plan is checked in the cluster twin (``planner.plan_checked``); one it rejects is
planned again with a stricter margin (``planner.Repair.REPLAN``), at most ``REPAIR_ROUNDS``
times, so a consolidation the twin says would starve a worker is not carried out, and a
worker it finds starving sheds load (or a GPU opens). The last plan is carried out either
way, with the twin's verdict reported: a fleet that must grow is better served by a plan the
twin doubts than by none.

Each result also carries the GPUs of the naive placements of the same demands
(``BASELINE_POLICIES``, exported as ``lorafleet_gpus_baseline``); ``measure_baselines`` counts
them alone, the gateway's first job at start-up.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache

from gateway.fleet.fleet_metrics import BASELINE_POLICIES
from planner import (
    AdapterDemand,
    Migration,
    OnlineLatency,
    Plan,
    PlannerConfig,
    Predictor,
    Repair,
    RunningWorker,
    Stability,
    Surrogate,
    Target,
    WorkerWindow,
    baselines_in_twin,
    diff,
    learn_live,
    live_row,
    place_with,
    plan_checked,
    replan,
)

__all__ = ["ReplanJob", "ReplanResult", "exit_with_parent",
           "measure_baselines", "run_job"]

PARENT_CHECK_S = 1.0
REPAIR_ROUNDS = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplanJob:
    """The snapshot a re-plan works from."""

    demands: tuple[AdapterDemand, ...]
    workers: tuple[RunningWorker, ...]
    gpu: str
    model: str
    profile: str
    max_model_len: int
    stability: Stability = field(default_factory=Stability)
    fresh: bool = False
    validate: bool = True
    capacity_scale: float = 1.0
    headroom: float = 0.9
    search_seconds: float = 1.0  # the placer's improvement search (fresh plans, new GPUs)
    tensor_parallel_size: int = 1  # GPUs of each worker (vLLM's --tensor-parallel-size)
    windows: tuple[WorkerWindow, ...] = ()  # observed since the last re-plan: training data
    # worker -> adapter (BASE_MODEL for the base model) -> share of its rate routed there:
    # a replicated adapter keeps the split it is routed by (the search splits unevenly)
    shares: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    # the gateway whose windows these are: the planning process's surrogate learns one
    # gateway's live windows (another's job reloads it: tests run several in a process)
    gateway_id: str = ""
    surrogate_path: str = ""  # the target's own surrogate (gateway/control/target_training.py)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplanResult:
    """The migration to carry out, and what the planner and the twin said of the plan."""

    migration: Migration
    planned_gpus: int
    gpus: tuple[dict[str, object], ...]  # per GPU: worker, adapters, predicted/offered tps
    validated: bool | None  # None: validation off
    starved: tuple[str, ...]  # workers the twin finds starving
    plan_seconds: float
    validate_seconds: float  # the twin's checks, and the repairs' plans between them
    repairs: int = 0  # plans made again because the twin rejected the one before
    learned: int = 0  # live windows the throughput and starvation models learned
    baselines: Mapping[str, int] = field(default_factory=dict)  # GPUs by naive policy


@cache
def _surrogate(path: str = "") -> Surrogate:
    """The surrogate at ``path`` (a target's own), or the shipped one ("")."""
    if path:
        return Surrogate.load(path)
    from gateway.pretrained import default_surrogate  # the shipped file (trained only if stale)

    return default_surrogate()


_learned_for: str | None = None  # the gateway whose live windows the cached surrogate learned


def _surrogate_for(gateway_id: str, path: str = "") -> Surrogate:
    """The planning process's surrogate (``path``: a target's own), as one gateway's live
    windows taught it: reloaded when it learned another gateway's."""
    global _learned_for
    if _learned_for is not None and _learned_for != gateway_id:
        _surrogate.cache_clear()
        _learned_for = None
    return _surrogate(path)


def exit_with_parent(parent: int, every_s: float = PARENT_CHECK_S) -> None:
    """The planning process's initializer: exit as soon as the gateway process that started
    it is gone. A gateway killed (``SIGKILL``, or a supervisor's timeout after ``SIGTERM``)
    cannot shut its pool down, and the worker, which holds its own end of the task pipe,
    would otherwise live on as an orphan, a re-plan's CPU-bound work included."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _predictor(job: ReplanJob) -> Predictor:
    config = PlannerConfig(max_model_len=job.max_model_len, headroom=job.headroom,
                           search_seconds=job.search_seconds,
                           tensor_parallel_size=job.tensor_parallel_size)
    return Target.resolve(job.model, job.gpu, job.profile).predictor(
        _surrogate_for(job.gateway_id, job.surrogate_path), config,
        capacity_scale=job.capacity_scale)


def _baselines(job: ReplanJob, predictor: Predictor) -> dict[str, int]:
    """GPUs of the naive placements of the job's demands, as ``lorafleet plan`` counts them
    (``planner.baselines_in_twin`` without the twin): round-robin at the fewest GPUs the
    placer's own check accepts."""
    counts, accepted = baselines_in_twin(job.demands, predictor, 0.0, twin=False)
    # round-robin splits no adapter: with one that needs more than a GPU no count is accepted
    # (and the count tried is no baseline)
    return {p: counts[p] for p in BASELINE_POLICIES if accepted.get(p, True)}


def measure_baselines(job: ReplanJob) -> dict[str, int]:
    """The baselines' GPUs for the job's demands: the gateway's first job, at start-up, before
    any re-plan has measured them (it loads the surrogate, so the first re-plan does not wait
    for imports and training)."""
    return _baselines(job, _predictor(job))


def _new_name(i: int) -> str:
    return f"new-{i}"


def _learn(job: ReplanJob, predictor: Predictor) -> int:
    """Train the surrogate on the windows observed since the last re-plan: the latency model
    on every one, the throughput and starvation models on those of workers with a speed of
    their own (``planner.online_surrogate``); returns how many the latter learned."""
    global _learned_for
    if not job.windows:
        return 0
    online = OnlineLatency(predictor.model, predictor.gpu, predictor.profile,
                           latency=predictor.surrogate.latency)
    for window in job.windows:
        online.observe(window)
    rows = [r for w in job.windows if (r := live_row(w, predictor.model, predictor.gpu,
                                                    predictor.profile)) is not None]
    if rows:
        _learned_for = job.gateway_id
    return learn_live(predictor.surrogate, rows)


def _plan(job: ReplanJob, predictor: Predictor) -> Plan:
    if job.fresh:
        return place_with(job.demands, predictor)
    return replan(job.demands, job.workers, predictor, job.stability,
                  shares=job.shares or None)


def run_job(job: ReplanJob) -> ReplanResult:
    """Learn, plan, check in the cluster twin (planning again with a stricter margin what it
    rejects), and diff against what the workers hold now."""
    predictor = _predictor(job)
    learned = _learn(job, predictor)
    names = [w.name for w in job.workers]
    current = {w.name: w.adapters for w in job.workers}
    ranks = {d.name: d.rank for d in job.demands}
    checked = plan_checked(job.demands, predictor, make=lambda p: _plan(job, p),
                           check=job.validate, how=Repair.REPLAN, rounds=REPAIR_ROUNDS)
    plan = checked.plan
    starved: tuple[str, ...] = ()
    if checked.validation is not None:
        starved = tuple(names[i] if i < len(names) else _new_name(i)
                        for i in checked.validation.starved_gpus)
    migration = diff(current, plan, names, new_names=_new_name, ranks=ranks)
    used = [g for g in plan.gpus if g.rates]
    gpus = tuple({"gpu": g.index, "adapters": sorted(g.rates),
                  "max_loras": g.engine.max_loras,
                  "predicted_tps": round(g.predicted_tps, 1),
                  "offered_tps": round(g.offered_tps, 1)} for g in used)
    return ReplanResult(migration=migration,
                        planned_gpus=len(used) * job.tensor_parallel_size, gpus=gpus,
                        validated=checked.ok, starved=starved,
                        plan_seconds=checked.plan_seconds,
                        validate_seconds=checked.validate_seconds, repairs=checked.repairs,
                        learned=learned, baselines=_baselines(job, predictor))
