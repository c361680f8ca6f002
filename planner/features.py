"""The feature schema, frozen: one definition shared by the dataset, the surrogate, the placer
and the gateway's observer.

Every feature describes one worker (GPU) over a window and is computable from live traffic:
request rates per adapter and token counts from responses' ``usage``, the adapters' ranks from
their ``adapter_config.json``, the engine options from the worker's start-up flags. Rates are
requests per second over the window (the gateway uses 60 s), lengths are tokens per request.

The paper's features (PAPER.md) come first; lorafleet adds length statistics, the configured
``max_lora_rank``, burstiness, base-model load, KV capacity, and an analytic capacity estimate
from the worker's step-time model (``est_capacity_tps``) with the offered load over it
(``load_ratio``): the learned models correct that estimate instead of rediscovering physics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from planner.demand import AdapterDemand
from twin.memory import MemoryOverheads, plan_memory
from twin.specs import EngineConfig, GpuSpec, ModelSpec
from twin.step_time import StepTimeModel

__all__ = [
    "FEATURES",
    "capacity_estimate",
    "expected_distinct",
    "worker_features",
]

FEATURES: tuple[str, ...] = (
    # The paper's (per instance).
    "sum_rate", "std_rate", "max_size", "mean_size", "std_size", "served_adapters",
    "adapter_slots",
    # lorafleet's.
    "max_lora_rank", "mean_input", "mean_output", "std_input", "std_output", "burstiness",
    "base_rate", "offered_tps", "kv_tokens", "active_ratio", "expected_active",
    "lora_pressure", "slot_coverage", "est_capacity_tps", "load_ratio",
)


def _weighted(values: Sequence[float], weights: Sequence[float]) -> tuple[float, float]:
    total = sum(weights)
    if total <= 0:
        mean = sum(values) / len(values) if values else 0.0
        return mean, 0.0
    mean = sum(v * w for v, w in zip(values, weights, strict=True)) / total
    var = sum(w * (v - mean) ** 2 for v, w in zip(values, weights, strict=True)) / total
    return mean, math.sqrt(var)


def _mixture(parts: Sequence[tuple[float, float]], weights: Sequence[float],
             ) -> tuple[float, float]:
    """Mean and std of a length drawn from the adapters' (mean, std) pairs by rate: the
    within-adapter spread plus the spread of the adapters' means."""
    mean, between = _weighted([m for m, _ in parts], weights)
    total = sum(weights)
    if total <= 0:
        within = sum(sd**2 for _, sd in parts) / len(parts) if parts else 0.0
    else:
        within = sum(w * sd**2 for (_, sd), w in zip(parts, weights, strict=True)) / total
    return mean, math.sqrt(between**2 + within)


