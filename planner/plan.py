"""A placement: the GPUs of a plan, each with its engine and the rate of each adapter it
serves, and the adapters' shares the gateway routes by."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from planner.demand import AdapterDemand
from twin.routing import BASE_MODEL, Placement, WorkerPlacement
from twin.specs import EngineConfig

if TYPE_CHECKING:
    from planner.predictor import Verdict

__all__ = ["Assignment", "GpuPlan", "Plan", "merged", "with_cpu_room"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Assignment:
    """A plan mapped onto running workers: the routing table (``placement``), the engine
    options each worker runs (used when the gateway starts emulated workers), and the GPUs
    the plan asked for."""

    placement: Placement
    engines: tuple[EngineConfig, ...]
    planned_gpus: int

    @property
    def gpus_active(self) -> int:
        """Workers holding at least one adapter (or base-model share)."""
        return sum(1 for w in self.placement.workers if w.shares)


def with_cpu_room(engine: EngineConfig, loras: int, room: float) -> EngineConfig:
    """``engine`` with a CPU LoRA tier for ``room`` times the ``loras`` it starts with
    (``Stability.cpu_lora_room``; never lowered): a worker's engine options are fixed for its
    life, and one whose CPU tier is full cannot take an adapter when a shifted load must be
    rebalanced over the running GPUs.

    >>> with_cpu_room(EngineConfig(max_loras=4), 3, 2.0).cpu_loras
    6
    >>> with_cpu_room(EngineConfig(max_loras=8), 3, 2.0).cpu_loras
    8
    """
    need = math.ceil(loras * room)
    return replace(engine, max_cpu_loras=need) if engine.cpu_loras < need else engine


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuPlan:
    """One GPU: its engine options and the rate (req/s) of each adapter it serves."""

    index: int
    engine: EngineConfig
    rates: dict[str, float]
    predicted_tps: float
    offered_tps: float
    starvation_proba: float

    @classmethod
    def judged(cls, index: int, engine: EngineConfig, rates: dict[str, float],
               verdict: Verdict) -> GpuPlan:
        """GPU ``index`` serving ``rates`` with ``engine``, as ``verdict`` predicts it."""
        return cls(index=index, engine=engine, rates=rates,
                   predicted_tps=verdict.predicted_tps, offered_tps=verdict.offered_tps,
                   starvation_proba=verdict.proba)


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    gpus: list[GpuPlan]
    adapters: list[AdapterDemand] = field(default_factory=list)
    # Set by ``planner.online.replan``: GPU ``i`` is running worker ``workers[i]`` (an empty
    # one is to be retired); the GPUs after them are new. Empty for a fresh plan.
    workers: tuple[str, ...] = ()

    @property
    def num_workers(self) -> int:
        """vLLM servers the plan runs (``gpus`` holds one entry per worker)."""
        return len(self.gpus)

    @property
    def num_gpus(self) -> int:
        """GPUs the plan uses: each worker's ``tensor_parallel_size``, summed."""
        return sum(g.engine.tensor_parallel_size for g in self.gpus)

    def shares(self) -> dict[str, dict[int, float]]:
        """adapter -> {gpu index: fraction of its rate}."""
        out: dict[str, dict[int, float]] = {}
        for g in self.gpus:
            for name, rate in g.rates.items():
                out.setdefault(name, {})[g.index] = rate
        for name, parts in out.items():
            total = sum(parts.values())  # zero-rate adapters: equal shares, still routable
            out[name] = {i: r / total if total else 1.0 / len(parts) for i, r in parts.items()}
        return out

    def tables(self, base: Collection[str] | None = None) -> list[dict[str, float]]:
        """Each GPU's routing weights: every adapter's share of its rate there, the
        base-model ones (``base``, default the plan's rank-0 adapters) summed under
        ``twin.routing.BASE_MODEL``, the key the router looks base-model requests up by."""
        base = {a.name for a in self.adapters if a.is_base} if base is None else set(base)
        fractions = self.shares()
        out = []
        for g in self.gpus:
            table: dict[str, float] = {}
            for name in sorted(g.rates):
                key = BASE_MODEL if name in base else name
                table[key] = table.get(key, 0.0) + fractions[name][g.index]
            out.append(table)
        return out

    def assign(self, workers: Sequence[str], *, cpu_lora_room: float = 1.0) -> Assignment:
        """GPU ``i`` on worker ``workers[i mod N]`` (folded onto the running ones when the
        plan needs more), each adapter weighted by its share of its rate and base-model ones
        keyed ``twin.routing.BASE_MODEL`` (how the router looks base-model requests up). A
        worker runs the engine of the GPU with the most slots folded onto it (a worker with
        none, the first GPU's), its CPU LoRA tier with room for ``cpu_lora_room`` times the
        LoRAs it holds (``with_cpu_room``)."""
        n = len(workers)
        if n == 0:
            raise ValueError("workers: at least one")
        shares: list[dict[str, float]] = [{} for _ in workers]
        engines: list[EngineConfig | None] = [None] * n
        for g, table in zip(self.gpus, self.tables(), strict=True):
            w = g.index % n
            for key, share in table.items():
                shares[w][key] = shares[w].get(key, 0.0) + share
            engine = engines[w]
            if engine is None or g.engine.max_loras > engine.max_loras:
                engines[w] = g.engine
        fallback = self.gpus[0].engine if self.gpus else EngineConfig()
        final = tuple(with_cpu_room(engine or fallback,
                                    sum(1 for k in s if k != BASE_MODEL), cpu_lora_room)
                      for s, engine in zip(shares, engines, strict=True))
        placement = Placement(tuple(WorkerPlacement(name=name, shares=s)
                                    for name, s in zip(workers, shares, strict=True)))
        return Assignment(placement=placement, engines=final, planned_gpus=self.num_gpus)


def merged(items: Sequence[AdapterDemand]) -> list[AdapterDemand]:
    """Replicas of one adapter that land on the same GPU are one adapter there, with their
    rates summed: check what will be deployed."""
    rates: dict[str, float] = {}
    first: dict[str, AdapterDemand] = {}
    for a in items:
        rates[a.name] = rates.get(a.name, 0.0) + a.rate
        first.setdefault(a.name, a)
    return [first[name] if first[name].rate == rate else replace(first[name], rate=rate)
            for name, rate in rates.items()]
