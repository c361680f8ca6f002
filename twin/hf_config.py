"""A base model from its Hugging Face ``config.json``: what ``vllm serve MODEL`` reads first.

Dense decoder families only (``SUPPORTED``). The parameter count is computed from the
shapes, family by family, as the modelling code builds them (``transformers``'
``modeling_<family>.py`` and vLLM's ``model_executor/models/<family>.py``): embeddings, an
untied LM head, per layer q/k/v/o (with the biases Qwen2 always has and Llama may have),
the gated MLP, the norms (two per layer, four in Gemma 2/3, plus per-head q/k norms in
Qwen3 and Gemma 3) and the final norm. The integration tests check each family's count
against ``transformers`` building the model on the meta device.

The weights' dtype follows vLLM's ``--dtype auto`` (``vllm/config/model.py``
``_resolve_auto_dtype``): the config's ``torch_dtype`` (``dtype`` in newer files), with a
float32 checkpoint served in the platform's 16-bit type.

No hub access and no ``transformers`` import: the file is read as JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twin.errors import ConfigError
from twin.specs import ModelSpec

__all__ = ["DTYPE_BYTES", "SUPPORTED", "config_path", "load_model_config", "model_from_config"]


@dataclass(frozen=True, slots=True)
class _Family:
    norms_per_layer: int = 2  # hidden-sized RMSNorm weights per decoder layer
    qk_norm: bool = False  # a head_dim-sized norm on q and on k (Qwen3, Gemma 3)
    qkv_bias: bool | None = False  # None: the config's ``attention_bias``
    tied_default: bool = False  # ``tie_word_embeddings`` when the config leaves it out


# Architectures vLLM serves with these shapes (vllm/model_executor/models/registry.py).
SUPPORTED: dict[str, _Family] = {
    "LlamaForCausalLM": _Family(qkv_bias=None),
    "MistralForCausalLM": _Family(),
    "Qwen2ForCausalLM": _Family(qkv_bias=True),
    "Qwen3ForCausalLM": _Family(qk_norm=True, qkv_bias=None),
    "Gemma2ForCausalLM": _Family(norms_per_layer=4, tied_default=True),
    "Gemma3ForCausalLM": _Family(norms_per_layer=4, qk_norm=True, tied_default=True),
    "Phi3ForCausalLM": _Family(),
}

# vllm/config/model.py _STR_DTYPE_TO_TORCH_DTYPE, in bytes.
DTYPE_BYTES = {"half": 2, "float16": 2, "bfloat16": 2, "float": 4, "float32": 4}

_EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def _supported() -> str:
    return ", ".join(SUPPORTED)


def config_path(value: str | Path) -> Path | None:
    """The ``config.json`` that ``value`` names (the file itself or a folder holding one), or
    None when ``value`` names no such file."""
    path = Path(value).expanduser()
    if path.is_dir():
        path = path / "config.json"
    return path if path.is_file() else None


def load_model_config(value: str | Path, *, dtype: str = "auto") -> ModelSpec:
    """The model a ``config.json`` (or a folder holding one) describes.

    Raises
    ------
    ConfigError
        Field ``model``: an unreadable file, an unsupported architecture, a missing or
        invalid shape.
    """
    path = config_path(value)
    if path is None:
        raise ConfigError("model", f"no config.json at {str(value)!r}")
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError("model", f"cannot read {path}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("model", f"{path} is not valid JSON: {exc}") from None
    name = path.parent.name if path.name == "config.json" else path.stem
    return model_from_config(data, name=name or "model", dtype=dtype)


def _int(data: dict[str, Any], key: str, default: int | None = None) -> int:
    value = data.get(key, default)
    if value is None:
        raise ConfigError(f"model.{key}", "is missing from config.json")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"model.{key}", f"must be a positive integer, got {value!r}")
    return value


def _architecture(data: dict[str, Any]) -> str:
    archs = data.get("architectures")
    if not isinstance(archs, list) or not archs or not isinstance(archs[0], str):
        raise ConfigError("model.architectures", f"is missing; supported: {_supported()}")
    arch = archs[0]
    experts = next((k for k in _EXPERT_KEYS if isinstance(data.get(k), int) and data[k] > 1),
                   None)
    if experts is not None or "Moe" in arch or "MoE" in arch or arch == "MixtralForCausalLM":
        raise ConfigError("model.architectures", f"{arch} is a mixture-of-experts model, "
                          f"which lorafleet does not model; supported: {_supported()}")
    if arch not in SUPPORTED:
        hint = (" (a multimodal model: give its language model's config.json)"
                if "text_config" in data else "")
        raise ConfigError("model.architectures", f"{arch} is not supported{hint}; "
                          f"supported: {_supported()}")
    if data.get("quantization_config") is not None:
        raise ConfigError("model.quantization_config", "quantized checkpoints are not "
                          "modelled; give the unquantized model's config.json")
    return arch


def _dtype_bytes(data: dict[str, Any], dtype: str) -> int:
    if dtype != "auto":
        if dtype not in DTYPE_BYTES:
            raise ConfigError("dtype", f"must be 'auto' or one of {sorted(DTYPE_BYTES)}, "
                              f"got {dtype!r}")
        return DTYPE_BYTES[dtype]
    config = data.get("torch_dtype", data.get("dtype")) or "float32"
    if config not in DTYPE_BYTES:
        raise ConfigError("model.torch_dtype", f"must be one of {sorted(DTYPE_BYTES)}, "
                          f"got {config!r}")
    # --dtype auto serves a float32 checkpoint in 16 bits on every GPU.
    return 2


def model_from_config(data: dict[str, Any], *, name: str, dtype: str = "auto") -> ModelSpec:
    """The model of a parsed ``config.json`` (see the module's notes).

    Examples
    --------
    >>> spec = model_from_config({
    ...     "architectures": ["LlamaForCausalLM"], "hidden_size": 2048,
    ...     "intermediate_size": 8192, "num_attention_heads": 32, "num_hidden_layers": 16,
    ...     "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": True,
    ...     "torch_dtype": "bfloat16"}, name="Llama-3.2-1B")
    >>> spec.num_params, spec.head_dim  # Llama 3.2 1B's published count
    (1235814400, 64)
    >>> model_from_config({"architectures": ["FalconForCausalLM"]}, name="x")
    Traceback (most recent call last):
    ...
    twin.errors.ConfigError: model.architectures: FalconForCausalLM is not supported; \
supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, \
Gemma2ForCausalLM, Gemma3ForCausalLM, Phi3ForCausalLM
    """
    if not isinstance(data, dict):
        raise ConfigError("model", "config.json must hold a JSON object")
    family = SUPPORTED[_architecture(data)]
    layers = _int(data, "num_hidden_layers")
    hidden = _int(data, "hidden_size")
    heads = _int(data, "num_attention_heads")
    kv_heads = _int(data, "num_key_value_heads", heads)
    # vllm/transformers_utils/model_arch_config_convertor.py: head_dim, else hidden // heads.
    head_dim = _int(data, "head_dim") if data.get("head_dim") is not None else hidden // heads
    inter = _int(data, "intermediate_size")
    vocab = _int(data, "vocab_size")
    if heads % kv_heads:
        raise ConfigError("model.num_key_value_heads",
                          f"({kv_heads}) must divide num_attention_heads ({heads})")
    tied = data.get("tie_word_embeddings", family.tied_default)
    bias = data.get("attention_bias", False) if family.qkv_bias is None else family.qkv_bias
    q, kv = heads * head_dim, kv_heads * head_dim
    per_layer = (hidden * (q + 2 * kv) + q * hidden + 3 * hidden * inter
                 + family.norms_per_layer * hidden)
    if bias:
        per_layer += q + 2 * kv
    if data.get("mlp_bias", False):
        per_layer += 2 * inter + hidden
    if family.qk_norm:
        per_layer += 2 * head_dim
    params = layers * per_layer + vocab * hidden * (1 if tied else 2) + hidden
    return ModelSpec(name=name, num_layers=layers, hidden_size=hidden,
                     num_attention_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim,
                     intermediate_size=inter, vocab_size=vocab, num_params=params,
                     dtype_bytes=_dtype_bytes(data, dtype))
