"""The placer's feasibility check: one worker's engine options, and whether the surrogate
predicts it serves its adapters without starving (``Predictor``), under the engine-time
ceiling (``planner.engine_time``). Pure: adapters, specs and a surrogate in, a ``Verdict``
out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from planner.demand import AdapterDemand
from planner.engine_time import CEILING, engine_load
from planner.features import worker_features
from planner.surrogate import Surrogate
from twin.errors import InsufficientMemoryError
from twin.memory import plan_memory
from twin.profile import CalibrationProfile
from twin.specs import ALLOWED_LORA_RANKS, EngineConfig, GpuSpec, ModelSpec
from twin.step_time import StepTimeModel

__all__ = ["SLOT_CANDIDATES", "PlannerConfig", "Predictor", "Verdict"]

SLOT_CANDIDATES = (1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 256, 320, 384, 512)

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
    # The improvement search's budget after the greedy fill (planner.improve; it stops
    # sooner when a pass empties no GPU).
    search_seconds: float = 1.0
    # GPUs of each worker (vLLM's --tensor-parallel-size): every worker the placer makes
    # runs on this many (``Plan.num_gpus`` counts them).
    tensor_parallel_size: int = 1

    def engine(self, max_loras: int, max_lora_rank: int = 8, loras: int = 1) -> EngineConfig:
        """A worker's engine options: these, ``max_loras`` GPU slots at ``max_lora_rank``
        and a CPU tier for ``loras`` adapters (at least the slots)."""
        return EngineConfig(max_num_seqs=self.max_num_seqs,
                            max_num_batched_tokens=self.max_num_batched_tokens,
                            max_loras=max_loras, max_cpu_loras=max(max_loras, loras),
                            max_lora_rank=max_lora_rank, max_model_len=self.max_model_len,
                            gpu_memory_utilization=self.gpu_memory_utilization,
                            tensor_parallel_size=self.tensor_parallel_size)

    def __post_init__(self) -> None:
        if (isinstance(self.tensor_parallel_size, bool)
                or not isinstance(self.tensor_parallel_size, int)
                or not 1 <= self.tensor_parallel_size <= 64):
            raise ValueError(f"tensor_parallel_size: must be an integer in [1, 64], "
                             f"got {self.tensor_parallel_size!r}")
        if not (self.search_seconds >= 0 and math.isfinite(self.search_seconds)):
            raise ValueError(f"search_seconds: must be a finite number >= 0, "
                             f"got {self.search_seconds!r}")
        if not (self.capacity_scale > 0 and math.isfinite(self.capacity_scale)):
            raise ValueError(f"capacity_scale: must be a finite number > 0, "
                             f"got {self.capacity_scale!r}")


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
        self._engines: dict[EngineConfig, tuple[StepTimeModel, int]] = {}

    @property
    def rate_scale(self) -> float:
        """What rates are multiplied by before a check: ``1 / headroom`` (the margin for what
        the surrogate gets wrong) over ``capacity_scale`` (the workers' learned speed)."""
        return 1.0 / (self.config.headroom * self.config.capacity_scale)

    def engine_model(self, engine: EngineConfig) -> tuple[StepTimeModel, int]:
        """``engine``'s step-time model and KV cache tokens (``InsufficientMemoryError`` if
        vLLM would not start with it), computed once per engine."""
        hit = self._engines.get(engine)
        if hit is None:
            hit = (self.profile.step_model(self.model, self.gpu, engine),
                   plan_memory(self.model, self.gpu, engine,
                               self.profile.memory).kv_cache_tokens)
            self._engines[engine] = hit
        return hit

    def with_config(self, config: PlannerConfig) -> Predictor:
        """A ``Predictor`` on the same surrogate and specs with ``config`` (a stricter
        margin: another ``headroom`` or ``starvation_threshold``)."""
        return Predictor(self.surrogate, self.model, self.gpu, self.profile, config)

    def engine_for(self, adapters: Sequence[AdapterDemand], max_loras: int) -> EngineConfig:
        ranks = [a.rank for a in adapters if not a.is_base]
        top = max(ranks, default=8)
        rank = next(r for r in ALLOWED_LORA_RANKS if r >= top)
        return self.config.engine(max_loras, rank, max(1, len(ranks)))

    def check(self, adapters: Sequence[AdapterDemand], engine: EngineConfig) -> Verdict:
        """Feasible if vLLM starts and the worker is predicted not to starve at the offered
        load divided by ``headroom`` (the margin for what the surrogate gets wrong)."""
        self.calls += 1
        scale = self.rate_scale
        scaled = [_with_rate(a, a.rate * scale) for a in adapters]
        try:
            step, kv = self.engine_model(engine)
            x = worker_features(scaled, engine, self.model, self.gpu, step,
                                self.profile.memory)
        except InsufficientMemoryError:
            return Verdict(False, None, 0.0, 0.0, 1.0)
        proba = self.surrogate.starvation.predict_proba_one(x)
        # The classifier and the engine-time ceiling (planner.engine_time: what makes
        # planner.bound a bound), then the paper's starvation test on the predicted
        # throughput; a worker they refuse gets the analytic throughput, the learned model
        # (the slowest of the three) asked only when the verdict depends on it.
        if (proba >= self.config.starvation_threshold
                or engine_load(scaled, engine, step, kv) > CEILING):
            ok, tps = False, min(1.0, 1.0 / max(x["load_ratio"], 1e-9)) * x["offered_tps"]
        else:
            tps = self.surrogate.throughput.predict_one(x)
            ok = tps >= 0.9 * x["offered_tps"]
        offered = x["offered_tps"] / scale
        # What the surrogate predicts the worker serves of its real (unscaled) load, in real
        # seconds (its prediction is in the profile's time).
        return Verdict(ok, engine, min(tps * self.config.capacity_scale, offered), offered,
                       proba)

    def best(self, adapters: Sequence[AdapterDemand]) -> Verdict:
        """The feasible ``max_loras`` with the highest predicted throughput (or infeasible)."""
        loras = max(1, sum(1 for a in adapters if not a.is_base))
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
        return self.alone_capacity_bracket(adapter)[0]

    def alone_capacity_bracket(self, adapter: AdapterDemand,
                               steps: int = 12) -> tuple[float, float]:
        """The highest rate of ``adapter`` alone one GPU is found to serve, and a higher
        one it does not (``steps`` halvings of the bracket found by doubling)."""
        lo, hi = 0.0, max(adapter.rate, 1.0)
        while self.best([_with_rate(adapter, hi)]).feasible and hi < 1e6:
            lo, hi = hi, hi * 2
        for _ in range(steps):
            mid = (lo + hi) / 2
            if self.best([_with_rate(adapter, mid)]).feasible:
                lo = mid
            else:
                hi = mid
        return lo, hi

def _with_rate(a: AdapterDemand, rate: float) -> AdapterDemand:
    return replace(a, rate=rate)
