"""``build_profile`` pools the sweeps of servers started with different ``--max-loras``."""

from __future__ import annotations

import pytest

from gateway.calibrate.calibrate import build_profile
from gateway.calibrate.sweep import ServerFacts, SweepResult
from tests.twin.test_fit import BUSY, CPU, OVERHEAD, TRUTH, rows
from twin.catalog import get_model


def sweep(max_loras: int) -> SweepResult:
    facts = ServerFacts(base_model="tiny-llama", max_model_len=512, max_loras=max_loras,
                        vllm_version="0.32.0")
    return SweepResult(facts, steps=rows(max_loras=(max_loras,)),
                       disk_loads=[(8, 0.004), (16, 0.0045)], swap_loads=[(8, 0.0005)],
                       http_rtt_s=0.001)


def test_pooled_sweeps_fit_the_slot_terms_and_the_busy_overhead() -> None:
    profile = build_profile([sweep(1), sweep(4), sweep(2)], get_model("tiny-llama"),
                            name="pooled", hardware="test")
    lin = profile.linear
    assert lin is not None
    assert lin.lora.per_slot_s == pytest.approx(TRUTH.lora.per_slot_s, rel=1e-6)
    assert lin.lora.per_active_token_s == pytest.approx(TRUTH.lora.per_active_token_s,
                                                        rel=1e-6)
    assert lin.lora.per_lora_token_s == pytest.approx(TRUTH.lora.per_lora_token_s, rel=1e-6)
    # The twin charges the overhead measured on a busy engine; the idle one is kept.
    assert profile.request_overhead_s == pytest.approx(OVERHEAD + BUSY, rel=1e-6)
    assert profile.source["fit"]["idle_overhead_s"] == pytest.approx(OVERHEAD, rel=1e-6)
    assert profile.request_cpu_s == pytest.approx(CPU, rel=1e-6)
    assert profile.source["server"]["max_loras"] == [1, 2, 4]
    assert len(profile.samples) == sum(len(rows(max_loras=(m,))) for m in (1, 2, 4))


def test_one_sweep_folds_slots_into_base() -> None:
    profile = build_profile(sweep(2), get_model("tiny-llama"), name="one", hardware="test")
    assert profile.linear is not None and profile.linear.lora.per_slot_s == 0
    assert profile.source["server"]["max_loras"] == 2


def test_mixed_batches_hold_the_share_of_lora_requests() -> None:
    from gateway.calibrate.sweep import _mix

    names = ["a", "b", "c"]
    assert _mix(names, "base", 8, 0.5, 1) == ["a"] * 4 + ["base"] * 4
    assert _mix(names, "base", 4, 1.0, 2) == ["a", "b", "a", "b"]
    assert _mix(names, "base", 4, 0.0, 0) == ["base"] * 4
    assert _mix(names, "base", 1, 0.5, 1) is None  # one request cannot be half LoRA
    assert _mix(names, "base", 1, 1.0, 2) is None  # nor run two adapters
