"""Bundled model and GPU specs, by name; a model's ``config.json`` or a GPU's own spec too.

Model shapes are the models' ``config.json`` values. GPU memory is what ``torch.cuda``
reports as total capacity (the 64 GB H100 figure is from the reference's own OOM message);
peak dense BF16 TFLOP/s, memory bandwidth and the GPU-to-GPU interconnect (both directions)
are the vendors' datasheet figures: A100 80 GB SXM 312 TFLOP/s, 2,039 GB/s, NVLink 600 GB/s;
H100 SXM 989 TFLOP/s dense, 3,350 GB/s, NVLink 900 GB/s; H200 SXM 989 TFLOP/s, 4,800 GB/s,
141 GB, NVLink 900 GB/s; L40S 362 TFLOP/s dense, 864 GB/s; L4 121 TFLOP/s dense, 300 GB/s,
24 GB; the last two have no NVLink and talk over PCIe 4.0 x16 (64 GB/s).

``get_model`` takes a bundled name, a ``config.json`` or a folder holding one (what
``vllm serve`` is given); ``get_gpu`` a bundled name, a mapping
``{name, memory_gib, tflops, bandwidth_gbps, interconnect_gbps, kv_cache_space_gib}`` or
the same mapping as a JSON string (as vLLM takes JSON for its structured flags, e.g.
``--hf-overrides``), which is how a command line or another process passes it on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from twin.errors import ConfigError
from twin.hf_config import config_path, load_model_config
from twin.specs import GIB, GpuSpec, ModelSpec

__all__ = ["GPUS", "MODELS", "get_gpu", "get_model", "gpu_from_mapping", "gpu_ref"]

MODELS: dict[str, ModelSpec] = {
    "llama-3.1-8b": ModelSpec(
        name="llama-3.1-8b", num_layers=32, hidden_size=4096, num_attention_heads=32,
        num_kv_heads=8, head_dim=128, intermediate_size=14336, vocab_size=128256,
        num_params=8_030_261_248),
    "llama-3.1-70b": ModelSpec(
        name="llama-3.1-70b", num_layers=80, hidden_size=8192, num_attention_heads=64,
        num_kv_heads=8, head_dim=128, intermediate_size=28672, vocab_size=128256,
        num_params=70_553_706_496),
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
                         peak_tflops=312.0, bandwidth_gbps=2039.0, interconnect_gbps=600.0),
    "a100-40gb": GpuSpec(name="a100-40gb", memory_bytes=int(39.39 * GIB),
                         peak_tflops=312.0, bandwidth_gbps=1555.0, interconnect_gbps=600.0),
    "h100-80gb": GpuSpec(name="h100-80gb", memory_bytes=int(79.19 * GIB),
                         peak_tflops=989.0, bandwidth_gbps=3350.0, interconnect_gbps=900.0),
    # MareNostrum 5's H100 (64 GB HBM2), the reference's GPU: 63.43 GiB total capacity.
    "h100-64gb": GpuSpec(name="h100-64gb", memory_bytes=int(63.43 * GIB),
                         peak_tflops=989.0, bandwidth_gbps=1640.0, interconnect_gbps=900.0),
    # 141 GB HBM3e: torch reports 139.81 GiB.
    "h200": GpuSpec(name="h200", memory_bytes=int(139.81 * GIB),
                    peak_tflops=989.0, bandwidth_gbps=4800.0, interconnect_gbps=900.0),
    "l40s": GpuSpec(name="l40s", memory_bytes=int(44.39 * GIB),
                    peak_tflops=362.0, bandwidth_gbps=864.0, interconnect_gbps=64.0),
    # 24 GB GDDR6: nvidia-smi reports 23,034 MiB.
    "l4": GpuSpec(name="l4", memory_bytes=int(22.49 * GIB),
                  peak_tflops=121.0, bandwidth_gbps=300.0, interconnect_gbps=64.0),
}

_GPU_KEYS = ("name", "memory_gib", "tflops", "peak_tflops", "bandwidth_gbps",
             "interconnect_gbps", "kv_cache_space_gib")


def get_model(value: str) -> ModelSpec:
    """A bundled model by name, else the model of a ``config.json`` or of a folder holding
    one; ``ConfigError`` naming ``model`` when it is neither."""
    try:
        return MODELS[value]
    except KeyError:
        pass
    if config_path(value) is not None:
        return load_model_config(value)
    raise ConfigError("model", f"unknown model {value!r}: give a bundled one "
                      f"({', '.join(sorted(MODELS))}), a config.json or a folder holding one")


def _number(d: Mapping[str, Any], key: str) -> float:
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigError(f"gpu.{key}", f"must be a number > 0, got {value!r}")
    return float(value)


def gpu_from_mapping(d: Mapping[str, Any]) -> GpuSpec:
    """A GPU from its own spec: ``name`` and ``memory_gib`` required; ``tflops`` (or
    ``peak_tflops``), ``bandwidth_gbps`` and ``interconnect_gbps`` default to GpuSpec's;
    ``kv_cache_space_gib`` describes vLLM's CPU build (``VLLM_CPU_KVCACHE_SPACE``).

    Examples
    --------
    >>> gpu_from_mapping({"name": "b", "memory_gib": 96, "tflops": 700}).peak_tflops
    700.0
    >>> try:
    ...     gpu_from_mapping({"name": "b", "memory": 96})
    ... except ConfigError as exc:
    ...     print(exc.field)
    gpu.memory
    """
    unknown = [k for k in d if k not in _GPU_KEYS]
    if unknown:
        raise ConfigError(f"gpu.{unknown[0]}", f"unknown field; expected one of "
                          f"{', '.join(_GPU_KEYS)}")
    for key in ("name", "memory_gib"):
        if key not in d:
            raise ConfigError(f"gpu.{key}", "is required")
    if not isinstance(d["name"], str) or not d["name"]:
        raise ConfigError("gpu.name", f"must be a non-empty string, got {d['name']!r}")
    if "tflops" in d and "peak_tflops" in d:
        raise ConfigError("gpu.tflops", "give tflops or peak_tflops, not both")
    values: dict[str, Any] = {"name": d["name"],
                              "memory_bytes": int(_number(d, "memory_gib") * GIB)}
    for key, field in (("tflops", "peak_tflops"), ("peak_tflops", "peak_tflops"),
                       ("bandwidth_gbps", "bandwidth_gbps"),
                       ("interconnect_gbps", "interconnect_gbps")):
        if key in d:
            values[field] = _number(d, key)
    if "kv_cache_space_gib" in d:
        values["kv_cache_space_bytes"] = int(_number(d, "kv_cache_space_gib") * GIB)
    return GpuSpec(**values)


def get_gpu(value: str | Mapping[str, Any]) -> GpuSpec:
    """A bundled GPU by name, or a GPU's own spec as a mapping or a JSON object string
    (``gpu_from_mapping``); ``ConfigError`` naming ``gpu`` otherwise."""
    if isinstance(value, Mapping):
        return gpu_from_mapping(value)
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            data = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError("gpu", f"invalid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError("gpu", "must be a JSON object")
        return gpu_from_mapping(data)
    try:
        return GPUS[value]
    except (KeyError, TypeError):
        raise ConfigError("gpu", f"unknown GPU {value!r}: give a bundled one "
                          f"({', '.join(sorted(GPUS))}) or a mapping "
                          "{name, memory_gib, tflops, bandwidth_gbps, interconnect_gbps}"
                          ) from None


def gpu_ref(value: str | Mapping[str, Any]) -> str:
    """The string that names ``value`` for ``get_gpu``: a bundled name as it is, a spec as
    compact JSON (what a command line or another process is handed).

    Examples
    --------
    >>> gpu_ref("l4"), gpu_ref({"name": "b", "memory_gib": 96})
    ('l4', '{"memory_gib":96,"name":"b"}')
    """
    if isinstance(value, Mapping):
        return json.dumps(dict(value), sort_keys=True, separators=(",", ":"))
    return value
