"""The greedy min-GPU placer (the paper's, PAPER.md), extended with replicas of hot adapters.

1. An adapter whose load exceeds what one GPU serves of it alone is split into replicas, its
   rate shared among them (the gateway routes by those shares).
2. Adapters are grouped by rank, highest first; inside a group ordered zig-zag by rate
   (largest, smallest, next largest, ...).
3. GPUs are filled one at a time. At test points (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, ...
   adapters, and the last one) the candidate set is checked: some ``max_loras`` setting must
   fit in memory (vLLM's start-up arithmetic, exact) and be predicted not to starve by the
   surrogate; the best such setting by predicted throughput is kept. When a test point fails,
   a bisection back to the last good one finds the largest feasible prefix; the rest goes back
   to the queue and the next GPU is opened.

Pure: adapters, specs and a surrogate in, a ``Plan`` out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from planner.features import AdapterDemand, worker_features
from planner.surrogate import Surrogate
from twin.errors import InsufficientMemoryError
from twin.profile import CalibrationProfile
from twin.specs import ALLOWED_LORA_RANKS, EngineConfig, GpuSpec, ModelSpec

__all__ = [
    "GpuPlan",
    "Objective",
    "Plan",
    "PlannerConfig",
    "Predictor",
    "Verdict",
    "merged",
    "place",
    "place_with",
    "replicate",
]

SLOT_CANDIDATES = (1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 256, 320, 384, 512)
TEST_POINTS = (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512, 768, 1024)


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannerConfig:
    """Engine options the placer does not choose, and its safety margins."""

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_model_len: int = 8192
    gpu_memory_utilization: float = 0.92
    headroom: float = 0.9  # keep predicted throughput >= offered / headroom
    starvation_threshold: float = 0.5
    # Share of the profile's capacity the workers deliver (planner.online_latency): a worker
    # whose steps take 1/s times the profile's is the profile's worker under 1/s times the
    # load (time runs 1/s times slower), so rates are divided by s before the surrogate.
    capacity_scale: float = 1.0

    def __post_init__(self) -> None:
        if not (self.capacity_scale > 0 and math.isfinite(self.capacity_scale)):
            raise ValueError(f"capacity_scale: must be a finite number > 0, "
                             f"got {self.capacity_scale!r}")


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


@dataclass(frozen=True, slots=True)
class Verdict:
    feasible: bool
    engine: EngineConfig | None
    predicted_tps: float
    offered_tps: float
    proba: float


class Predictor:
    """The surrogate bound to one model, GPU and profile: is this worker feasible?"""

    def __init__(self, surrogate: Surrogate, model: ModelSpec, gpu: GpuSpec,
                 profile: CalibrationProfile, config: PlannerConfig, *,
                 capacity_scale: float | None = None) -> None:
        self.surrogate = surrogate
        self.model = model
        self.gpu = gpu
        self.profile = profile
        # ``capacity_scale`` given here replaces the config's (one source of truth: config).
        self.config = (config if capacity_scale is None
                       else replace(config, capacity_scale=capacity_scale))
        self.calls = 0

    def with_config(self, config: PlannerConfig) -> Predictor:
        """A ``Predictor`` on the same surrogate and specs with ``config`` (a stricter
        margin: another ``headroom`` or ``starvation_threshold``)."""
        return Predictor(self.surrogate, self.model, self.gpu, self.profile, config)

    def engine_for(self, adapters: Sequence[AdapterDemand], max_loras: int) -> EngineConfig:
        ranks = [a.rank for a in adapters if a.rank > 0]
        top = max(ranks, default=8)
        rank = next(r for r in ALLOWED_LORA_RANKS if r >= top)
        lora_count = max(1, len(ranks))
        c = self.config
        return EngineConfig(max_num_seqs=c.max_num_seqs,
                            max_num_batched_tokens=c.max_num_batched_tokens,
                            max_loras=max_loras, max_cpu_loras=max(max_loras, lora_count),
                            max_lora_rank=rank, max_model_len=c.max_model_len,
                            gpu_memory_utilization=c.gpu_memory_utilization)

    def check(self, adapters: Sequence[AdapterDemand], engine: EngineConfig) -> Verdict:
        """Feasible if vLLM starts and the worker is predicted not to starve at the offered
        load divided by ``headroom`` (the margin for what the surrogate gets wrong)."""
        self.calls += 1
        step = self.profile.step_model(self.model, self.gpu, engine)
        scale = 1.0 / (self.config.headroom * self.config.capacity_scale)
        try:
            x = worker_features([_with_rate(a, a.rate * scale) for a in adapters], engine,
                                self.model, self.gpu, step, self.profile.memory)
        except InsufficientMemoryError:
            return Verdict(False, None, 0.0, 0.0, 1.0)
        proba = self.surrogate.starvation.predict_proba_one(x)
        tps = self.surrogate.throughput.predict_one(x)
        # The paper's starvation test on the predicted throughput, plus the classifier.
        ok = proba < self.config.starvation_threshold and tps >= 0.9 * x["offered_tps"]
        offered = x["offered_tps"] / scale
        # What the surrogate predicts the worker serves of its real (unscaled) load, in real
        # seconds (its prediction is in the profile's time).
        return Verdict(ok, engine, min(tps * self.config.capacity_scale, offered), offered,
                       proba)

    def best(self, adapters: Sequence[AdapterDemand]) -> Verdict:
        """The feasible ``max_loras`` with the highest predicted throughput (or infeasible)."""
        loras = max(1, sum(1 for a in adapters if a.rank > 0))
        # A slot for every LoRA on the GPU when memory allows: with fewer slots than LoRAs,
        # vLLM's skip rule defers a rare adapter for as long as busier ones hold every slot,
        # which under steady load is forever (the twin shows it; the paper's global 90% test
        # cannot). Fewer slots only when memory forbids enough, the largest that fits first.
        enough = next((s for s in SLOT_CANDIDATES if s >= loras), SLOT_CANDIDATES[-1])
        for slots in [enough, *(s for s in reversed(SLOT_CANDIDATES) if s < enough)]:
            v = self.check(adapters, self.engine_for(adapters, slots))
            if v.engine is None:  # memory: try fewer slots
                continue
            return v if v.feasible else Verdict(False, v.engine, v.predicted_tps,
                                                 v.offered_tps, v.proba)
        return Verdict(False, None, 0.0, 0.0, 1.0)

    def alone_capacity(self, adapter: AdapterDemand) -> float:
        """Requests/s one GPU serves of ``adapter`` alone (bisection on its rate)."""
        lo, hi = 0.0, max(adapter.rate, 1.0)
        while self.best([_with_rate(adapter, hi)]).feasible and hi < 1e6:
            lo, hi = hi, hi * 2
        for _ in range(12):
            mid = (lo + hi) / 2
            if self.best([_with_rate(adapter, mid)]).feasible:
                lo = mid
            else:
                hi = mid
        return lo


def _with_rate(a: AdapterDemand, rate: float) -> AdapterDemand:
    return replace(a, rate=rate)


def _zigzag(items: list[AdapterDemand]) -> list[AdapterDemand]:
    ordered = sorted(items, key=lambda a: (-a.rate, a.name))
    out: list[AdapterDemand] = []
    lo, hi = 0, len(ordered) - 1
    while lo <= hi:
        out.append(ordered[lo])
        if lo != hi:
            out.append(ordered[hi])
        lo, hi = lo + 1, hi - 1
    return out


MAX_REPLICAS = 1024  # GPUs one adapter may be split over


def replicate(adapters: Sequence[AdapterDemand], predictor: Predictor) -> list[AdapterDemand]:
    """Split adapters that one GPU cannot carry into equal-rate replicas."""
    out = []
    for a in adapters:
        if a.rate <= 0 or predictor.best([a]).feasible:  # fits one GPU: no bisection needed
            out.append(a)
            continue
        cap = predictor.alone_capacity(a)
        # At most MAX_REPLICAS: past that the load is beyond any fleet, and the plan says so
        # (its replicas overloaded) instead of placing without end.
        parts = min(MAX_REPLICAS, math.ceil(a.rate / cap)) if cap > 0 else 1
        out.extend([_with_rate(a, a.rate / parts)] * parts)
    return out


class Objective(Protocol):
    """What a plan optimises, beside never starving (``planner.objective.MinLatency``);
    ``place`` without one packs onto the fewest GPUs (``min-gpus``)."""

    def place(self, adapters: Sequence[AdapterDemand], predictor: Predictor) -> Plan: ...


def place(adapters: Sequence[AdapterDemand], model: ModelSpec, gpu: GpuSpec,
          profile: CalibrationProfile, surrogate: Surrogate,
          config: PlannerConfig | None = None, *, objective: Objective | None = None) -> Plan:
    """Pack ``adapters`` onto the fewest GPUs the surrogate predicts will not starve (or as
    ``objective`` says)."""
    names = [a.name for a in adapters]
    if len(set(names)) != len(names):
        raise ValueError("adapters: names must be unique")
    predictor = Predictor(surrogate, model, gpu, profile, config or PlannerConfig())
    return (place_with(adapters, predictor) if objective is None
            else objective.place(adapters, predictor))


def place_with(adapters: Sequence[AdapterDemand], predictor: Predictor) -> Plan:
    """``place`` with a predictor already bound to the model, GPU, profile and config."""
    items = replicate(adapters, predictor)
    groups: dict[int, list[AdapterDemand]] = {}
    for a in items:
        groups.setdefault(a.rank, []).append(a)
    queue = [a for rank in sorted(groups, reverse=True) for a in _zigzag(groups[rank])]
    gpus: list[GpuPlan] = []
    while queue:
        take, verdict = _fill(queue, predictor)
        assert verdict.engine is not None
        rates: dict[str, float] = {}
        for a in queue[:take]:
            rates[a.name] = rates.get(a.name, 0.0) + a.rate
        gpus.append(GpuPlan.judged(len(gpus), verdict.engine, rates, verdict))
        queue = queue[take:]
    by_name = {a.name: a for a in adapters}
    return Plan(gpus=_consolidate(gpus, by_name, predictor), adapters=list(adapters))


def _consolidate(gpus: list[GpuPlan], by_name: dict[str, AdapterDemand],
                 predictor: Predictor) -> list[GpuPlan]:
    """Empty the least loaded GPU into the others while they stay feasible (the prefix fill
    cannot skip an adapter that does not fit to take a later one that would, so its last GPU
    of a rank group is often nearly empty). Each of its adapters goes to the fullest GPU that
    stays feasible with it (best fit, engine re-chosen); the GPU is dropped only if all move."""
    gpus = list(gpus)
    while len(gpus) > 1:
        victim = min(gpus, key=lambda g: (g.offered_tps, -g.index))
        others = {g.index: g for g in gpus if g is not victim}
        for name, rate in sorted(victim.rates.items(), key=lambda kv: (-kv[1], kv[0])):
            for g in sorted(others.values(), key=lambda g: (-g.offered_tps, g.index)):
                members = [_with_rate(by_name[n], r) for n, r in g.rates.items()]
                v = predictor.best(merged([*members, _with_rate(by_name[name], rate)]))
                if v.feasible and v.engine is not None:
                    rates = dict(g.rates)
                    rates[name] = rates.get(name, 0.0) + rate
                    others[g.index] = GpuPlan.judged(g.index, v.engine, rates, v)
                    break
            else:
                return gpus  # this adapter fits nowhere else: keep the GPU
        gpus = [replace(g, index=i) for i, g in enumerate(
            sorted(others.values(), key=lambda g: g.index))]
    return gpus


def merged(items: Sequence[AdapterDemand]) -> list[AdapterDemand]:
    """Replicas of one adapter that land on the same GPU are one adapter there, with their
    rates summed: check what will be deployed."""
    rates: dict[str, float] = {}
    first: dict[str, AdapterDemand] = {}
    for a in items:
        rates[a.name] = rates.get(a.name, 0.0) + a.rate
        first.setdefault(a.name, a)
    return [first[name] if first[name].rate == rate else _with_rate(first[name], rate)
            for name, rate in rates.items()]


def _fill(queue: list[AdapterDemand], predictor: Predictor) -> tuple[int, Verdict]:
    """The longest feasible prefix of ``queue`` (at least one adapter) and its verdict."""

    def best(n: int) -> Verdict:
        return predictor.best(merged(queue[:n]))

    first = best(1)
    if not first.feasible:  # cannot happen after replication, except at memory limits
        engine = predictor.engine_for(queue[:1], 1)
        return 1, Verdict(True, engine, 0.0, 0.0, 1.0)
    good, good_verdict = 1, first
    points = [p for p in TEST_POINTS if 1 < p < len(queue)] + [len(queue)]
    for n in points:
        if n <= good:
            continue
        v = best(n)
        if v.feasible:
            good, good_verdict = n, v
            continue
        lo, hi = good, n  # feasible at lo, not at hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            vm = best(mid)
            if vm.feasible:
                lo, good_verdict = mid, vm
            else:
                hi = mid
        return lo, good_verdict
    return good, good_verdict
