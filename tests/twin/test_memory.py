"""Start-up memory: vLLM 0.32's KV-cache arithmetic, its refusal messages, and the H100 reference.

vLLM code the expectations come from:

- ``v1/worker/utils.py`` ``request_memory``: requested = ceil(total * gpu_memory_utilization);
- ``v1/core/kv_cache_utils.py`` ``get_kv_cache_config_from_groups``:
  num_blocks = available // bytes_per_block;
- ``v1/core/kv_cache_utils.py`` ``get_kv_cache_configs`` holds one block back (the block pool's
  null block) before ``_check_enough_kv_cache_memory`` compares against
  cdiv(max_model_len, block_size) blocks;
- ``vllm/lora/layers/base_linear.py`` (and embedding / logits processor) ``create_lora_weights``:
  one slot is lora_a + lora_b of every wrapped linear layer, in the model dtype.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest

from twin.catalog import get_gpu, get_model
from twin.errors import ConfigError, InsufficientMemoryError
from twin.memory import MemoryOverheads, MemoryPlan, capacity_log_line, plan_memory
from twin.profile import load_profile
from twin.specs import GIB, EngineConfig, GpuSpec

REFERENCE = json.loads(
    (Path(__file__).resolve().parents[2] / "bench" / "data" / "h100_reference.json").read_text())
LLAMA = get_model("llama-3.1-8b")
MIB = 1 << 20
# 32 layers * (K and V) * 16 tokens * 8 KV heads * head_dim 128 * bf16.
LLAMA_BYTES_PER_BLOCK = 32 * 2 * 16 * 8 * 128 * 2


def _cpu_gpu(kv_space: int) -> GpuSpec:
    """vLLM's CPU backend: the KV space is given directly (VLLM_CPU_KVCACHE_SPACE)."""
    return GpuSpec(name="cpu", memory_bytes=64 * GIB, kv_cache_space_bytes=kv_space)


# -- ModelSpec ------------------------------------------------------------------------------

def test_llama_bytes_per_block_is_two_mib() -> None:
    assert LLAMA_BYTES_PER_BLOCK == 2 * MIB
    assert LLAMA.kv_bytes_per_token * 16 == LLAMA_BYTES_PER_BLOCK


@pytest.mark.parametrize(("rank", "literal"),
                         [(8, 46_178_304), (16, 92_356_608), (32, 184_713_216)])
def test_lora_slot_bytes_matches_vllm_buffer_formula(rank: int, literal: int) -> None:
    h, q, kv, inter, vocab = 4096, 32 * 128, 8 * 128, 14336, 128256
    per_layer = rank * (7 * h + 2 * q + 2 * kv + 3 * inter)  # qkv, o, gate_up, down
    embed_and_head = 2 * rank * (vocab + h)
    expected = (per_layer * 32 + embed_and_head) * 2  # bf16
    assert LLAMA.lora_slot_bytes(rank) == expected == literal  # 2,886,144 elements per rank


# -- EngineConfig ---------------------------------------------------------------------------

def test_engine_config_defaults() -> None:
    cfg = EngineConfig()
    assert (cfg.max_loras, cfg.max_lora_rank, cfg.gpu_memory_utilization) == (1, 16, 0.92)
    assert cfg.cpu_loras == 1


def test_max_cpu_loras_below_max_loras_is_rejected_with_vllms_message() -> None:
    with pytest.raises(ConfigError) as info:
        EngineConfig(max_loras=4, max_cpu_loras=2)
    assert info.value.field == "max_cpu_loras"
    assert info.value.message == "max_cpu_loras (2) must be >= max_loras (4)."


@pytest.mark.parametrize("rank", [0, 2, 4, 12, 24, 100, 1024])
def test_lora_rank_outside_vllms_literal_is_rejected(rank: int) -> None:
    with pytest.raises(ConfigError) as info:
        EngineConfig(max_lora_rank=rank)
    assert info.value.field == "max_lora_rank"
    for allowed in (1, 8, 16, 32, 64, 128, 256, 320, 512):
        assert EngineConfig(max_lora_rank=allowed).max_lora_rank == allowed


# -- plan_memory arithmetic -------------------------------------------------------------------

