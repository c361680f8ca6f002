"""The engine time a worker's requests take: the placer's capacity ceiling, and the cost the
lower bound (``planner.bound``) packs.

Each request costs the worker ``in * c_prefill + out * t_decode(B, ctx) / B`` seconds of
engine time: its prompt's prefill at the marginal cost of a prefill token (as in
``planner.features.capacity_estimate``), and ``out`` decode steps each shared by a full batch
of ``B`` requests like it, ``B`` = ``max_num_seqs`` or what the KV cache holds of such
requests. Every request pays for its own context (the batch's attention reads are the sum of
its requests'), its own LoRA tokens (none for the base model), the engine's slot overhead at
its ``max_loras`` and ``max_lora_rank``, and the per-step cost of the distinct adapters the
worker holds. The worker's *engine load* is the sum over its adapters of rate x cost: the
share of a second of engine time one second of its traffic needs.

No engine serves a load above 1 for long; the placer (``planner.placer.Predictor.check``)
refuses a worker whose engine load, at its planning margin (``headroom``, the learned speed),
exceeds ``1 / 0.9`` (the paper's test, PAPER.md: starved when 0.9 x the offered load exceeds
what the worker serves), whatever the surrogate says. The surrogate decides everything below
that ceiling; the ceiling is what makes the packing lower bound a true bound of the placer's
model (``planner.bound``): a cost every accepted worker pays, additive over its adapters.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from planner.demand import AdapterDemand
from twin.specs import EngineConfig
from twin.step_time import StepTimeModel

__all__ = ["CEILING", "engine_load", "request_seconds"]

# The largest engine load the placer accepts at its margins: the paper's starvation test
# (0.9 x offered > served) on a worker that serves at most its engine's capacity.
CEILING = 1.0 / 0.9


def request_seconds(adapters: Sequence[AdapterDemand], engine: EngineConfig,
                    step: StepTimeModel, kv_tokens: int, distinct: float) -> np.ndarray:
    """Seconds of engine time one request of each adapter costs on a worker running
    ``engine`` (KV cache ``kv_tokens``) whose steps carry ``distinct`` adapters.

    Each cost is nondecreasing in ``distinct`` and in the engine's ``max_loras`` and
    ``max_lora_rank`` (the step-time models' LoRA terms are nonnegative), which the lower bound
    relies on.
    """
    if not adapters:
        return np.zeros(0)
    inp = np.array([a.input_tokens for a in adapters], dtype=float)
    out = np.array([a.output_tokens for a in adapters], dtype=float)
    lora = np.array([0.0 if a.is_base else 1.0 for a in adapters])
    batch = np.maximum(1.0, np.minimum(float(engine.max_num_seqs), kv_tokens / (inp + out)))
    context = batch * (inp + out / 2.0)
    decode = step.predict(np.zeros_like(batch), batch, context,
                          np.minimum(distinct, batch) * lora, batch * lora)
    chunk = np.full_like(batch, float(engine.max_num_batched_tokens))
    zero = np.zeros_like(batch)
    prefill = (step.predict(chunk, zero, chunk, lora, chunk * lora)
               - step.predict(zero, zero, zero, lora, zero)) / chunk
    return np.asarray(inp * prefill + out * decode / batch)


def engine_load(adapters: Sequence[AdapterDemand], engine: EngineConfig, step: StepTimeModel,
                kv_tokens: int) -> float:
    """Seconds of engine time per second the worker's traffic needs (``request_seconds`` x
    rate, summed), its steps carrying as many distinct adapters as it holds LoRAs (at most
    ``max_loras``)."""
    loras = sum(1 for a in adapters if not a.is_base)
    distinct = float(min(loras, engine.max_loras)) if engine.enable_lora else 0.0
    rates = np.array([a.rate for a in adapters], dtype=float)
    return float(rates @ request_seconds(adapters, engine, step, kv_tokens, distinct))
