"""The initial placement: the planner's (``planner.placer.place``) or round-robin.

The plan's GPUs map onto the running workers in order. When the plan needs more GPUs than
run, GPU ``i`` folds onto worker ``i mod N`` (logged; the actuator that adds workers comes
later). Base-model (rank-0) entries are keyed ``twin.routing.BASE_MODEL``, which is how
``Router.route(None)`` looks base-model requests up.

Examples
--------
>>> from planner.features import AdapterDemand
>>> p = round_robin([AdapterDemand(name=n, rank=8, rate=1.0) for n in "abc"], ["w0", "w1"])
>>> [dict(w.shares) for w in p.placement.workers], p.gpus_active
([{'a': 1.0, 'c': 1.0}, {'b': 1.0}], 2)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from planner.features import AdapterDemand
from planner.online import Stability, with_cpu_room
from planner.placer import PlannerConfig, Predictor, place
from planner.surrogate import Surrogate
from planner.validate import repair, validate
from twin.catalog import get_gpu, get_model
from twin.profile import load_profile
from twin.routing import BASE_MODEL, Placement, WorkerPlacement
from twin.specs import ALLOWED_LORA_RANKS, EngineConfig, default_engine_for

__all__ = ["InitialPlan", "fallback_engine", "from_planner", "round_robin"]

logger = logging.getLogger(__name__)

MAX_SLOTS = 8  # GPU LoRA slots of a round-robin worker (more adapters swap through the LRU)


@dataclass(frozen=True, slots=True, kw_only=True)
class InitialPlan:
    """A placement over the running workers, the engine options each worker should run (used
    when the gateway starts emulated workers), and the GPU count the planner asked for."""

    placement: Placement
    engines: tuple[EngineConfig, ...]
    planned_gpus: int

    @property
    def gpus_active(self) -> int:
        """Workers holding at least one adapter (or base-model share)."""
        return sum(1 for w in self.placement.workers if w.shares)


def _key(a: AdapterDemand) -> str:
    return BASE_MODEL if a.rank == 0 else a.name


def fallback_engine(adapters: Sequence[AdapterDemand], gpu: str,
                    max_model_len: int) -> EngineConfig:
    """Engine options for a worker holding ``adapters`` when no plan chose them: every rank
    served, up to ``MAX_SLOTS`` GPU slots, a CPU slot for each adapter."""
    loras = [a for a in adapters if a.rank > 0]
    top = max((a.rank for a in loras), default=8)
    rank = next(r for r in ALLOWED_LORA_RANKS if r >= top)
    slots = max(1, min(len(loras), MAX_SLOTS))
    return default_engine_for(get_gpu(gpu), max_loras=slots,
                              max_cpu_loras=max(slots, len(loras)), max_lora_rank=rank,
                              max_model_len=max_model_len)


def round_robin(adapters: Sequence[AdapterDemand], workers: Sequence[str], *,
                gpu: str = "a100-80gb", max_model_len: int = 8192) -> InitialPlan:
    """LoRA adapter ``j`` on worker ``j mod N``; the base model on every worker."""
    shares: list[dict[str, float]] = [{} for _ in workers]
    held: list[list[AdapterDemand]] = [[] for _ in workers]
    loras = [a for a in adapters if a.rank > 0]
    for j, a in enumerate(loras):
        shares[j % len(workers)][a.name] = 1.0
        held[j % len(workers)].append(a)
    if any(a.rank == 0 for a in adapters):
        for s in shares:
            s[BASE_MODEL] = 1.0 / len(workers)
    placement = Placement(tuple(WorkerPlacement(name=n, shares=s)
                                for n, s in zip(workers, shares, strict=True)))
    engines = tuple(fallback_engine(h or list(adapters), gpu, max_model_len) for h in held)
    return InitialPlan(placement=placement, engines=engines, planned_gpus=len(workers))


def from_planner(adapters: Sequence[AdapterDemand], workers: Sequence[str],
                 surrogate: Surrogate, *, gpu: str = "a100-80gb",
                 model: str = "llama-3.1-8b", profile: str = "roofline-default",
                 max_model_len: int = 8192, headroom: float = 0.9,
                 cpu_lora_room: float = Stability().cpu_lora_room) -> InitialPlan:
    """The planner's fewest-GPU plan, checked (and repaired) in the cluster twin, mapped onto
    ``workers``. Each worker's CPU LoRA tier gets room for ``cpu_lora_room`` times the LoRAs
    it starts with (host memory only), as the re-planner gives the GPUs it adds
    (``planner.online.with_cpu_room``)."""
    specs = (get_model(model), get_gpu(gpu), load_profile(profile))
    config = PlannerConfig(max_model_len=max_model_len, headroom=headroom)
    plan = place(adapters, *specs, surrogate, config)
    predictor = Predictor(surrogate, *specs, config)
    checked = validate(plan, predictor)
    plan, checked = repair(plan, predictor, checked)
    if not checked.ok:
        logger.warning("the twin still finds GPUs %s starving after repair",
                       checked.starved_gpus)
    n = len(workers)
    if plan.num_gpus > n:
        logger.warning("the plan needs %d GPUs but %d workers run; folding it onto them",
                       plan.num_gpus, n)
    ranks = {a.name: a.rank for a in adapters}
    fractions = plan.shares()
    shares: list[dict[str, float]] = [{} for _ in workers]
    engines: list[EngineConfig | None] = [None] * n
    for g in plan.gpus:
        w = g.index % n
        for name in g.rates:
            key = BASE_MODEL if ranks.get(name, 1) == 0 else name
            shares[w][key] = shares[w].get(key, 0.0) + fractions[name][g.index]
        engine = engines[w]
        if engine is None or g.engine.max_loras > engine.max_loras:
            engines[w] = g.engine
    fallback = plan.gpus[0].engine
    final = []
    for w, engine in enumerate(engines):
        loras = sum(1 for k in shares[w] if k != BASE_MODEL)
        final.append(with_cpu_room(engine or fallback, loras, cpu_lora_room))
    placement = Placement(tuple(WorkerPlacement(name=name, shares=s)
                                for name, s in zip(workers, shares, strict=True)))
    return InitialPlan(placement=placement, engines=tuple(final), planned_gpus=plan.num_gpus)
