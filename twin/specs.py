"""Frozen specs of what a worker runs: the base model, the GPU, vLLM's engine options, adapters.

Engine option names and defaults are vLLM 0.32's (``vllm/config/lora.py``,
``vllm/config/cache.py``, ``vllm/engine/arg_utils.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from twin.errors import ConfigError

__all__ = [
    "ALLOWED_LORA_RANKS",
    "GIB",
    "MAX_ENGINE_INT",
    "AdapterSpec",
    "EngineConfig",
    "GpuSpec",
    "LinearModule",
    "ModelSpec",
    "default_engine_for",
]

GIB = 1 << 30

# vllm/config/lora.py: MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]
# No engine option is larger (vLLM sets no bound; this one keeps every product of options
# exact and every loop over them finite): 16.7 million tokens, sequences or LoRA slots.
MAX_ENGINE_INT = 1 << 24
ALLOWED_LORA_RANKS: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def _positive(field_name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(field_name, f"must be > 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class LinearModule:
    """One LoRA-capable linear layer of a decoder layer, as vLLM wraps it.

    ``output_slices`` lists the packed outputs of a merged layer (``qkv_proj`` is q, k, v;
    ``gate_up_proj`` is gate, up): vLLM keeps one ``lora_a`` of ``input_size`` and one ``lora_b``
    per slice (``vllm/lora/layers/column_parallel_linear.py``).
    """

    name: str
    input_size: int
    output_slices: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelSpec:
    """A decoder-only base model (Llama architecture)."""

    name: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    num_params: int
    dtype_bytes: int = 2

    def __post_init__(self) -> None:
        for name in ("num_layers", "hidden_size", "num_attention_heads", "num_kv_heads",
                     "head_dim", "intermediate_size", "vocab_size", "num_params", "dtype_bytes"):
            _positive(name, getattr(self, name))
        if self.num_attention_heads % self.num_kv_heads:
            raise ConfigError("num_kv_heads", "must divide num_attention_heads")

    @property
    def weight_bytes(self) -> int:
        return self.num_params * self.dtype_bytes

    def check_tensor_parallel(self, tp: int) -> None:
        """``ConfigError`` naming ``tensor_parallel_size`` when vLLM cannot split this model
        ``tp`` ways: attention heads must divide evenly (``vllm/config/model.py``
        ``verify_with_parallel_config``, its words), and KV heads must split evenly or be
        replicated evenly (``QKVParallelLinear``'s ``divide`` in
        ``vllm/model_executor/layers/linear.py``)."""
        if self.num_attention_heads % tp:
            raise ConfigError("tensor_parallel_size", (
                f"Total number of attention heads ({self.num_attention_heads}) must be "
                f"divisible by tensor parallel size ({tp})."))
        if (tp % self.num_kv_heads) if tp >= self.num_kv_heads else (self.num_kv_heads % tp):
            raise ConfigError("tensor_parallel_size", (
                f"the {self.num_kv_heads} KV heads cannot be split or replicated evenly "
                f"over {tp} GPUs"))

    def kv_heads_per_gpu(self, tp: int = 1) -> int:
        """KV heads each GPU holds: split ``tp`` ways, replicated when ``tp`` exceeds them
        (``vllm/config/model.py`` ``get_num_kv_heads``)."""
        return max(1, self.num_kv_heads // tp)

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of one token over all layers (``kv_cache_utils`` page size / block_size)."""
        return self.kv_bytes_per_token_per_gpu(1)

    def kv_bytes_per_token_per_gpu(self, tp: int) -> int:
        """K and V of one token on each of ``tp`` GPUs."""
        return 2 * self.num_layers * self.kv_heads_per_gpu(tp) * self.head_dim * self.dtype_bytes

    def weight_bytes_per_gpu(self, tp: int) -> int:
        """Weights on each GPU at tensor parallelism ``tp``: every matrix split ``tp`` ways
        (vocabulary-parallel embeddings and LM head, column/row-parallel layers), the K and
        V projections held whole per KV head a GPU keeps (replicated past the KV head count).
        Norm weights are replicated in vLLM; they are counted split here (under 0.1% of a
        model's weights)."""
        kv_params = 2 * self.num_layers * self.hidden_size * self.head_dim
        extra = kv_params * (self.kv_heads_per_gpu(tp) - self.num_kv_heads / tp)
        return int((self.num_params / tp + extra) * self.dtype_bytes)

    @property
    def lora_modules(self) -> tuple[LinearModule, ...]:
        """The linear layers vLLM wraps with LoRA in one Llama decoder layer."""
        q = self.num_attention_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        h, i = self.hidden_size, self.intermediate_size
        return (
            LinearModule("qkv_proj", h, (q, kv, kv)),
            LinearModule("o_proj", q, (h,)),
            LinearModule("gate_up_proj", h, (i, i)),
            LinearModule("down_proj", i, (h,)),
        )

    def lora_slot_bytes(self, rank: int, tp: int = 1) -> int:
        """GPU bytes of one LoRA slot at ``rank`` on each of ``tp`` GPUs: every wrapped linear
        layer plus the embedding and LM head, ``L*r*(7h + 2q + 2kv + 3I)`` per decoder layer
        and ``2*L*r*(V + h)`` at ``tp = 1`` (``create_lora_weights`` in
        ``vllm/lora/layers/base_linear.py``, ``vocab_parallel_embedding.py`` and
        ``logits_processor.py``; in the model dtype). Under tensor parallelism a
        column-parallel layer (``qkv_proj``, ``gate_up_proj``) keeps ``lora_a`` whole and its
        share of ``lora_b``'s outputs; a row-parallel one (``o_proj``, ``down_proj``) its
        share of ``lora_a``'s inputs and ``lora_b`` whole; the vocabulary's stay whole."""
        q = self.num_attention_heads * self.head_dim // tp
        kv = self.kv_heads_per_gpu(tp) * self.head_dim
        h, i = self.hidden_size, self.intermediate_size
        per_layer = ((3 * h + q + 2 * kv)  # qkv_proj: lora_a per slice, lora_b's share
                     + (q + h)  # o_proj: lora_a over this GPU's inputs, lora_b whole
                     + (2 * h + 2 * (i // tp))  # gate_up_proj
                     + (i // tp + h))  # down_proj
        vocab = 2 * (self.vocab_size + self.hidden_size)
        return (per_layer * self.num_layers + vocab) * rank * self.dtype_bytes

    def adapter_bytes(self, rank: int, target_fraction: float = 1.0) -> int:
        """Size of an adapter's weights on disk/CPU at ``rank`` (all modules by default)."""
        return int(self.lora_slot_bytes(rank) * target_fraction)

    def matmul_flops_per_token(self) -> int:
        """Dense matmul FLOPs of one token through the model (2 x non-embedding weights)."""
        per_layer = sum(m.input_size * sum(m.output_slices) for m in self.lora_modules)
        return 2 * (per_layer * self.num_layers + self.hidden_size * self.vocab_size)


@dataclass(frozen=True, slots=True, kw_only=True)
class GpuSpec:
    """An accelerator: total memory plus the rates the roofline step-time model needs.

    ``kv_cache_space_bytes`` is set for vLLM's CPU build, where the KV space is given directly
    (``VLLM_CPU_KVCACHE_SPACE``) instead of derived from ``gpu_memory_utilization``.
    ``interconnect_gbps`` is the datasheet's GPU-to-GPU bandwidth, both directions together
    (NVLink, else PCIe): tensor parallelism's all-reduces cross it.
    """

    name: str
    memory_bytes: int
    peak_tflops: float = 312.0
    bandwidth_gbps: float = 2039.0
    interconnect_gbps: float = 64.0  # PCIe 4.0 x16
    kv_cache_space_bytes: int | None = None

    def __post_init__(self) -> None:
        _positive("memory_gib", self.memory_bytes)
        _positive("peak_tflops", self.peak_tflops)
        _positive("bandwidth_gbps", self.bandwidth_gbps)
        _positive("interconnect_gbps", self.interconnect_gbps)
        if self.kv_cache_space_bytes is not None:
            _positive("kv_cache_space_gib", self.kv_cache_space_bytes)

    @property
    def is_cpu(self) -> bool:
        return self.kv_cache_space_bytes is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineConfig:
    """vLLM engine options of one worker, under vLLM's flag names. A worker runs on
    ``tensor_parallel_size`` GPUs.

    ``max_cpu_loras=None`` means "same as ``max_loras``", as in vLLM (``LoRAConfig``).

    Examples
    --------
    >>> EngineConfig(max_loras=4).cpu_loras
    4
    >>> EngineConfig(max_loras=4, max_cpu_loras=2)
    Traceback (most recent call last):
    ...
    twin.errors.ConfigError: max_cpu_loras: max_cpu_loras (2) must be >= max_loras (4).
    """

    max_num_seqs: int = 256
    max_num_batched_tokens: int = 2048
    max_loras: int = 1
    max_cpu_loras: int | None = None
    max_lora_rank: int = 16
    enable_lora: bool = True
    gpu_memory_utilization: float = 0.92
    block_size: int = 16
    max_model_len: int = 4096
    enable_chunked_prefill: bool = True
    long_prefill_token_threshold: int = 0
    tensor_parallel_size: int = 1

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "max_loras", "block_size",
                     "max_model_len", "tensor_parallel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= MAX_ENGINE_INT:
                raise ConfigError(name, f"must be an integer in [1, {MAX_ENGINE_INT}], "
                                  f"got {value!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ConfigError("gpu_memory_utilization",
                              f"must be in (0, 1], got {self.gpu_memory_utilization!r}")
        if self.max_lora_rank not in ALLOWED_LORA_RANKS:
            # vllm/config/lora.py validates with a Literal of the allowed ranks.
            raise ConfigError("max_lora_rank", f"must be one of {list(ALLOWED_LORA_RANKS)}, "
                              f"got {self.max_lora_rank!r}")
        if self.max_cpu_loras is not None and (not isinstance(self.max_cpu_loras, int)
                                               or self.max_cpu_loras > MAX_ENGINE_INT):
            raise ConfigError("max_cpu_loras", f"must be an integer in [1, {MAX_ENGINE_INT}], "
                              f"got {self.max_cpu_loras!r}")
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            # vllm/config/lora.py LoRAConfig.verify_with_... : same wording.
            raise ConfigError("max_cpu_loras", f"max_cpu_loras ({self.max_cpu_loras}) must be "
                              f">= max_loras ({self.max_loras}).")
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise ConfigError("max_num_batched_tokens",
                              f"({self.max_num_batched_tokens}) is smaller than max_model_len "
                              f"({self.max_model_len}) with chunked prefill disabled")
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise ConfigError("max_num_batched_tokens",
                              f"({self.max_num_batched_tokens}) must be >= max_num_seqs "
                              f"({self.max_num_seqs})")

    @property
    def cpu_loras(self) -> int:
        """The CPU LoRA cache capacity in effect."""
        return self.max_loras if self.max_cpu_loras is None else self.max_cpu_loras


@dataclass(frozen=True, slots=True, kw_only=True)
class AdapterSpec:
    """A LoRA adapter of the base model. ``size_bytes=0`` means "derive from the rank"."""

    name: str
    rank: int
    size_bytes: int = 0

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("name", "must be a non-empty string")
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError("rank", f"must be an integer >= 1, got {self.rank!r}")


def default_engine_for(gpu: GpuSpec, **overrides: object) -> EngineConfig:
    """vLLM's API-server defaults for ``max_num_seqs``/``max_num_batched_tokens`` on ``gpu``.

    ``vllm/engine/arg_utils.py`` (``_get_default_max_num_seqs_and_batched_tokens``): 1024 and
    8192 on >= 70 GiB GPUs that are not A100s, 128 and 2048 on the CPU build, 256 and 2048
    otherwise; blocks of 16 tokens, 128 on the CPU build.
    """
    block = 16
    if gpu.is_cpu:
        # vllm/platforms/cpu.py: the CPU backend's default block size is 128.
        seqs, tokens, block = 128, 2048, 128
    elif gpu.memory_bytes >= 70 * GIB and "a100" not in gpu.name.lower():
        seqs, tokens = 1024, 8192
    else:
        seqs, tokens = 256, 2048
    values: dict[str, object] = {"max_num_seqs": seqs, "max_num_batched_tokens": tokens,
                                 "block_size": block}
    values.update(overrides)
    return EngineConfig(**values)  # type: ignore[arg-type]
