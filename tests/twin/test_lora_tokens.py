"""The step-time models' LoRA-token terms and the engine's count of LoRA tokens per step."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from tests.twin.factories import make_engine, make_request, run_to_completion
from twin import EngineConfig, get_gpu, get_model, load_profile
from twin.profile import CalibrationProfile
from twin.scenario import parse_scenario
from twin.simulation import simulate
from twin.step_time import (
    LinearCoefficients,
    LinearStepTime,
    LoRACoefficients,
    RooflineCoefficients,
    RooflineStepTime,
    lora_features,
)

CPU_LIKE = LinearCoefficients(
    base_s=0.004, per_token_s=2e-5, per_seq_s=9e-5, per_context_token_s=1e-6,
    lora=LoRACoefficients(per_adapter_s=5e-4, per_lora_token_s=1e-5, per_active_step_s=0.002,
                          per_active_token_s=6e-5))


class Recording:
    """A step model that records the arguments of every call (scalars or arrays)."""

    def __init__(self, inner: LinearStepTime) -> None:
        self.inner = inner
        self.calls: list[tuple[float, float, float, float, float]] = []

    def predict(self, prefill, decode, context, adapters, lora_tokens=None):  # type: ignore[no-untyped-def]
        assert lora_tokens is not None, "the engine must count LoRA tokens"
        cols = np.broadcast_arrays(*(np.asarray(c, dtype=float) for c in
                                     (prefill, decode, context, adapters, lora_tokens)))
        self.calls.extend(zip(*(c.ravel().tolist() for c in cols), strict=True))
        return self.inner.predict(prefill, decode, context, adapters, lora_tokens)


def test_linear_lora_terms() -> None:
    m = LinearStepTime(CPU_LIKE, EngineConfig())
    plain = LinearStepTime(replace(CPU_LIKE, lora=LoRACoefficients()), EngineConfig())
    # A base-model step pays nothing for LoRA, whatever the adapter count says.
    assert m.predict(100.0, 10.0, 2000.0, 0.0, 0.0) == plain.predict(100.0, 10.0, 2000.0, 0.0)
    # One LoRA token switches the step's LoRA kernels on for all 110 tokens.
    extra = m.predict(100.0, 10.0, 2000.0, 1.0, 1.0) - plain.predict(100.0, 10.0, 2000.0, 1.0)
    assert extra == pytest.approx(5e-4 + 1e-5 + 0.002 + 6e-5 * 110)
    # Every further LoRA token costs per_lora_token_s.
    more = m.predict(100.0, 10.0, 2000.0, 1.0, 51.0) - m.predict(100.0, 10.0, 2000.0, 1.0, 1.0)
    assert more == pytest.approx(50 * 1e-5)
    # Not told (None): every token of a step with adapters is a LoRA token.
    assert m.predict(100.0, 10.0, 2000.0, 2.0) == m.predict(100.0, 10.0, 2000.0, 2.0, 110.0)
    assert m.predict(100.0, 10.0, 2000.0, 0.0) == m.predict(100.0, 10.0, 2000.0, 0.0, 0.0)
    # LoRA disabled: the terms are off.
    off = LinearStepTime(CPU_LIKE, EngineConfig(enable_lora=False))
    assert off.predict(100.0, 10.0, 2000.0, 1.0, 110.0) == plain.predict(100.0, 10.0, 2000.0,
                                                                         0.0)


def test_lora_terms_scale_with_the_padded_rank() -> None:
    lora = replace(CPU_LIKE.lora, rank_slope=1.0)
    r8 = LinearStepTime(replace(CPU_LIKE, lora=lora), EngineConfig(max_lora_rank=8))
    r16 = LinearStepTime(replace(CPU_LIKE, lora=lora), EngineConfig(max_lora_rank=16))
    base = r8.predict(64.0, 0.0, 64.0, 0.0, 0.0)
    assert r16.predict(64.0, 0.0, 64.0, 1.0, 64.0) - base == pytest.approx(
        5e-4 + 2 * (64 * 1e-5 + 0.002 + 64 * 6e-5))


@pytest.mark.parametrize("roofline", [False, True])
def test_scalar_equals_vector_with_lora_tokens(roofline: bool) -> None:
    engine = EngineConfig(max_loras=4, max_lora_rank=16)
    if roofline:
        model = RooflineStepTime(get_model("llama-3.1-8b"), get_gpu("a100-80gb"), engine,
                                 RooflineCoefficients(lora=CPU_LIKE.lora))
    else:
        model = LinearStepTime(CPU_LIKE, engine)
    rows = [(0.0, 8.0, 800.0, 1.0, 3.0), (512.0, 0.0, 512.0, 0.0, 0.0),
            (256.0, 64.0, 9000.0, 2.0, 300.0), (0.0, 128.0, 4e4, 3.0, 128.0)]
    cols = [np.array(c) for c in zip(*rows, strict=True)]
    assert model.predict(*cols).tolist() == [model.predict(*r) for r in rows]
    default = [model.predict(*r[:4]) for r in rows]
    assert model.predict(*cols[:4]).tolist() == default
    assert model.predict(0.0, 8.0, 800.0, 1.0, 8.0) > model.predict(0.0, 8.0, 800.0, 1.0, 0.0)


def test_roofline_default_profile_ignores_lora_tokens() -> None:
    profile = load_profile("roofline-default")
    m = profile.step_model(get_model("llama-3.1-8b"), get_gpu("a100-80gb"), EngineConfig())
    assert m.predict(256.0, 32.0, 9000.0, 2.0) == m.predict(256.0, 32.0, 9000.0, 2.0, 7.0)


def test_lora_features() -> None:
    lora, active = lora_features(np.array([10.0, 10.0, 5.0]), np.array([0.0, 2.0, 1.0]), None)
    assert lora.tolist() == [0.0, 10.0, 5.0] and active.tolist() == [0.0, 1.0, 1.0]
    assert lora_features(10.0, 1.0, 0.0) == (0.0, 0.0)


@pytest.mark.parametrize("fast_path", [False, True])
def test_engine_counts_lora_tokens_of_prefill_and_decode(fast_path: bool) -> None:
    engine = make_engine(fast_path=fast_path)
    recording = Recording(LinearStepTime(CPU_LIKE, engine.config))
    engine.step_model = recording
    engine.add_request(make_request("a", prompt=8, max_tokens=4))
    engine.add_request(make_request(None, prompt=12, max_tokens=6))
    run_to_completion(engine)
    calls = recording.calls
    # Step 0: both prompts (8 of them LoRA); then 3 decode steps of both (1 LoRA token),
    # then 2 of the base request alone (no LoRA token, no adapter).
    assert [(c[0], c[1], c[3], c[4]) for c in calls] == (
        [(20.0, 0.0, 1.0, 8.0)] + [(0.0, 2.0, 1.0, 1.0)] * 3 + [(0.0, 1.0, 0.0, 0.0)] * 2)
    steps = engine.steps
    assert steps is not None
    assert steps.duration_ns == [round(recording.inner.predict(*c) * 1e9) for c in calls]


def test_mixed_base_and_lora_fast_path_is_bit_identical() -> None:
    profile = CalibrationProfile(name="cpu-like", kind="linear", source={}, linear=CPU_LIKE,
                                 request_overhead_s=0.003)
    sc = parse_scenario({
        "model": "tiny-llama", "gpu": {"name": "cpu", "memory_gib": 24, "kv_cache_space_gib": 1},
        "engine": {"max_loras": 2, "max_cpu_loras": 4, "max_lora_rank": 16,
                   "max_model_len": 512},
        "adapters": [{"name": "base", "rank": 0, "rate": 20.0},
                     {"name": "a", "rank": 8, "rate": 15.0},
                     {"name": "b", "rank": 16, "rate": 10.0},
                     {"name": "c", "rank": 8, "rate": 10.0}],
        "lengths": {"input": {"dist": "uniform", "low": 32, "high": 160},
                    "output": {"dist": "uniform", "low": 16, "high": 48}},
        "arrivals": {"process": "gamma", "cv": 2.0}, "duration_s": 20, "seed": 5})
    sc = replace(sc, profile=profile)
    fast, fast_engine = simulate(sc, fast_path=True, record_steps=True)
    slow, slow_engine = simulate(sc, fast_path=False, record_steps=True)
    assert fast_engine.steps.duration_ns == slow_engine.steps.duration_ns
    assert fast.throughput_tps == slow.throughput_tps and fast.finished > 100
    assert fast_engine.fast_steps > 0
    # The LoRA terms count: the same run with them off is faster.
    plain = replace(sc, profile=replace(profile, linear=replace(CPU_LIKE,
                                                                lora=LoRACoefficients())))
    quick, _ = simulate(plain)
    assert quick.e2e_p50_s < fast.e2e_p50_s


def test_each_request_stalls_the_engine_and_the_fast_path_stays_exact() -> None:
    engine = make_engine(request_stall_ns=3_000_000)
    engine.add_request(make_request("a", prompt=8, max_tokens=2))
    engine.add_request(make_request(None, prompt=8, max_tokens=2))
    run_to_completion(engine)
    plain = make_engine()
    plain.add_request(make_request("a", prompt=8, max_tokens=2))
    plain.add_request(make_request(None, prompt=8, max_tokens=2))
    run_to_completion(plain)
    assert engine.steps is not None and plain.steps is not None
    # Both requests' engine time lands on the first step after they were added.
    assert engine.steps.duration_ns[0] == plain.steps.duration_ns[0] + 6_000_000
    assert engine.steps.duration_ns[1:] == plain.steps.duration_ns[1:]
    # Overloaded (admission closed while requests arrive): stepping and decode runs agree.
    profile = CalibrationProfile(name="cpu-like", kind="linear", source={}, linear=CPU_LIKE,
                                 request_overhead_s=0.003, request_cpu_s=0.004)
    sc = parse_scenario({
        "model": "tiny-llama", "gpu": {"name": "cpu", "memory_gib": 24, "kv_cache_space_gib": 1},
        "engine": {"max_loras": 2, "max_cpu_loras": 4, "max_lora_rank": 16,
                   "max_model_len": 512, "max_num_seqs": 32},
        "adapters": [{"name": "a", "rank": 8, "rate": 60.0}, {"name": "b", "rank": 8,
                                                              "rate": 60.0}],
        "lengths": {"input": {"dist": "uniform", "low": 32, "high": 160},
                    "output": {"dist": "uniform", "low": 16, "high": 48}},
        "arrivals": {"process": "poisson"}, "duration_s": 10, "seed": 2})
    sc = replace(sc, profile=profile)
    fast, fast_engine = simulate(sc, fast_path=True, record_steps=True)
    slow, slow_engine = simulate(sc, fast_path=False, record_steps=True)
    assert fast_engine.steps.duration_ns == slow_engine.steps.duration_ns
    assert fast.throughput_tps == slow.throughput_tps and fast_engine.fast_steps > 0
    assert fast_engine.request_stall_ns == 4_000_000
    without, _ = simulate(replace(sc, profile=replace(profile, request_cpu_s=0.0)))
    assert without.throughput_tps > fast.throughput_tps
