"""Tensor parallelism: how vLLM splits a model over a worker's GPUs, the memory each GPU
holds, the all-reduce term of a step, and the errors a user meets.

Per-GPU shapes are written out tensor by tensor from vLLM 0.32's layers
(``model_executor/layers/linear.py``: ``QKVParallelLinear`` and ``MergedColumnParallelLinear``
split outputs, ``RowParallelLinear`` inputs, KV heads replicated past their count;
``vocab_parallel_embedding.py``; ``lora/layers/*.py`` ``create_lora_weights``).
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from twin.catalog import get_gpu, get_model
from twin.errors import ConfigError, InsufficientMemoryError
from twin.memory import plan_memory, smallest_tensor_parallel
from twin.profile import load_profile
from twin.scenario import parse_scenario
from twin.simulation import simulate
from twin.specs import EngineConfig, ModelSpec
from twin.step_time import RooflineCoefficients, RooflineStepTime

L70 = get_model("llama-3.1-70b")


def _weights_per_gpu(m: ModelSpec, tp: int) -> int:
    """Elements one GPU holds, tensor by tensor (norms replicated)."""
    h, hd, i, v = m.hidden_size, m.head_dim, m.intermediate_size, m.vocab_size
    q = m.num_attention_heads // tp * hd
    kv = max(1, m.num_kv_heads // tp) * hd
    layer = h * q + 2 * h * kv + q * h + 2 * h * (i // tp) + (i // tp) * h + 2 * h
    return m.num_layers * layer + 2 * (v // tp) * h + h


def _lora_slot_per_gpu(m: ModelSpec, tp: int, r: int) -> int:
    h, hd, i, v = m.hidden_size, m.head_dim, m.intermediate_size, m.vocab_size
    q = m.num_attention_heads // tp * hd
    kv = max(1, m.num_kv_heads // tp) * hd
    qkv = 3 * r * h + (q + kv + kv) * r  # lora_a per slice, whole; lora_b this GPU's outputs
    o = r * q + h * r  # row-parallel: lora_a over this GPU's inputs, lora_b whole
    gate_up = 2 * r * h + 2 * (i // tp) * r
    down = r * (i // tp) + h * r
    vocab = v * r + h * r + r * h + v * r  # embedding and logits LoRA stay whole
    return m.num_layers * (qkv + o + gate_up + down) + vocab


@pytest.mark.parametrize("tp", [1, 2, 4, 8, 16])
def test_weights_kv_and_lora_slots_per_gpu_follow_vllms_split(tp: int) -> None:
    weights = L70.weight_bytes_per_gpu(tp)
    exact = _weights_per_gpu(L70, tp) * 2
    assert abs(weights - exact) / exact < 1e-3  # norms counted split, not replicated
    assert L70.kv_heads_per_gpu(tp) == max(1, 8 // tp)
    assert L70.kv_bytes_per_token_per_gpu(tp) == 2 * 80 * max(1, 8 // tp) * 128 * 2
    assert L70.lora_slot_bytes(16, tp) == _lora_slot_per_gpu(L70, tp, 16) * 2


def test_tp_one_is_the_whole_model() -> None:
    assert L70.weight_bytes_per_gpu(1) == L70.weight_bytes
    assert L70.kv_bytes_per_token_per_gpu(1) == L70.kv_bytes_per_token


def test_a_split_vllm_refuses_is_a_config_error_in_its_words() -> None:
    with pytest.raises(ConfigError) as err:
        L70.check_tensor_parallel(3)
    assert err.value.field == "tensor_parallel_size"
    assert err.value.message == ("Total number of attention heads (64) must be divisible by "
                                 "tensor parallel size (3).")
    qwen = replace(L70, num_attention_heads=24, num_kv_heads=4)
    qwen.check_tensor_parallel(8)  # 4 KV heads replicated twice
    with pytest.raises(ConfigError, match="KV heads"):
        replace(L70, num_attention_heads=48, num_kv_heads=8).check_tensor_parallel(12)
    with pytest.raises(ConfigError):
        plan_memory(L70, get_gpu("a100-80gb"), EngineConfig(tensor_parallel_size=3))


def test_memory_at_tp_two_is_each_gpus_share() -> None:
    gpu = get_gpu("a100-80gb")
    one = plan_memory(get_model("llama-3.1-8b"), gpu, EngineConfig(max_loras=8))
    two = plan_memory(get_model("llama-3.1-8b"), gpu,
                      EngineConfig(max_loras=8, tensor_parallel_size=2))
    assert two.weight_bytes * 2 == pytest.approx(one.weight_bytes, rel=1e-4)
    assert two.bytes_per_block * 2 == one.bytes_per_block
    # Each GPU frees half the weights and keeps the same memory: over twice the KV tokens.
    assert two.num_blocks > 2 * one.num_blocks


def test_a_model_too_big_for_the_tp_given_names_the_smallest_that_fits() -> None:
    gpu = get_gpu("a100-80gb")
    with pytest.raises(InsufficientMemoryError) as err:
        plan_memory(L70, gpu, EngineConfig(max_loras=8))
    assert err.value.smallest_tensor_parallel == 2
    assert str(err.value).endswith("The smallest tensor_parallel_size that fits is 2.")
    plan_memory(L70, gpu, EngineConfig(max_loras=8, tensor_parallel_size=2))
    assert smallest_tensor_parallel(L70, get_gpu("l4"), EngineConfig(max_loras=8)) == 8
    assert smallest_tensor_parallel(L70, get_gpu("l4"), EngineConfig(max_loras=8),
                                    largest=4) is None


def _step(gpu_name: str, tp: int, interconnect: float | None = None, **coeffs: float):
    gpu = get_gpu(gpu_name)
    if interconnect is not None:
        gpu = replace(gpu, interconnect_gbps=interconnect)
    return RooflineStepTime(L70, gpu, EngineConfig(tensor_parallel_size=tp, enable_lora=False),
                            RooflineCoefficients(**coeffs))


@pytest.mark.parametrize("tokens", [1.0, 256.0, 2048.0])
def test_the_all_reduce_term_is_two_ring_all_reduces_per_layer(tokens: float) -> None:
    lat, eff = 8e-6, 0.7
    fast, slow = _step("a100-80gb", 4, 600.0), _step("a100-80gb", 4, 64.0)
    args = (tokens, 0.0, 0.0, 0.0)
    per_link = [2 * 80 * (lat + 2 * 3 / 4 * tokens * 8192 * 2 / (bw / 2 * 1e9 * eff))
                for bw in (600.0, 64.0)]
    assert slow.predict(*args) - fast.predict(*args) == pytest.approx(
        per_link[1] - per_link[0], rel=1e-9)
    no_latency = _step("a100-80gb", 4, 600.0, allreduce_latency_s=0.0)
    assert fast.predict(*args) - no_latency.predict(*args) == pytest.approx(2 * 80 * lat)


def test_one_gpu_has_no_all_reduce() -> None:
    args = (512.0, 8.0, 8000.0, 0.0)
    one = RooflineStepTime(get_model("llama-3.1-8b"), get_gpu("a100-80gb"), EngineConfig(),
                           RooflineCoefficients())
    other = RooflineStepTime(get_model("llama-3.1-8b"),
                             replace(get_gpu("a100-80gb"), interconnect_gbps=1.0),
                             EngineConfig(), RooflineCoefficients())
    assert one.predict(*args) == other.predict(*args)


def test_more_gpus_make_a_decode_step_faster_until_the_all_reduces_dominate() -> None:
    profile = load_profile("roofline")
    gpu, model = get_gpu("a100-80gb"), get_model("llama-3.1-8b")
    times = [profile.step_model(model, gpu, EngineConfig(tensor_parallel_size=tp))
             .predict(0.0, 64.0, 64_000.0, 1.0) for tp in (1, 2, 4, 8)]
    assert times[0] > times[1] > times[2]
    assert times[1] / times[2] < times[0] / times[1]  # diminishing returns


def test_a_measured_linear_profile_refuses_tensor_parallelism() -> None:
    profile = load_profile("cpu-tiny-llama")
    with pytest.raises(ConfigError) as err:
        profile.step_model(get_model("tiny-llama"), get_gpu("a100-80gb"),
                           EngineConfig(tensor_parallel_size=2))
    assert err.value.field == "engine.tensor_parallel_size"


def _run_70b(tp: int) -> dict:
    sc = parse_scenario({
        "model": "llama-3.1-70b", "gpu": "a100-80gb",
        "engine": {"max_loras": 4, "max_lora_rank": 16, "tensor_parallel_size": tp},
        "adapters": {"count": 4, "ranks": [8, 16], "rate_total": 2.0},
        "duration_s": 30, "seed": 3})
    assert sc.engine.tensor_parallel_size == tp
    return simulate(sc)[0].to_dict()


def test_a_70b_scenario_at_tp_four_runs_in_the_twin() -> None:
    two, four = _run_70b(2), _run_70b(4)
    assert four["finished"] >= 0.95 * four["requests"] and not four["starved"]
    # Four GPUs hold over twice the KV of two, and step faster.
    assert four["kv_blocks"] > 2 * two["kv_blocks"]
    assert four["itl_p50_s"] < two["itl_p50_s"]
