"""The one planning path: place, check in the cluster twin, repair what it rejects.

The gateway's start-up plan, its re-plans, ``lorafleet plan`` and the benchmarks all run
``plan_checked``; they differ only in how a plan is made (``make``: the placer by default,
the online re-plan for a running fleet) and how a rejected one is repaired:

- ``Repair.STARVED`` (offline plans): the load of the GPUs the twin finds starving is placed
  again with a stricter margin, the GPUs it accepted kept (``planner.validation.repair``);
- ``Repair.REPLAN`` (the online re-plan, whose move budget and hysteresis are in ``make``):
  the whole plan is made again at the stricter margin, so a consolidation the twin says would
  starve a worker is not carried out.

Each round tightens the placer's ``headroom`` by ``REPAIR_TIGHTEN``. The last plan is
returned either way, with the twin's verdict: a fleet that must grow is better served by a
plan the twin doubts than by none. ``diff`` (``planner.migration``) then maps it onto what
the workers hold.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from planner.demand import AdapterDemand
from planner.placer import place_with
from planner.plan import Plan
from planner.predictor import Predictor
from planner.validation import REPAIR_TIGHTEN, VALIDATION_S, Validation, repair, validate
from twin.cluster import ClusterResult

__all__ = ["Checked", "Repair", "plan_checked"]


class Repair(enum.Enum):
    STARVED = "starved"
    REPLAN = "replan"


@dataclass(frozen=True, slots=True, kw_only=True)
class Checked:
    """A plan and what the twin said of it (``validation`` None when unchecked); the
    predictor at the margin the plan was last made with; how many repair rounds ran."""

    plan: Plan
    validation: Validation | None
    predictor: Predictor
    repairs: int
    plan_seconds: float
    validate_seconds: float  # the twin's checks and the repairs' plans between them

    @property
    def ok(self) -> bool | None:
        return None if self.validation is None else self.validation.ok


def plan_checked(demands: Sequence[AdapterDemand], predictor: Predictor, *,
                 make: Callable[[Predictor], Plan] | None = None, check: bool = True,
                 how: Repair = Repair.STARVED, rounds: int = 4,
                 duration_s: float = VALIDATION_S,
                 map_fn: Callable[..., Iterable[ClusterResult]] = map) -> Checked:
    """Plan ``demands`` (``make``, the placer by default), check the plan in the cluster
    twin for ``duration_s`` (``map_fn``: a process pool's ``map`` runs independent groups of
    GPUs in parallel) and repair it, at most ``rounds`` times, as ``how`` says."""
    build = make if make is not None else (lambda p: place_with(demands, p))
    started = time.perf_counter()
    plan = build(predictor)
    plan_s = time.perf_counter() - started
    if not check or not plan.gpus:
        return Checked(plan=plan, validation=None, predictor=predictor, repairs=0,
                       plan_seconds=plan_s, validate_seconds=0.0)
    started = time.perf_counter()
    checked = validate(plan, predictor, duration_s=duration_s, map_fn=map_fn)
    repairs = 0
    while not checked.ok and repairs < rounds:
        repairs += 1
        if how is Repair.STARVED:
            plan, checked = repair(plan, predictor, checked, duration_s=duration_s, rounds=1,
                                   tighten=REPAIR_TIGHTEN**repairs, map_fn=map_fn)
        else:
            config = predictor.config
            predictor = predictor.with_config(
                replace(config, headroom=config.headroom * REPAIR_TIGHTEN))
            plan = build(predictor)
            checked = validate(plan, predictor, duration_s=duration_s, map_fn=map_fn)
    return Checked(plan=plan, validation=checked, predictor=predictor, repairs=repairs,
                   plan_seconds=plan_s, validate_seconds=time.perf_counter() - started)