def _std(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def _batch(engine: EngineConfig, kv_tokens: int, mean_input: float, mean_output: float) -> float:
    """Requests decoding together at saturation: ``max_num_seqs`` or what the KV cache holds."""
    return max(1.0, min(float(engine.max_num_seqs), kv_tokens / (mean_input + mean_output)))


def expected_distinct(weights: Sequence[float], batch: float) -> float:
    """Expected distinct adapters among ``batch`` requests drawn by rate ``weights``:
    ``sum_i 1 - (1 - w_i)^batch``. Above ``max_loras`` the LoRA rule defers requests and the
    slots thrash."""
    total = sum(weights)
    if total <= 0:
        return 0.0
    return sum(1.0 - float((1.0 - w / total) ** batch) for w in weights)


def slot_coverage(weights: Sequence[float], slots: int) -> float:
    """Expected share of the load whose adapter is among ``slots`` adapters drawn by rate:
    ``sum_i w_i (1 - (1 - w_i)^slots)``, 1 when every adapter fits in the slots. When the
    slots thrash, only that share of the queued requests can join a batch."""
    total = sum(weights)
    if total <= 0 or len(weights) <= slots:
        return 1.0
    return sum((w / total) * (1.0 - float((1.0 - w / total) ** slots)) for w in weights)


def capacity_estimate(step: StepTimeModel, engine: EngineConfig, kv_tokens: int,
                      mean_input: float, mean_output: float, active_adapters: float,
                      coverage: float = 1.0) -> float:
    """Tokens/s (prompt and output) one worker sustains, from its step-time model alone;
    ``active_adapters`` the distinct adapters expected in a full batch
    (``expected_distinct``).

    The steady state of vLLM's V1 scheduler at saturation (``vllm/v1/core/sched/scheduler.py``:
    running requests first, one decode token each, then prompt chunks up to the step's token
    budget, ``max_num_batched_tokens``): requests leave prefill at ``P / in`` a step and
    decode for ``out`` steps, so ``D = P * out / in`` decode in every step. Either the budget
    binds (``P + D = max_num_batched_tokens``: prompt-heavy work, where the steps are mixed
    and full) or the batch does (``D`` = ``max_num_seqs``, or what the KV cache holds; times
    the share of the queue whose adapter holds a slot, ``coverage``). One step of ``P``
    prompt and ``D`` decode tokens then serves ``P + D`` tokens.

    The form it replaced (``planner.dataset.drawn_capacity``, still what the sampler draws
    loads by) charged ``out * t_decode(B) / B + in * c_prefill`` a request: a decode batch
    always full and prefill at its marginal cost. That misses the per-step cost of
    prompt-heavy work, whose decode batch the budget keeps small: on held-out saturated twin
    workers of H100 + Qwen2.5-7B and L40S + Llama-3.2-1B it was 8-15% high on a quarter of
    them (log-residual MAD 0.048-0.055); this form's MAD there is 0.006-0.012, 0.005 on the
    shipped target (bench/surrogate_transfer.py's tables).
    """
    batch = max(1.0, _batch(engine, kv_tokens, mean_input, mean_output) * coverage)
    budget = float(engine.max_num_batched_tokens)
    decode = min(batch, budget * mean_output / (mean_input + mean_output))
    prefill = decode * mean_input / mean_output
    distinct = (float(min(active_adapters, engine.max_loras,
                          decode + max(1.0, prefill / mean_input)))
                if engine.enable_lora else 0.0)
    context = decode * (mean_input + mean_output / 2) + prefill / 2
    return float((prefill + decode) / step.predict(prefill, decode, context, distinct))


def worker_features(adapters: Sequence[AdapterDemand], engine: EngineConfig,
                    model: ModelSpec, gpu: GpuSpec, step: StepTimeModel,
                    memory: MemoryOverheads | None = None) -> dict[str, float]:
    """The feature vector of one worker serving ``adapters`` with ``engine``.

    Raises ``InsufficientMemoryError`` if vLLM would not start with ``engine``.
    """
    loras = [a for a in adapters if not a.is_base]
    rates = [a.rate for a in adapters]
    ranks = [float(a.rank) for a in loras]
    weights = [a.rate for a in adapters]
    mean_in, std_in = _mixture([(a.input_tokens, a.input_std) for a in adapters], weights)
    mean_out, std_out = _mixture([(a.output_tokens, a.output_std) for a in adapters], weights)
    burst, _ = _weighted([a.cv for a in adapters], weights)
    sum_rate = sum(rates)
    kv = plan_memory(model, gpu, engine, memory).kv_cache_tokens
    served = len(loras)
    lora_rates = [a.rate for a in loras]
    active = expected_distinct(lora_rates,
                               _batch(engine, kv, max(mean_in, 1.0), max(mean_out, 1.0)))
    coverage = 1.0
    if engine.enable_lora and active > engine.max_loras:
        base = sum(a.rate for a in adapters if a.is_base)
        lora_share = sum(lora_rates) / max(sum_rate, 1e-12)
        coverage = base / max(sum_rate, 1e-12) + lora_share * slot_coverage(
            lora_rates, engine.max_loras)
    capacity = capacity_estimate(step, engine, kv, max(mean_in, 1.0), max(mean_out, 1.0),
                                 active, coverage)
    offered = sum(a.rate * (a.input_tokens + a.output_tokens) for a in adapters)
    return {
        "sum_rate": sum_rate,
        "std_rate": _std(rates),
        "max_size": max(ranks, default=0.0),
        "mean_size": sum(ranks) / len(ranks) if ranks else 0.0,
        "std_size": _std(ranks),
        "served_adapters": float(served),
        "adapter_slots": float(engine.max_loras),
        "max_lora_rank": float(engine.max_lora_rank),
        "mean_input": mean_in,
        "mean_output": mean_out,
        "std_input": std_in,
        "std_output": std_out,
        "burstiness": burst or 1.0,
        "base_rate": sum(a.rate for a in adapters if a.is_base),
        "offered_tps": offered,
        "kv_tokens": float(kv),
        "active_ratio": served / engine.max_loras,
        "expected_active": active,
        "lora_pressure": active / engine.max_loras,
        "slot_coverage": coverage,
        "est_capacity_tps": capacity,
        "load_ratio": offered / capacity,
    }
