"""``twin.fit``: the linear fit recovers the coefficients that made its rows."""

from __future__ import annotations

import itertools

import pytest

from twin.fit import fit_linear
from twin.specs import EngineConfig
from twin.step_time import LinearCoefficients, LinearStepTime, LoRACoefficients

TRUTH = LinearCoefficients(
    base_s=0.004, per_token_s=2e-5, per_seq_s=9e-5, per_context_token_s=1e-6,
    lora=LoRACoefficients(per_adapter_s=4e-4, per_lora_token_s=1e-5, per_active_step_s=0.002,
                          per_active_token_s=6e-5, per_slot_s=3e-4, per_slot_token_s=2e-6))
OVERHEAD, BUSY, CPU = 0.003, 0.004, 0.005


def rows(max_loras: tuple[int, ...] = (1, 2, 4), mixed: bool = True) -> list[dict[str, float]]:
    out = []
    for ml in max_loras:
        m = LinearStepTime(TRUTH, EngineConfig(max_loras=ml, max_lora_rank=8))

        def row(p: float, b: float, ctx: float, k: float, lora: float, overhead: float = 0.0,
                busy: float = 0.0, arrivals: float = 0.0, m: LinearStepTime = m,
                ml: int = ml) -> dict[str, float]:
            t = (m.predict(p, b, ctx, k, lora) + (OVERHEAD + BUSY * busy) * overhead
                 + CPU * arrivals)
            return {"prefill_tokens": p, "decode_seqs": b, "context_tokens": ctx,
                    "distinct_adapters": k, "lora_tokens": lora, "max_loras": float(ml),
                    "includes_overhead": overhead, "busy": busy, "arrivals": arrivals,
                    "step_time_s": t}

        shares = (0.0, 0.5, 1.0) if mixed else (0.0, 1.0)
        for b, c, share, k in itertools.product((1, 8, 32, 96), (24.0, 300.0), shares, (1, 2)):
            n_lora = round(b * share)
            if (0 < share < 1 and not 0 < n_lora < b) or (share == 0 and k > 1):
                continue
            out.append(row(0.0, b, b * c, k if n_lora else 0, n_lora))
        for p, k in itertools.product((16.0, 128.0, 480.0, 1920.0), (0, 1)):
            out.append(row(p, 0.0, p, k, p * k, overhead=1.0, arrivals=1.0))
        out.append(row(1920.0, 0.0, 1920.0, 1, 1920.0, overhead=1.0, arrivals=4.0))
        if mixed:
            out.append(row(1920.0, 0.0, 1920.0, 1, 960.0, overhead=1.0, arrivals=4.0))
        for b, k in itertools.product((4, 16), (0, 1)):
            out.append(row(96.0, b, 96 + b * 100.0, k, (96 + b) * k, overhead=1.0, busy=1.0,
                           arrivals=1.0))
        for b, per_step in ((16, 0.3), (48, 0.8)):  # decode steps while requests arrive
            out.append(row(16 * per_step, b, b * 76.0 + 16 * per_step, 1, b + 16 * per_step,
                           arrivals=per_step))
    return out


def test_recovers_lora_token_slot_and_busy_terms() -> None:
    fit = fit_linear(rows())
    c, lora = fit.coefficients, fit.coefficients.lora
    for got, want in ((c.base_s, TRUTH.base_s), (c.per_token_s, TRUTH.per_token_s),
                      (c.per_seq_s, TRUTH.per_seq_s),
                      (c.per_context_token_s, TRUTH.per_context_token_s),
                      (lora.per_adapter_s, TRUTH.lora.per_adapter_s),
                      (lora.per_lora_token_s, TRUTH.lora.per_lora_token_s),
                      (lora.per_active_step_s, TRUTH.lora.per_active_step_s),
                      (lora.per_active_token_s, TRUTH.lora.per_active_token_s),
                      (lora.per_slot_s, TRUTH.lora.per_slot_s),
                      (lora.per_slot_token_s, TRUTH.lora.per_slot_token_s),
                      (fit.request_overhead_s, OVERHEAD), (fit.busy_overhead_s, BUSY),
                      (fit.request_cpu_s, CPU)):
        assert got == pytest.approx(want, rel=1e-6)
    assert fit.mean_relative_error < 1e-9 and fit.rows_dropped == 0


