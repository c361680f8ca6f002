"""Bundled model and GPU specs, by name.

Model shapes are the models' ``config.json`` values. GPU memory is what ``torch.cuda``
reports as total capacity (the 64 GB H100 figure is from the reference's own OOM message);
peak dense BF16 TFLOP/s and memory bandwidth are the vendors' datasheet figures (NVIDIA A100
datasheet: 312 TFLOP/s, 2,039 GB/s for the 80 GB SXM; H100 SXM datasheet: 989 TFLOP/s dense,
3,350 GB/s; L40S datasheet: 362 TFLOP/s dense, 864 GB/s).
"""

from __future__ import annotations

from twin.errors import ConfigError
from twin.specs import GIB, GpuSpec, ModelSpec

__all__ = ["GPUS", "MODELS", "get_gpu", "get_model"]

MODELS: dict[str, ModelSpec] = {
    "llama-3.1-8b": ModelSpec(
        name="llama-3.1-8b", num_layers=32, hidden_size=4096, num_attention_heads=32,
        num_kv_heads=8, head_dim=128, intermediate_size=14336, vocab_size=128256,
        num_params=8_030_261_248),
    "llama-3.2-1b": ModelSpec(
        name="llama-3.2-1b", num_layers=16, hidden_size=2048, num_attention_heads=32,
        num_kv_heads=8, head_dim=64, intermediate_size=8192, vocab_size=128256,
        num_params=1_235_814_400),
    # The random tiny Llama the real-vLLM tests build (hidden 128, 2 layers, 2 heads, vocab 512).
    "tiny-llama": ModelSpec(
        name="tiny-llama", num_layers=2, hidden_size=128, num_attention_heads=2,
        num_kv_heads=2, head_dim=64, intermediate_size=256, vocab_size=512,
        num_params=2 * (4 * 128 * 128 + 3 * 128 * 256) + 2 * 512 * 128, dtype_bytes=4),
}

GPUS: dict[str, GpuSpec] = {
    "a100-80gb": GpuSpec(name="a100-80gb", memory_bytes=int(79.15 * GIB),
                         peak_tflops=312.0, bandwidth_gbps=2039.0),
    "a100-40gb": GpuSpec(name="a100-40gb", memory_bytes=int(39.39 * GIB),
                         peak_tflops=312.0, bandwidth_gbps=1555.0),
    "h100-80gb": GpuSpec(name="h100-80gb", memory_bytes=int(79.19 * GIB),
                         peak_tflops=989.0, bandwidth_gbps=3350.0),
    # MareNostrum 5's H100 (64 GB HBM2), the reference's GPU: 63.43 GiB total capacity.
    "h100-64gb": GpuSpec(name="h100-64gb", memory_bytes=int(63.43 * GIB),
                         peak_tflops=989.0, bandwidth_gbps=1640.0),
    "l40s": GpuSpec(name="l40s", memory_bytes=int(44.39 * GIB),
                    peak_tflops=362.0, bandwidth_gbps=864.0),
}


def get_model(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ConfigError("model", f"unknown model {name!r}; bundled: {sorted(MODELS)}") from None


def get_gpu(name: str) -> GpuSpec:
    try:
        return GPUS[name]
    except KeyError:
        raise ConfigError("gpu", f"unknown GPU {name!r}; bundled: {sorted(GPUS)}") from None
