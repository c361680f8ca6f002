"""A conservative analytic estimate of one worker's median TTFT, ITL and E2E latency.

Why not the surrogate's ``LatencyModel``: on the bundled table's held-out fifth (every 5th
row, 406 unsaturated workers) its TTFT p50 has a SMAPE of 69%, with predictions from 0.19x
to 8.5x the twin's (5th to 95th percentile) and a quarter of them under 0.8x: too poor, and
too often optimistic, to promise a target with. This estimate, from the profile's step-time
model alone, is conservative on the held-out workers shaped as the placer shapes them (a slot
per adapter, 299 rows): TTFT p50 2.5x the twin's at the median (1.05x-46x from the 5th to
the 95th percentile: the queueing term is pessimistic near saturation), under it on 6 of
299 (none of the 142 with Poisson arrivals); E2E p50 1.2x, under it on 8% (2% with Poisson
arrivals). Workers with fewer slots than adapters, which the placer avoids, are not covered:
there vLLM's LoRA skip rule dominates and the estimate under-predicts a third of them
(``tests/planner/test_objective.py`` checks these figures).

The model, for a worker receiving ``lambda`` requests/s of mean prompt ``in`` and output
``out`` tokens:

- decode batch ``B`` and step time ``t`` from a fixed point: ``B = lambda * out * t``
  (Little's law: a request decodes for ``out`` steps), at most ``max_num_seqs`` or what the
  KV cache holds; each step also carries the prefill arriving meanwhile, ``lambda * in * t``
  tokens; ``t`` is the step-time model at that batch. The ITL is ``t``;
- service: the prompt needs ``ceil(in / (budget - B))`` steps carrying prefill, plus half a
  mean step ``t`` for the one running when it arrives;
- queueing: M/M/1's ``rho / (1 - rho)`` times the service, times ``(1 + cv^2) / 2`` for
  bursty arrivals (Kingman's formula with a service CV of 1, the conservative side), with
  ``rho`` the offered load over the analytic capacity (``features.load_ratio``);
- plus the profile's per-request overhead. E2E is ``TTFT + ITL * out``.

Pure: features and a step-time model in, seconds out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from twin.specs import EngineConfig
from twin.step_time import StepTimeModel

__all__ = ["LatencyEstimate", "estimate_latency"]

_MAX_RHO = 0.999  # past this the queue grows without bound: a huge, finite estimate


@dataclass(frozen=True, slots=True)
class LatencyEstimate:
    """Predicted medians, in seconds."""

    ttft_s: float
    itl_s: float
    e2e_s: float


def estimate_latency(x: Mapping[str, float], step: StepTimeModel, engine: EngineConfig,
                     overhead_s: float = 0.0) -> LatencyEstimate:
    """Median TTFT, ITL and E2E of the worker whose features (``worker_features``) are ``x``.

    Examples
    --------
    >>> from twin.step_time import LinearCoefficients, LinearStepTime
    >>> engine = EngineConfig(max_loras=1, max_lora_rank=8)
    >>> step = LinearStepTime(LinearCoefficients(base_s=0.01, per_token_s=1e-5), engine)
    >>> x = {"sum_rate": 1.0, "mean_input": 500.0, "mean_output": 100.0,
    ...      "kv_tokens": 1e5, "expected_active": 1.0, "load_ratio": 0.0, "burstiness": 1.0}
    >>> e = estimate_latency(x, step, engine)
    >>> round(e.ttft_s, 4), round(e.itl_s, 4)
    (0.02, 0.0101)
    """
    lam = max(x["sum_rate"], 0.0)
    inp, out = max(x["mean_input"], 1.0), max(x["mean_output"], 1.0)
    budget = float(engine.max_num_batched_tokens)
    most = max(1.0, min(float(engine.max_num_seqs), x["kv_tokens"] / (inp + out)))
    context = inp + out / 2  # a running request's mean KV length

    def adapters(batch: float) -> float:
        if not engine.enable_lora:
            return 0.0
        return max(1.0, min(x["expected_active"], float(engine.max_loras), batch))

    batch, t = 1.0, step.predict(0.0, 1.0, context, adapters(1.0))
    for _ in range(40):
        batch = min(most, max(1.0, lam * out * t))
        prefill = min(budget, lam * inp * t)
        last, t = t, step.predict(prefill, batch, batch * context, adapters(batch))
        if abs(t - last) <= 1e-6 * t:
            break
    chunk = max(1.0, budget - batch)
    prefill_step = step.predict(min(inp, chunk), batch, batch * context + inp, adapters(batch))
    service = math.ceil(inp / chunk) * prefill_step + 0.5 * t
    rho = min(max(x["load_ratio"], 0.0), _MAX_RHO)
    burst = (1.0 + x["burstiness"] ** 2) / 2
    ttft = overhead_s + service + service * rho / (1.0 - rho) * burst
    return LatencyEstimate(ttft_s=ttft, itl_s=t, e2e_s=ttft + t * out)
