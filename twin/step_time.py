"""Step-time models: how long one engine step takes for a given batch.

A step is described by ``prefill_tokens`` (tokens of prompts/recomputes in the step),
``decode_seqs`` (requests computing one token), ``context_tokens`` (KV tokens the step attends
over: for each scheduled request, its computed plus new tokens) and ``distinct_adapters``. The
worker's ``max_loras`` and ``max_lora_rank`` are bound at construction: vLLM's LoRA kernels run
over every slot padded to the maximum rank, so many slots slow every step, even steps without
adapters (the reference measured decode steps at batch 220 running 2x slower with 300 slots
and one adapter in use).

Every model evaluates the same arithmetic on Python floats and on numpy arrays, so the
engine's vectorised decode runs give bit-identical step times to stepping one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

import numpy as np

from twin.specs import EngineConfig, GpuSpec, ModelSpec

__all__ = [
    "LinearCoefficients",
    "LinearStepTime",
    "LoRACoefficients",
    "RooflineCoefficients",
    "RooflineStepTime",
    "StepTimeModel",
]

Num = TypeVar("Num", float, np.ndarray)


@runtime_checkable
class StepTimeModel(Protocol):
    """Step time in seconds; arguments are all floats or all equally long numpy arrays."""

    def predict(self, prefill_tokens: Num, decode_seqs: Num, context_tokens: Num,
                distinct_adapters: Num) -> Num: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class LoRACoefficients:
    """LoRA cost per step: ``slots * (per_slot_s + per_slot_token_s * tokens) * rank_factor
    + per_adapter_s * distinct_adapters``, ``rank_factor = 1 + rank_slope * (r / 8 - 1)``."""

    per_slot_s: float = 0.0
    per_slot_token_s: float = 0.0
    rank_slope: float = 0.0
    per_adapter_s: float = 0.0

    def slot_factor(self, engine: EngineConfig) -> tuple[float, float]:
        """(constant, per-token) seconds of the slot overhead for this engine."""
        if not engine.enable_lora:
            return 0.0, 0.0
        rank = 1.0 + self.rank_slope * (engine.max_lora_rank / 8.0 - 1.0)
        slots = engine.max_loras * rank
        return slots * self.per_slot_s, slots * self.per_slot_token_s


@dataclass(frozen=True, slots=True, kw_only=True)
class LinearCoefficients:
    """``t = base_s + per_token_s*tokens + per_seq_s*decode_seqs + per_context_token_s*ctx``."""

    base_s: float
    per_token_s: float
    per_seq_s: float = 0.0
    per_context_token_s: float = 0.0
    lora: LoRACoefficients = LoRACoefficients()


class LinearStepTime:
    """A step-time model linear in the batch features (fitted from measured steps).

    Examples
    --------
    >>> m = LinearStepTime(LinearCoefficients(base_s=0.01, per_token_s=1e-5), EngineConfig())
    >>> round(m.predict(100.0, 10.0, 2000.0, 1.0), 6)
    0.0111
    """

    def __init__(self, coefficients: LinearCoefficients, engine: EngineConfig) -> None:
        self.coefficients = coefficients
        self.engine = engine
        c = coefficients
        slot_s, slot_tok_s = c.lora.slot_factor(engine)
        self._base = c.base_s + slot_s
        self._per_token = c.per_token_s + slot_tok_s
        self._per_seq = c.per_seq_s
        self._per_ctx = c.per_context_token_s
        self._per_adapter = c.lora.per_adapter_s if engine.enable_lora else 0.0

    def predict(self, prefill_tokens: Num, decode_seqs: Num, context_tokens: Num,
                distinct_adapters: Num) -> Num:
        tokens = prefill_tokens + decode_seqs
        t = (self._base + self._per_token * tokens + self._per_seq * decode_seqs
             + self._per_ctx * context_tokens + self._per_adapter * distinct_adapters)
        return t  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True, kw_only=True)
class RooflineCoefficients:
    """Efficiency factors of the roofline model (fractions of datasheet peak)."""

    compute_efficiency: float = 0.6
    bandwidth_efficiency: float = 0.8
    overlap: float = 0.3  # share of the shorter of compute/memory time not hidden by the other
    base_s: float = 0.002  # per-step CPU time: scheduling, input prep, sampling, launch
    lora: LoRACoefficients = LoRACoefficients()


class RooflineStepTime:
    """Step time from the model's FLOPs and bytes and the GPU's peak rates.

    ``t = base + max(C, M) + overlap * min(C, M)`` with ``C`` the matmul FLOPs of all tokens
    over effective compute and ``M`` the weights, the attended KV and the adapters' LoRA
    weights over effective bandwidth, plus the LoRA slot and adapter costs.
    """

    def __init__(self, model: ModelSpec, gpu: GpuSpec, engine: EngineConfig,
                 coefficients: RooflineCoefficients) -> None:
        self.model = model
        self.gpu = gpu
        self.engine = engine
        self.coefficients = coefficients
        c = coefficients
        flops = gpu.peak_tflops * 1e12 * c.compute_efficiency
        bandwidth = gpu.bandwidth_gbps * 1e9 * c.bandwidth_efficiency
        self._s_per_token = model.matmul_flops_per_token() / flops
        self._weights_s = model.weight_bytes / bandwidth
        self._s_per_ctx = model.kv_bytes_per_token / bandwidth
        slot_s, slot_tok_s = c.lora.slot_factor(engine)
        self._base = c.base_s + slot_s
        self._slot_tok = slot_tok_s
        adapter_bytes = model.lora_slot_bytes(engine.max_lora_rank) if engine.enable_lora else 0
        self._per_adapter = ((c.lora.per_adapter_s + adapter_bytes / bandwidth)
                             if engine.enable_lora else 0.0)
        self._overlap = c.overlap

    def predict(self, prefill_tokens: Num, decode_seqs: Num, context_tokens: Num,
                distinct_adapters: Num) -> Num:
        tokens = prefill_tokens + decode_seqs
        compute = self._s_per_token * tokens
        memory = self._weights_s + self._s_per_ctx * context_tokens
        vector = isinstance(compute, np.ndarray)
        hi = np.maximum(compute, memory) if vector else max(compute, memory)
        lo = (compute + memory) - hi
        return (self._base + hi + self._overlap * lo  # type: ignore[no-any-return]
                + self._slot_tok * tokens + self._per_adapter * distinct_adapters)
