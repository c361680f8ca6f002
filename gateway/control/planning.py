"""The initial placement: the planner's (``planner.plan_checked``) or round-robin.

The plan's GPUs map onto the running workers in order. When the plan needs more GPUs than
run, GPU ``i`` folds onto worker ``i mod N`` (logged; the actuator that adds workers comes
later). Base-model (rank-0) entries are keyed ``twin.routing.BASE_MODEL``, which is how
``Router.route(None)`` looks base-model requests up.

Examples
--------
>>> from planner import AdapterDemand
>>> p = round_robin([AdapterDemand(name=n, rank=8, rate=1.0) for n in "abc"], ["w0", "w1"])
>>> [dict(w.shares) for w in p.placement.workers], p.gpus_active
([{'a': 1.0, 'c': 1.0}, {'b': 1.0}], 2)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from gateway.config.engine import fallback_engine
from planner import (
    DEFAULT_GPU,
    DEFAULT_MODEL,
    DEFAULT_PROFILE,
    AdapterDemand,
    Assignment,
    PlannerConfig,
    Stability,
    Surrogate,
    Target,
    plan_checked,
)
from twin.routing import BASE_MODEL, Placement, WorkerPlacement

__all__ = ["InitialPlan", "from_planner", "round_robin"]

logger = logging.getLogger(__name__)



# The initial placement over the running workers: the planner's ``Assignment``.
InitialPlan = Assignment


def _key(a: AdapterDemand) -> str:
    return BASE_MODEL if a.is_base else a.name


def round_robin(adapters: Sequence[AdapterDemand], workers: Sequence[str], *,
                gpu: str = DEFAULT_GPU, max_model_len: int = 8192,
                tensor_parallel_size: int = 1) -> InitialPlan:
    """LoRA adapter ``j`` on worker ``j mod N``; the base model on every worker."""
    shares: list[dict[str, float]] = [{} for _ in workers]
    held: list[list[AdapterDemand]] = [[] for _ in workers]
    loras = [a for a in adapters if not a.is_base]
    for j, a in enumerate(loras):
        shares[j % len(workers)][a.name] = 1.0
        held[j % len(workers)].append(a)
    if any(a.is_base for a in adapters):
        for s in shares:
            s[BASE_MODEL] = 1.0 / len(workers)
    placement = Placement(tuple(WorkerPlacement(name=n, shares=s)
                                for n, s in zip(workers, shares, strict=True)))
    engines = tuple(fallback_engine(h or list(adapters), gpu, max_model_len,
                                    tensor_parallel_size) for h in held)
    return InitialPlan(placement=placement, engines=engines, planned_gpus=len(workers))


def from_planner(adapters: Sequence[AdapterDemand], workers: Sequence[str],
                 surrogate: Surrogate, *, gpu: str = DEFAULT_GPU, model: str = DEFAULT_MODEL,
                 profile: str = DEFAULT_PROFILE, max_model_len: int = 8192,
                 headroom: float = 0.9, search_seconds: float = 1.0,
                 tensor_parallel_size: int = 1,
                 cpu_lora_room: float = Stability().cpu_lora_room) -> InitialPlan:
    """The planner's fewest-GPU plan, checked (and repaired) in the cluster twin
    (``planner.plan_checked``), mapped onto ``workers`` (``Plan.assign``). Each worker's CPU
    LoRA tier gets room for ``cpu_lora_room`` times the LoRAs it starts with (host memory
    only), as the re-planner gives the GPUs it adds."""
    target = Target.resolve(model, gpu, profile)
    config = PlannerConfig(max_model_len=max_model_len, headroom=headroom,
                           search_seconds=search_seconds,
                           tensor_parallel_size=tensor_parallel_size)
    checked = plan_checked(adapters, target.predictor(surrogate, config))
    if not checked.ok:
        assert checked.validation is not None
        logger.warning("the twin still finds GPUs %s starving after repair",
                       checked.validation.starved_gpus)
    if checked.plan.num_workers > len(workers):
        logger.warning("the plan needs %d workers but %d run; folding it onto them",
                       checked.plan.num_workers, len(workers))
    return checked.plan.assign(workers, cpu_lora_room=cpu_lora_room)