def test_one_max_loras_folds_the_slot_terms_into_base() -> None:
    fit = fit_linear(rows(max_loras=(2,)))
    lora = fit.coefficients.lora
    assert lora.per_slot_s == 0 and lora.per_slot_token_s == 0
    assert "per_slot_s" not in fit.columns_fitted
    assert fit.coefficients.base_s == pytest.approx(TRUTH.base_s + 2 * TRUTH.lora.per_slot_s)
    assert lora.per_active_token_s == pytest.approx(TRUTH.lora.per_active_token_s, rel=1e-6)
    assert fit.mean_relative_error < 1e-9


def test_without_mixed_batches_lora_tokens_and_active_tokens_are_one_column() -> None:
    fit = fit_linear(rows(max_loras=(2,), mixed=False))
    lora = fit.coefficients.lora
    # Every LoRA row is all-LoRA: the two per-token terms cannot be told apart, and the
    # earlier column takes both.
    assert "per_active_token_s" not in fit.columns_fitted
    assert lora.per_active_token_s == 0
    assert lora.per_lora_token_s == pytest.approx(
        TRUTH.lora.per_lora_token_s + TRUTH.lora.per_active_token_s, rel=1e-6)
    assert fit.mean_relative_error < 1e-9


def loaded_rows(outside: tuple[float, ...] = ()) -> list[dict[str, float]]:
    """Rows of a loaded machine: the decode steps run 10% slow and the first-token rows hold
    a fifth of their overhead, so the overhead left beyond the fitted steps is below 0; the
    idle first-token rows carry ``outside`` in turn as their measured out-of-engine time."""
    out = rows(max_loras=(2,))
    idle = 0
    for r in out:
        if r["includes_overhead"]:
            r["step_time_s"] -= 0.8 * (OVERHEAD + BUSY * r["busy"])
            if outside and not r["busy"] and r["arrivals"] == 1.0:
                r["outside_engine_s"] = outside[idle % len(outside)]
                idle += 1
        else:
            r["step_time_s"] *= 1.1
    return out


def test_on_a_loaded_machine_the_fitted_overhead_pins_at_zero_without_a_floor() -> None:
    fit = fit_linear(loaded_rows())
    assert fit.request_overhead_s == 0 and fit.overhead_floor_s == 0


def test_the_measured_outside_time_floors_the_overhead() -> None:
    # Noisy per-row medians and one hiccup: the floor is their median, not their mean.
    outside = (0.0011, 0.0013, 0.0012, 0.0009, 0.0014, 0.0010, 0.0012, 0.25)
    fit = fit_linear(loaded_rows(outside))
    assert fit.overhead_floor_s == pytest.approx(0.0012)
    assert fit.request_overhead_s >= fit.overhead_floor_s > 0
    # The floor does not cost the fit: the steps are what they were without it.
    without = fit_linear(loaded_rows())
    assert fit.mean_relative_error < without.mean_relative_error + 0.005


def test_a_floor_below_the_overhead_leaves_the_fit_exact() -> None:
    out = rows()
    for r in out:
        if r["includes_overhead"]:
            r["outside_engine_s"] = 0.4 * OVERHEAD
    fit = fit_linear(out)
    assert fit.overhead_floor_s == pytest.approx(0.4 * OVERHEAD)
    assert fit.request_overhead_s == pytest.approx(OVERHEAD, rel=1e-6)
    assert fit.busy_overhead_s == pytest.approx(BUSY, rel=1e-6)
    assert fit.request_cpu_s == pytest.approx(CPU, rel=1e-6)
    assert fit.mean_relative_error < 1e-9 and fit.rows_dropped == 0


def test_outside_times_of_rows_without_overhead_are_ignored() -> None:
    out = rows(max_loras=(2,))
    for r in out:
        r["outside_engine_s"] = 0.0 if r["includes_overhead"] else 1.0
    assert fit_linear(out).overhead_floor_s == 0
