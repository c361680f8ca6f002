"""A placement: the GPUs of a plan, each with its engine and the rate of each adapter it
serves, and the adapters' shares the gateway routes by."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from planner.features import AdapterDemand
from twin.specs import EngineConfig

if TYPE_CHECKING:
    from planner.predictor import Verdict

__all__ = ["GpuPlan", "Plan", "merged"]


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
    def num_gpus(self) -> int:
        return len(self.gpus)

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
