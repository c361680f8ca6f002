"""The LoRA terms that grow with the adapters in a step and the LoRA server's step constant."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from bench.reference_steps import fit_steps, load_reference, predict_rows, reference_rows
from twin.catalog import get_gpu, get_model
from twin.profile import load_profile
from twin.specs import EngineConfig
from twin.step_time import (
    LinearCoefficients,
    LinearStepTime,
    LoRACoefficients,
    RooflineCoefficients,
    RooflineStepTime,
)

LORA = LoRACoefficients(per_slot_s=2e-5, per_slot_token_s=1.5e-7, rank_slope=0.1,
                        per_adapter_s=3e-4, per_lora_token_s=1e-6, per_active_step_s=1e-3,
                        per_active_token_s=2e-6)
LIN = LinearCoefficients(base_s=0.011, per_token_s=2e-5, per_seq_s=4e-6,
                         per_context_token_s=8e-8, lora=LORA)
ENGINE = EngineConfig(max_loras=128, max_lora_rank=16)
MODEL, GPU = get_model("llama-3.1-8b"), get_gpu("h100-64gb")
ADAPTERS = np.arange(0.0, 129.0)


def models(lora: LoRACoefficients, engine: EngineConfig = ENGINE
           ) -> list[LinearStepTime | RooflineStepTime]:
    return [LinearStepTime(replace(LIN, lora=lora), engine),
            RooflineStepTime(MODEL, GPU, engine, RooflineCoefficients(lora=lora))]


def steps(model: LinearStepTime | RooflineStepTime, adapters: np.ndarray) -> np.ndarray:
    """Decode steps of 200 LoRA requests with 0..128 adapters among them, one by one."""
    return np.array([model.predict(0.0, 200.0, 200 * 80.0, float(k), 200.0 if k else 0.0)
                     for k in adapters])


@pytest.mark.parametrize("kind", [0, 1], ids=["linear", "roofline"])
def test_the_squared_term_makes_each_further_adapter_cost_more(kind: int) -> None:
    flat = steps(models(LORA)[kind], ADAPTERS)
    sq = steps(models(replace(LORA, per_adapter_sq_s=2e-7))[kind], ADAPTERS)
    assert np.all(np.diff(flat[1:], 2) == pytest.approx(0.0, abs=1e-12))  # linear today
    assert np.all(np.diff(sq[1:], 2) > 0)  # convex with the term
    assert sq - flat == pytest.approx(2e-7 * ADAPTERS**2, abs=1e-12)


@pytest.mark.parametrize("kind", [0, 1], ids=["linear", "roofline"])
def test_new_terms_at_zero_give_todays_step_times_bit_for_bit(kind: int) -> None:
    explicit = replace(LORA, enabled_step_s=0.0, per_adapter_sq_s=0.0)
    today, zero = models(LORA)[kind], models(explicit)[kind]
    assert np.array_equal(steps(today, ADAPTERS), steps(zero, ADAPTERS))
    # The linear model's formula before the terms existed.
    if kind == 0:
        rank = 1 + LORA.rank_slope
        tokens, k = 200.0, ADAPTERS
        want = (LIN.base_s + 128 * rank * LORA.per_slot_s
                + (LIN.per_token_s + 128 * rank * LORA.per_slot_token_s) * tokens
                + LIN.per_seq_s * 200 + LIN.per_context_token_s * 200 * 80
                + LORA.per_adapter_s * k + np.where(k > 0, LORA.per_lora_token_s * rank * 200
                                                    + LORA.per_active_step_s * rank
                                                    + LORA.per_active_token_s * rank * 200, 0))
        assert steps(zero, ADAPTERS) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("kind", [0, 1], ids=["linear", "roofline"])
def test_vectorised_steps_match_one_by_one(kind: int) -> None:
    model = models(replace(LORA, per_adapter_sq_s=2e-7, enabled_step_s=1.5e-3))[kind]
    n = len(ADAPTERS)
    vector = model.predict(np.zeros(n), np.full(n, 200.0), np.full(n, 200 * 80.0), ADAPTERS,
                           np.where(ADAPTERS > 0, 200.0, 0.0))
    assert np.array_equal(vector, steps(model, ADAPTERS))


def test_a_lora_server_pays_its_step_constant_even_without_adapters() -> None:
    lora = replace(LORA, enabled_step_s=1.5e-3)
    on = LinearStepTime(replace(LIN, lora=lora), ENGINE)
    before = LinearStepTime(LIN, ENGINE)
    off = LinearStepTime(replace(LIN, lora=lora), EngineConfig(enable_lora=False))
    batch = (0.0, 1.0, 80.0, 0.0, 0.0)
    assert on.predict(*batch) - before.predict(*batch) == pytest.approx(1.5e-3)
    assert off.predict(*batch) == LinearStepTime(LIN, EngineConfig(enable_lora=False)).predict(
        *batch)


def test_shipped_profiles_without_the_terms_keep_them_at_zero() -> None:
    for name in ("roofline-default", "cpu-tiny-llama"):
        profile = load_profile(name)
        coeffs = profile.roofline or profile.linear
        assert coeffs is not None
        assert coeffs.lora.per_adapter_sq_s == 0 and coeffs.lora.enabled_step_s == 0


REFERENCE_ROWS = reference_rows(load_reference())


@pytest.mark.parametrize("group", ["slots", "adapters"])
def test_h100_profile_is_within_5_percent_of_every_lora_microbenchmark(group: str) -> None:
    """Batch-1 steps at each max_loras and rank, and batch-220 steps on 300 slots with 1 to
    300 adapters: the shipped profile against the reference's measurements."""
    lin = load_profile("h100-64gb-llama-3.1-8b").linear
    assert lin is not None and lin.lora.per_adapter_sq_s > 0
    rows = [r for r in REFERENCE_ROWS if r["group"] == group]
    assert len(rows) >= 22
    for r, t in zip(rows, predict_rows(lin, rows), strict=True):
        assert t == pytest.approx(r["step_time_s"], rel=0.05), r["label"]


def test_the_fit_is_the_shipped_profile() -> None:
    fit = fit_steps(REFERENCE_ROWS)
    shipped = json.loads((Path(__file__).resolve().parents[2]
                          / "twin/profiles/h100-64gb-llama-3.1-8b.json").read_text())["linear"]
    got = fit.coefficients
    assert got.lora.per_adapter_sq_s == pytest.approx(shipped["lora"]["per_adapter_sq_s"],
                                                      rel=1e-9)
    assert got.lora.enabled_step_s == pytest.approx(shipped["lora"]["enabled_step_s"], rel=1e-9)
    assert got.base_s == pytest.approx(shipped["base_s"], rel=1e-9)


@pytest.mark.parametrize("output", [100, 200])
def test_the_measured_adapter_cost_is_convex(output: int) -> None:
    """Each output length's batch-220 steps against the adapters in use: a parabola fits them
    better than a line, curving up."""
    rows = [r for r in REFERENCE_ROWS
            if r["group"] == "adapters" and r["label"].endswith(f"out={output}")]
    k = np.array([r["distinct_adapters"] for r in rows])
    t = np.array([r["step_time_s"] for r in rows])
    line, parabola = np.polyfit(k, t, 1), np.polyfit(k, t, 2)
    err_line = np.mean(np.abs(np.polyval(line, k) / t - 1))
    err_parabola = np.mean(np.abs(np.polyval(parabola, k) / t - 1))
    assert parabola[0] > 0 and err_parabola < 0.8 * err_line
