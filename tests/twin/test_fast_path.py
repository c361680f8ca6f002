"""Runs of decode steps advanced at once equal stepping one step at a time, to the ns."""

from __future__ import annotations

import pytest

from twin.scenario import parse_scenario
from twin.simulation import simulate


def scenario(**over: object):
    data: dict[str, object] = {
        "model": "llama-3.1-8b", "gpu": "a100-80gb", "profile": "roofline-default",
        "engine": {"max_num_seqs": 64, "max_num_batched_tokens": 1024, "max_loras": 4,
                   "max_cpu_loras": 8, "max_lora_rank": 16, "max_model_len": 4096},
        "adapters": {"count": 12, "ranks": [8, 16], "rate_total": 6.0, "zipf": 1.0},
        "arrivals": {"process": "gamma", "cv": 2.0},
        "lengths": {"input": {"dist": "lognormal", "mean": 400, "std": 300},
                    "output": {"dist": "lognormal", "mean": 150, "std": 100}},
        "duration_s": 60, "seed": 3}
    data.update(over)
    return parse_scenario(data)


def timeline(engine):
    return sorted((r.request_id, r.first_scheduled_ns, r.first_token_ns, r.finish_ns,
                   r.num_output_tokens, r.num_preemptions) for r in engine.requests.values())


@pytest.mark.parametrize("over", [
    {},  # under load, LoRA swaps
    {"adapters": {"count": 12, "ranks": [8], "rate_total": 40.0}},  # saturated
    # A small KV cache: preemptions and KV-blocked admission.
    {"gpu": {"name": "tight", "memory_gib": 17.9}, "engine": {
        "max_num_seqs": 64, "max_num_batched_tokens": 1024, "max_loras": 2,
        "max_lora_rank": 16, "max_model_len": 4096, "gpu_memory_utilization": 0.99}},
])
def test_fast_path_equals_step_by_step(over: dict[str, object]) -> None:
    sc = scenario(**over)
    fast, fast_engine = simulate(sc, fast_path=True, record_steps=True)
    slow, slow_engine = simulate(sc, fast_path=False, record_steps=True)
    assert timeline(fast_engine) == timeline(slow_engine)
    assert fast_engine.steps.duration_ns == slow_engine.steps.duration_ns
    assert fast_engine.steps.start_ns == slow_engine.steps.start_ns
    assert fast.throughput_tps == slow.throughput_tps
    assert fast.preemptions == slow.preemptions
    assert fast.finished > 0
    assert fast_engine.fast_steps > 0 and slow_engine.fast_steps == 0


def test_tight_memory_scenario_preempts() -> None:
    sc = scenario(gpu={"name": "tight", "memory_gib": 17.9}, engine={
        "max_num_seqs": 64, "max_num_batched_tokens": 1024, "max_loras": 2,
        "max_lora_rank": 16, "max_model_len": 4096, "gpu_memory_utilization": 0.99})
    result, _ = simulate(sc)
    assert result.preemptions > 0  # the case the equivalence test above must cover


def test_same_seed_same_result_and_other_seed_differs() -> None:
    a, _ = simulate(scenario())
    b, _ = simulate(scenario())
    c, _ = simulate(scenario(seed=4))
    strip = lambda r: {k: v for k, v in r.to_dict().items() if k != "wall_seconds"}  # noqa: E731
    assert strip(a) == strip(b)
    assert strip(a) != strip(c)
