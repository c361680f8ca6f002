"""The reference's H100 step measurements as rows of the step model, and one fit to them all.

Rows (``bench/data/h100_reference.json``, copied from GitHub
FerranAgulloLopez/GPULLMAdapterOptimization at bae36e2d; every row names its source folder):

- ``decode``: no-LoRA decode steps of a batch held at ``max_num_seqs`` B (50 to 1000). The
  step time was read from the server log while Prometheus ``num_running`` equalled B, so the
  row's batch is B (not the run's mean batch, which counts the ramps).
- ``prefill``: no-LoRA steps of one full 2048-token prefill chunk.
- ``slots``: batch-1 decode steps of the base model on LoRA servers started with
  ``max_loras`` 8 to 352 at ``max_lora_rank`` 8, 16 and 32: the slot and rank terms.
- ``adapters``: decode steps at batch 220 on a server with 300 slots (rank 8), all requests
  spread over N = 1 to 300 adapters: the terms that grow with the adapters in a step. Runs
  whose server log is missing have no measured adapters per step and no step time: their
  mean ITL stands for the step (within 1% where both exist) and the adapters per step are
  ``N (1 - (1 - 1/N)^220)``, the distinct adapters of 220 requests spread over N (within 1%
  of the measured mean where both exist).

The held-out end-to-end serving runs (``digital_twin_modelling/real_results``) are not read.

``fit_steps`` fits the linear step model by relative least squares (a 13 ms step counts as
much as an 87 ms one): the base terms on the no-LoRA rows, then the LoRA terms on what LoRA
adds to the LoRA rows (the rank slope, which multiplies the slot terms, on a grid).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twin.specs import EngineConfig
from twin.step_time import LinearCoefficients, LinearStepTime, LoRACoefficients

__all__ = ["COLUMNS", "GROUPS", "SlotFit", "derived_adapters", "fit_steps", "load_reference",
           "predict_rows", "reference_rows"]

ROOT = Path(__file__).resolve().parent.parent
PROMPT_TOKENS = 6  # "input 1 word" prompts: chat template plus one word
GROUPS = ("decode", "prefill", "slots", "adapters")
#: The fitted coefficients, in the design matrix's order (``rank_slope`` is searched).
COLUMNS = ("base_s", "per_token_s", "per_seq_s", "per_context_token_s", "enabled_step_s",
           "per_slot_s", "per_slot_token_s", "per_adapter_s", "per_adapter_sq_s")
_RANK_SLOPES = np.linspace(0.0, 0.5, 101)


def load_reference() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / "bench/data/h100_reference.json").read_text())
    return data


def derived_adapters(offered: int, batch: int) -> float:
    """Expected distinct adapters among ``batch`` requests spread uniformly over ``offered``.

    Examples
    --------
    >>> round(derived_adapters(128, 220), 1), derived_adapters(1, 220)
    (105.2, 1.0)
    """
    return float(offered * (1.0 - (1.0 - 1.0 / offered) ** batch))


def _row(group: str, label: str, source: str, seconds: float, *, prefill: float = 0.0,
         decode: float = 0.0, context: float = 0.0, adapters: float = 0.0,
         max_loras: int = 0, rank: int = 8, measured_adapters: bool = True
         ) -> dict[str, Any]:
    return {"group": group, "label": label, "source": source, "step_time_s": seconds,
            "prefill_tokens": prefill, "decode_seqs": decode, "context_tokens": context,
            "distinct_adapters": adapters, "lora_tokens": (prefill + decode) if adapters else 0.0,
            "max_loras": max_loras, "max_lora_rank": rank,
            "adapters_measured": measured_adapters}


def reference_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Every step measurement of the reference as a row (see the module docstring)."""
    out = []
    for p in data["decode_sweep"]:
        if p.get("step_time_s") is not None:
            b = float(p["batch_size"])
            out.append(_row("decode", f"B={p['batch_size']} out={p['output_tokens']}",
                            p["path"], p["step_time_s"], decode=b,
                            context=b * (PROMPT_TOKENS + p["output_tokens"] / 2)))
    for p in data["prefill"]["per_step_points"]:
        t = p["tokens_per_step_approx"]
        out.append(_row("prefill", f"{t:.0f} tokens", p["path"], p["step_time_median_s"],
                        prefill=t, context=t))
    for p in data["decode_batch1_vs_max_loras"]:
        out.append(_row("slots", f"max_loras={p['max_loras']} r{p['max_lora_rank']}",
                        p["path"], p["step_time_s"], decode=1.0,
                        context=p["input_tokens"] + p["output_tokens"] / 2,
                        max_loras=p["max_loras"], rank=p["max_lora_rank"]))
    for p in data["lora_overhead"]["raw_points"]:
        b = p["batch_size"]
        k = p["mean_unique_adapters_per_step"]
        seconds = p["step_time_s"] or p["mean_itl_ms"] / 1e3
        out.append(_row("adapters", f"N={p['distinct_adapters_offered']} out="
                        f"{p['output_tokens']}", p.get("path", ""), seconds, decode=float(b),
                        context=b * (PROMPT_TOKENS + p["output_tokens"] / 2),
                        adapters=k if k is not None else derived_adapters(
                            p["distinct_adapters_offered"], b),
                        max_loras=p["max_loras"], rank=p["max_lora_rank"],
                        measured_adapters=k is not None))
    return out


