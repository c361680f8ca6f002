"""Step-time models: how long one engine step takes for a given batch.

A step is described by ``prefill_tokens`` (tokens of prompts/recomputes in the step),
``decode_seqs`` (requests computing one token), ``context_tokens`` (KV tokens the step attends
over: for each scheduled request, its computed plus new tokens), ``distinct_adapters`` and
``lora_tokens`` (the step's tokens, prefill and decode, of requests that run an adapter). The
worker's ``max_loras`` and ``max_lora_rank`` are bound at construction: vLLM's LoRA kernels run
over every slot padded to the maximum rank, so many slots slow every step, even steps without
adapters (the reference measured decode steps at batch 220 running 2x slower with 300 slots
and one adapter in use). An engine started with LoRA also pays a constant every step
(``enabled_step_s``; vLLM runs its LoRA kernels in every step of such an engine). On the
reference's H100 it is what a batch-1 base-model step on a LoRA server costs beyond the
no-LoRA sweep's line and the slots; no batch-1 step without LoRA was measured, so it also
holds that line's error at batch 1.

Each distinct adapter in a step costs ``per_adapter_s``, and the cost of one more grows with
how many are already there: ``per_adapter_sq_s * distinct_adapters**2`` (the reference's decode
steps at batch 220 with 1 to 156 adapters in use cost about 0.31 ms per adapter at first and
0.36 ms near the end). Both default to 0, which is the linear model of profiles without them.

LoRA tokens cost on their own: on vLLM's CPU build a LoRA token costs several times a base
one. Its CPU kernels (``lora/ops/torch_ops``, used for prefill and decode alike) gather an
adapter's weights for *every* token of a step that has any LoRA token, base tokens included,
and skip LoRA only for a step with none; GPU kernels skip base tokens. ``LoRACoefficients``
has a term for each: ``per_lora_token_s`` (tokens of LoRA requests) and
``per_active_token_s`` / ``per_active_step_s`` (every token, and a constant, of a step with
any LoRA token). Callers that do not count LoRA tokens (``lora_tokens=None``) get every token
of a step with adapters counted as a LoRA token.

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
    "lora_features",
]

Num = TypeVar("Num", float, np.ndarray)


@runtime_checkable
class StepTimeModel(Protocol):
    """Step time in seconds; arguments are all floats or all equally long numpy arrays."""

    def predict(self, prefill_tokens: Num, decode_seqs: Num, context_tokens: Num,
                distinct_adapters: Num, lora_tokens: Num | None = None) -> Num: ...


def lora_features(tokens: Num, distinct_adapters: Num, lora_tokens: Num | None
                  ) -> tuple[Num, Num]:
    """``(lora_tokens, active)``: the step's LoRA tokens (every token when not counted and
    any adapter is in the step) and 1.0 if there is any, else 0.0 (same arithmetic on
    floats and arrays).

    Examples
    --------
    >>> lora_features(10.0, 1.0, None), lora_features(10.0, 0.0, None)
    ((10.0, 1.0), (0.0, 0.0))
    >>> lora_features(10.0, 2.0, 3.0)
    (3.0, 1.0)
    """
    if isinstance(tokens, np.ndarray) or isinstance(lora_tokens, np.ndarray):
        if lora_tokens is None:
            lora_tokens = tokens * np.minimum(distinct_adapters, 1.0)
        return lora_tokens, np.minimum(lora_tokens, 1.0)
    if lora_tokens is None:
        lora_tokens = tokens * min(float(distinct_adapters), 1.0)
    return lora_tokens, min(float(lora_tokens), 1.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class LoRACoefficients:
    """LoRA cost per step: ``enabled_step_s + slots * (per_slot_s + per_slot_token_s * tokens)
    * rank_factor + per_adapter_s * distinct_adapters + per_adapter_sq_s *
    distinct_adapters**2 + (per_lora_token_s * lora_tokens + active * (per_active_step_s +
    per_active_token_s * tokens)) * rank_factor``, with ``active`` 1 for a step with any LoRA
    token and ``rank_factor = 1 + rank_slope * (r / 8 - 1)`` for the engine's
    ``max_lora_rank`` ``r`` (kernels pad every adapter to it); all 0 without LoRA."""

    per_slot_s: float = 0.0
    per_slot_token_s: float = 0.0
    rank_slope: float = 0.0
    per_adapter_s: float = 0.0
    per_lora_token_s: float = 0.0
    per_active_step_s: float = 0.0
    per_active_token_s: float = 0.0
    enabled_step_s: float = 0.0
    per_adapter_sq_s: float = 0.0

    def token_factors(self, engine: EngineConfig) -> tuple[float, float, float]:
        """(per LoRA token, per step with LoRA, per token of such a step) seconds for this
        engine; zeros without LoRA."""
        if not engine.enable_lora:
            return 0.0, 0.0, 0.0
        rank = 1.0 + self.rank_slope * (engine.max_lora_rank / 8.0 - 1.0)
        return (self.per_lora_token_s * rank, self.per_active_step_s * rank,
                self.per_active_token_s * rank)

    def slot_factor(self, engine: EngineConfig) -> tuple[float, float]:
        """(constant, per-token) seconds of the slot overhead for this engine (the constant
        holds ``enabled_step_s``)."""
        if not engine.enable_lora:
            return 0.0, 0.0
        rank = 1.0 + self.rank_slope * (engine.max_lora_rank / 8.0 - 1.0)
        slots = engine.max_loras * rank
        return self.enabled_step_s + slots * self.per_slot_s, slots * self.per_slot_token_s

    def adapter_factors(self, engine: EngineConfig) -> tuple[float, float]:
        """(per distinct adapter, per squared distinct adapter) seconds; zeros without LoRA."""
        if not engine.enable_lora:
            return 0.0, 0.0
        return self.per_adapter_s, self.per_adapter_sq_s


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
    >>> lora = LoRACoefficients(per_lora_token_s=3e-5)
    >>> m = LinearStepTime(LinearCoefficients(base_s=0.01, per_token_s=1e-5, lora=lora),
    ...                    EngineConfig())
    >>> round(m.predict(100.0, 10.0, 2000.0, 1.0, 10.0), 6)  # 10 of the 110 tokens are LoRA
    0.0114
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
        self._per_adapter, self._per_adapter_sq = c.lora.adapter_factors(engine)
        self._lora_tok, self._active, self._active_tok = c.lora.token_factors(engine)

    def predict(self, prefill_tokens: Num, decode_seqs: Num, context_tokens: Num,
                distinct_adapters: Num, lora_tokens: Num | None = None) -> Num:
        tokens = prefill_tokens + decode_seqs
        lora, active = lora_features(tokens, distinct_adapters, lora_tokens)
        t = (self._base + self._per_token * tokens + self._per_seq * decode_seqs
             + self._per_ctx * context_tokens + self._per_adapter * distinct_adapters
             + self._lora_tok * lora + active * (self._active + self._active_tok * tokens))
        if self._per_adapter_sq:  # profiles without the term skip its arithmetic
            t = t + self._per_adapter_sq * distinct_adapters * distinct_adapters
        return t  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True, kw_only=True)
class RooflineCoefficients:
    """Efficiency factors of the roofline model (fractions of datasheet peak)."""

    compute_efficiency: float = 0.6
    bandwidth_efficiency: float = 0.8
    overlap: float = 0.3  # share of the shorter of compute/memory time not hidden by the other
    base_s: float = 0.002  # per-step CPU time: scheduling, input prep, sampling, launch
    lora: LoRACoefficients = LoRACoefficients()
    # Tensor parallelism's all-reduces (not fitted: no profile has TP steps yet): a fixed cost
    # per all-reduce (NCCL's small-message latency on NVLink is several microseconds) and
    # the share of the interconnect's one-direction bandwidth a ring all-reduce reaches.
    allreduce_latency_s: float = 8e-6
    interconnect_efficiency: float = 0.7


class RooflineStepTime:
    """Step time from the model's FLOPs and bytes and the GPU's peak rates.

    ``t = base + max(C, M) + overlap * min(C, M)`` with ``C`` the matmul FLOPs of all tokens
    over effective compute and ``M`` the weights, the attended KV and the adapters' LoRA
    weights over effective bandwidth, plus the LoRA slot and adapter costs.

    At ``tensor_parallel_size`` ``p > 1`` each GPU computes ``1/p`` of the FLOPs and reads its
    own share of weights and KV (``ModelSpec.weight_bytes_per_gpu``,
    ``kv_bytes_per_token_per_gpu``), and every layer adds two all-reduces of the step's
    hidden states (after attention and after the MLP, as vLLM's ``RowParallelLinear`` does):
    ``2 L (latency + 2 (p-1)/p * tokens * h * dtype / (interconnect/2 * efficiency))``, a
    ring all-reduce over one direction of the interconnect, not overlapped with compute.
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
        tp = engine.tensor_parallel_size
        self._s_per_token = model.matmul_flops_per_token() / tp / flops
        self._weights_s = model.weight_bytes_per_gpu(tp) / bandwidth
        self._s_per_ctx = model.kv_bytes_per_token_per_gpu(tp) / bandwidth
        allreduces = 2 * model.num_layers if tp > 1 else 0
        link = gpu.interconnect_gbps / 2 * 1e9 * c.interconnect_efficiency
        self._allreduce_s = allreduces * c.allreduce_latency_s
        self._allreduce_per_token_s = (allreduces * 2 * (tp - 1) / tp
                                       * model.hidden_size * model.dtype_bytes / link)
        slot_s, slot_tok_s = c.lora.slot_factor(engine)
        self._base = c.base_s + slot_s + self._allreduce_s
        self._slot_tok = slot_tok_s + self._allreduce_per_token_s
        adapter_bytes = (model.lora_slot_bytes(engine.max_lora_rank, tp)
                         if engine.enable_lora else 0)
        per_adapter, self._per_adapter_sq = c.lora.adapter_factors(engine)
        self._per_adapter = ((per_adapter + adapter_bytes / bandwidth)
                             if engine.enable_lora else 0.0)
        self._overlap = c.overlap
        self._lora_tok, self._active, self._active_tok = c.lora.token_factors(engine)

    def predict(self, prefill_tokens: Num, decode_seqs: Num, context_tokens: Num,
                distinct_adapters: Num, lora_tokens: Num | None = None) -> Num:
        tokens = prefill_tokens + decode_seqs
        lora, active = lora_features(tokens, distinct_adapters, lora_tokens)
        compute = self._s_per_token * tokens
        memory = self._weights_s + self._s_per_ctx * context_tokens
        vector = isinstance(compute, np.ndarray)
        hi = np.maximum(compute, memory) if vector else max(compute, memory)
        lo = (compute + memory) - hi
        t = (self._base + hi + self._overlap * lo
             + self._slot_tok * tokens + self._per_adapter * distinct_adapters
             + self._lora_tok * lora + active * (self._active + self._active_tok * tokens))
        if self._per_adapter_sq:
            t = t + self._per_adapter_sq * distinct_adapters * distinct_adapters
        return t  # type: ignore[no-any-return]