def test_gpu_plan_arithmetic_with_explicit_overheads() -> None:
    ov = MemoryOverheads(non_torch_bytes=700 * MIB, activation_bytes_per_token=1000.0,
                         sampler_bytes_per_seq=3000.0, lora_fixed_bytes=50 * MIB,
                         lora_slot_extra_bytes=3 * MIB, cudagraph_bytes=200 * MIB)
    engine = EngineConfig(max_loras=4, max_lora_rank=32, max_num_seqs=64,
                          max_num_batched_tokens=512, gpu_memory_utilization=0.85)
    gpu = get_gpu("a100-80gb")
    plan = plan_memory(LLAMA, gpu, engine, ov)

    requested = math.ceil(gpu.memory_bytes * 0.85)
    lora = 4 * (LLAMA.lora_slot_bytes(32) + 3 * MIB) + 50 * MIB
    activation = 1000 * 512 + 3000 * 64
    available = requested - LLAMA.weight_bytes - lora - activation - 900 * MIB
    assert plan.requested_bytes == requested
    assert plan.lora_bytes == lora
    assert plan.activation_bytes == activation
    assert plan.kv_cache_bytes == available
    assert plan.bytes_per_block == LLAMA_BYTES_PER_BLOCK
    assert plan.num_blocks == available // LLAMA_BYTES_PER_BLOCK
    assert plan.usable_blocks == plan.num_blocks - 1


def test_lora_disabled_reserves_no_slots() -> None:
    engine = EngineConfig(max_loras=64, max_lora_rank=64, enable_lora=False)
    plan = plan_memory(LLAMA, get_gpu("a100-80gb"), engine)
    assert plan.lora_bytes == 0


@pytest.mark.parametrize("space_blocks", [257, 1000, 12345])
def test_cpu_backend_blocks_come_from_the_kv_space(space_blocks: int) -> None:
    space = space_blocks * LLAMA_BYTES_PER_BLOCK + 12345  # a partial block is dropped
    plan = plan_memory(LLAMA, _cpu_gpu(space), EngineConfig(max_loras=8))
    assert plan.num_blocks == space // LLAMA_BYTES_PER_BLOCK == space_blocks
    assert plan.kv_cache_bytes == space


def test_null_block_is_held_back_from_the_start_up_check() -> None:
    engine = EngineConfig(max_model_len=4096)  # 256 blocks of 16 tokens
    plan = plan_memory(LLAMA, _cpu_gpu(257 * LLAMA_BYTES_PER_BLOCK), engine)
    assert plan.num_blocks == 257
    with pytest.raises(InsufficientMemoryError):
        plan_memory(LLAMA, _cpu_gpu(257 * LLAMA_BYTES_PER_BLOCK - 1), engine)


def test_max_seq_len_error_message_is_vllms() -> None:
    engine = EngineConfig(max_model_len=4096)
    with pytest.raises(InsufficientMemoryError) as info:
        plan_memory(LLAMA, _cpu_gpu(10 * LLAMA_BYTES_PER_BLOCK), engine)
    text = str(info.value)
    assert text.startswith("memory error: To serve at least one request with the model's "
                           "max seq len (4096), (")
    # 256 blocks * 2 MiB = 0.5 GiB needed; 9 blocks (one is the null block) = 18 MiB left.
    assert "(0.5 GiB KV cache is needed, which is larger than the available KV cache memory " \
           "(0.02 GiB)." in text
    assert "Based on the available memory, the estimated maximum model length is 144. " in text
    assert "decreasing `max_model_len`" in text
    assert info.value.needed_bytes == 256 * LLAMA_BYTES_PER_BLOCK
    assert info.value.available_bytes == 9 * LLAMA_BYTES_PER_BLOCK


def test_max_seq_len_error_omits_the_estimate_when_no_block_is_left() -> None:
    with pytest.raises(InsufficientMemoryError) as info:
        plan_memory(LLAMA, _cpu_gpu(LLAMA_BYTES_PER_BLOCK), EngineConfig())
    assert "GiB KV cache is needed" in str(info.value)
    assert "estimated maximum model length" not in str(info.value)


def test_no_available_memory_message_when_weights_do_not_fit() -> None:
    small = GpuSpec(name="16g", memory_bytes=16 * GIB)  # 0.92 * 16 GiB < 14.96 GiB + overheads
    with pytest.raises(InsufficientMemoryError) as info:
        plan_memory(LLAMA, small, EngineConfig())
    assert str(info.value).startswith(
        "memory error: No available memory for the cache blocks. Try increasing "
        "`gpu_memory_utilization` when initializing the engine")
    assert info.value.available_bytes <= 0


# -- capacity_log_line ------------------------------------------------------------------------

def _plan(num_blocks: int, max_model_len: int, block_size: int = 16) -> MemoryPlan:
    return MemoryPlan(total_bytes=0, requested_bytes=0, weight_bytes=0, lora_bytes=0,
                      activation_bytes=0, other_bytes=0, kv_cache_bytes=0, bytes_per_block=1,
                      num_blocks=num_blocks, block_size=block_size, max_model_len=max_model_len)