def _base_features(r: dict[str, Any]) -> list[float]:
    return [1.0, r["prefill_tokens"] + r["decode_seqs"], r["decode_seqs"], r["context_tokens"]]


def _lora_features(r: dict[str, Any], rank_slope: float) -> list[float]:
    tokens = r["prefill_tokens"] + r["decode_seqs"]
    slots = r["max_loras"] * (1.0 + rank_slope * (r["max_lora_rank"] / 8.0 - 1.0))
    k = r["distinct_adapters"]
    return [1.0, slots, slots * tokens, k, k * k]


@dataclass(frozen=True, slots=True)
class SlotFit:
    """The fitted coefficients and each row's relative error (the twin's step against the
    measured one)."""

    coefficients: LinearCoefficients
    relative_errors: tuple[float, ...]


def _relative_lstsq(x: np.ndarray, target: np.ndarray, measured: np.ndarray
                    ) -> tuple[np.ndarray, float]:
    """Least squares of ``x @ c ~ target`` in units of ``measured``; the sum of squares."""
    coef, *_ = np.linalg.lstsq(x / measured[:, None], target / measured, rcond=None)
    return coef, float(np.sum(((x @ coef - target) / measured) ** 2))


def fit_steps(rows: Sequence[dict[str, Any]]) -> SlotFit:
    """Two stages. The no-LoRA rows fit the base terms. The LoRA rows fit what LoRA adds to a
    step: their time less the no-LoRA step of the same batch, measured where the reference
    measured one (batch 220), else the base terms' (batch 1); the rank slope, which scales
    the slot terms, by grid search. So the base terms' error at batch 220 does not leak
    into the LoRA cost per token."""
    base_rows = [r for r in rows if not r["max_loras"]]
    y = np.array([r["step_time_s"] for r in base_rows])
    base, _ = _relative_lstsq(np.array([_base_features(r) for r in base_rows]), y, y)
    no_lora = {(r["decode_seqs"], r["context_tokens"]): r["step_time_s"] for r in base_rows
               if not r["prefill_tokens"]}
    lora_rows = [r for r in rows if r["max_loras"]]
    y = np.array([r["step_time_s"] for r in lora_rows])
    added = y - np.array([no_lora.get((r["decode_seqs"], r["context_tokens"]),
                                      float(np.dot(_base_features(r), base)))
                          for r in lora_rows])

    def solve(slope: float) -> tuple[np.ndarray, float]:
        return _relative_lstsq(np.array([_lora_features(r, slope) for r in lora_rows]),
                               added, y)

    best = float(min(_RANK_SLOPES, key=lambda s: solve(float(s))[1]))
    c = dict(zip(COLUMNS, (float(v) for v in (*base, *solve(best)[0])), strict=True))
    if min(c.values()) < 0:
        raise ValueError(f"a coefficient came out negative: {c}")
    lora = LoRACoefficients(per_slot_s=c["per_slot_s"], per_slot_token_s=c["per_slot_token_s"],
                            rank_slope=best, per_adapter_s=c["per_adapter_s"],
                            enabled_step_s=c["enabled_step_s"],
                            per_adapter_sq_s=c["per_adapter_sq_s"])
    linear = LinearCoefficients(base_s=c["base_s"], per_token_s=c["per_token_s"],
                                per_seq_s=c["per_seq_s"],
                                per_context_token_s=c["per_context_token_s"], lora=lora)
    rel = [t / r["step_time_s"] - 1.0 for t, r in zip(predict_rows(linear, rows), rows,
                                                       strict=True)]
    return SlotFit(linear, tuple(rel))


def predict_rows(coefficients: LinearCoefficients, rows: Sequence[dict[str, Any]]
                 ) -> list[float]:
    """The twin's step time for each row (its engine: the row's slots and rank, LoRA on when
    it has slots)."""
    out = []
    for r in rows:
        engine = EngineConfig(enable_lora=bool(r["max_loras"]),
                              max_loras=max(1, r["max_loras"]),
                              max_lora_rank=r["max_lora_rank"], max_num_seqs=2048,
                              max_num_batched_tokens=2048)
        out.append(float(LinearStepTime(coefficients, engine).predict(
            r["prefill_tokens"], r["decode_seqs"], r["context_tokens"],
            r["distinct_adapters"], r["lora_tokens"])))
    return out