def test_capacity_log_line_for_the_reference_8_8_run() -> None:
    # The reference logged "GPU KV cache size: 305,104 tokens ... 2.33x" (19,069 blocks).
    assert capacity_log_line(_plan(19069, 131072)) == (
        "GPU KV cache size: 305,104 tokens, Maximum concurrency for 131,072 tokens per "
        "request: 2.33x")


def test_capacity_log_line_rounds_requests_up_to_whole_blocks_and_names_the_device() -> None:
    # 1000 tokens need 63 blocks: 630 blocks serve 10 requests, i.e. 10,000 tokens.
    assert capacity_log_line(_plan(630, 1000), device="CPU") == (
        "CPU KV cache size: 10,000 tokens, Maximum concurrency for 1,000 tokens per "
        "request: 10.00x")


# -- monotonic properties -----------------------------------------------------------------------

def _a100_blocks(max_loras: int, rank: int) -> int:
    engine = EngineConfig(max_loras=max_loras, max_lora_rank=rank, max_cpu_loras=max_loras)
    return plan_memory(LLAMA, get_gpu("a100-80gb"), engine).num_blocks


def test_more_lora_slots_or_a_larger_rank_leave_fewer_blocks() -> None:
    grid = [[_a100_blocks(n, r) for r in (8, 16, 32, 64, 128)] for n in (1, 2, 8, 32, 64)]
    for row in grid:  # one max_loras, growing rank
        assert all(a > b for a, b in itertools.pairwise(row)), row
    for col in zip(*grid, strict=True):  # one rank, growing max_loras
        assert all(a > b for a, b in itertools.pairwise(col)), col


# -- against the H100 reference's measured KV capacity ----------------------------------------

H100_PROFILE = load_profile("h100-64gb-llama-3.1-8b")
POINTS = REFERENCE["kv_capacity"]
FEASIBLE = [p for p in POINTS if p["feasible"]]
INFEASIBLE = [p for p in POINTS if not p["feasible"]]


def _reference_plan(max_loras: int, rank: int) -> MemoryPlan:
    engine = EngineConfig(max_loras=max_loras, max_lora_rank=rank, gpu_memory_utilization=0.9,
                          max_model_len=131072, max_num_batched_tokens=2048, max_num_seqs=2048,
                          block_size=16)
    return plan_memory(LLAMA, get_gpu("h100-64gb"), engine, H100_PROFILE.memory)


def _pid(p: dict[str, object]) -> str:
    return f"{p['max_loras']}x r{p['max_lora_rank']}"


def test_reference_engine_settings_are_the_ones_modelled() -> None:
    s = REFERENCE["engine_settings"]
    assert (s["gpu_memory_utilization"], s["max_model_len"], s["max_num_batched_tokens"],
            s["block_size"], s["max_num_seqs"]["kv_capacity_runs"]) == (0.9, 131072, 2048, 16,
                                                                        2048)
    assert len(FEASIBLE) >= 25 and len(INFEASIBLE) >= 10


@pytest.mark.parametrize("point", FEASIBLE, ids=_pid)
def test_kv_tokens_within_5_percent_of_the_reference(point: dict[str, int]) -> None:
    got = _reference_plan(point["max_loras"], point["max_lora_rank"]).kv_cache_tokens
    err = got / point["kv_tokens"] - 1
    assert abs(err) <= 0.05, f"twin {got:,} vs measured {point['kv_tokens']:,} ({err:+.2%})"


def test_max_kv_error_over_all_feasible_reference_points() -> None:
    errors = {_pid(p): _reference_plan(p["max_loras"], p["max_lora_rank"]).kv_cache_tokens
              / p["kv_tokens"] - 1 for p in FEASIBLE}
    worst = max(errors, key=lambda k: abs(errors[k]))
    assert abs(errors[worst]) <= 0.05, f"max error {errors[worst]:+.2%} at {worst}"


@pytest.mark.parametrize("point", INFEASIBLE, ids=_pid)
def test_reference_start_up_failures_are_refused(point: dict[str, int]) -> None:
    with pytest.raises(InsufficientMemoryError):
        _reference_plan(point["max_loras"], point["max_lora_rank"])


def test_largest_feasible_max_loras_per_rank_matches_the_reference() -> None:
    largest: dict[int, int] = {}
    for p in POINTS:
        try:
            _reference_plan(p["max_loras"], p["max_lora_rank"])
        except InsufficientMemoryError:
            continue
        rank = p["max_lora_rank"]
        largest[rank] = max(largest.get(rank, 0), p["max_loras"])
    assert largest == {8: 384, 16: 224, 32: 96}
    published = REFERENCE["kv_capacity_largest_feasible_max_loras_llama_131072"]
    assert largest == {int(r): published[r] for r in ("8", "16", "32")}
