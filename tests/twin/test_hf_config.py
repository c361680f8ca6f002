"""Models from their ``config.json`` (``tests/data/models``: the published model cards'
values): shapes, parameter counts, dtypes and the errors a user meets.

The counts are the models' published totals; ``tests/integration/test_model_configs.py``
checks the same files against ``transformers`` building each model on the meta device.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from twin.catalog import MODELS, get_model
from twin.errors import ConfigError
from twin.hf_config import SUPPORTED, load_model_config, model_from_config

MODELS_DIR = Path(__file__).resolve().parents[1] / "data" / "models"

# name: (parameters, layers, KV heads, head_dim, dtype bytes)
PUBLISHED = {
    "Llama-3.1-8B-Instruct": (8_030_261_248, 32, 8, 128, 2),
    "Llama-3.1-70B-Instruct": (70_553_706_496, 80, 8, 128, 2),
    "Llama-3.2-1B-Instruct": (1_235_814_400, 16, 8, 64, 2),
    "Mistral-7B-Instruct-v0.3": (7_248_023_552, 32, 8, 128, 2),
    "Qwen2.5-7B-Instruct": (7_615_616_512, 28, 4, 128, 2),
    "Qwen3-8B": (8_190_735_360, 36, 8, 128, 2),
    "gemma-2-9b-it": (9_241_705_984, 42, 8, 256, 2),  # float32 checkpoint, served in 16 bits
    "gemma-3-1b-it": (999_885_952, 26, 1, 256, 2),
    "Phi-3-mini-4k-instruct": (3_821_079_552, 32, 32, 96, 2),
}


def _config(name: str) -> dict:
    return json.loads((MODELS_DIR / name / "config.json").read_text())


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_each_family_reads_to_its_published_shape_and_count(name: str) -> None:
    spec = load_model_config(MODELS_DIR / name)  # the folder, as vllm serve takes it
    params, layers, kv_heads, head_dim, dtype = PUBLISHED[name]
    assert (spec.num_params, spec.num_layers, spec.num_kv_heads, spec.head_dim,
            spec.dtype_bytes) == (params, layers, kv_heads, head_dim, dtype)
    assert spec.name == name
    assert load_model_config(MODELS_DIR / name / "config.json") == spec


def test_every_supported_family_has_a_config_here() -> None:
    archs = {_config(n)["architectures"][0] for n in PUBLISHED}
    assert archs == set(SUPPORTED)


def test_bundled_models_agree_with_their_config_files() -> None:
    for bundled, folder in (("llama-3.1-8b", "Llama-3.1-8B-Instruct"),
                            ("llama-3.1-70b", "Llama-3.1-70B-Instruct"),
                            ("llama-3.2-1b", "Llama-3.2-1B-Instruct")):
        assert load_model_config(MODELS_DIR / folder) == replace(MODELS[bundled], name=folder)


def test_get_model_takes_a_name_a_file_or_a_folder(tmp_path: Path) -> None:
    assert get_model("llama-3.1-8b") is MODELS["llama-3.1-8b"]
    assert get_model(str(MODELS_DIR / "Qwen3-8B")).num_params == 8_190_735_360
    with pytest.raises(ConfigError) as err:
        get_model(str(tmp_path / "nothing-here"))
    assert err.value.field == "model" and "config.json" in str(err.value)
    assert "llama-3.1-8b" in str(err.value)


def test_a_mixture_of_experts_model_is_refused_by_name() -> None:
    with pytest.raises(ConfigError) as err:
        load_model_config(MODELS_DIR / "Mixtral-8x7B-Instruct-v0.1")
    assert err.value.field == "model.architectures"
    assert "MixtralForCausalLM is a mixture-of-experts model" in str(err.value)
    assert "Qwen3ForCausalLM" in str(err.value)  # names the supported ones
    experts = {**_config("Qwen3-8B"), "num_experts": 128}
    with pytest.raises(ConfigError, match="mixture-of-experts"):
        model_from_config(experts, name="x")


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"architectures": ["FalconForCausalLM"]}, "model.architectures", "not supported"),
    ({"architectures": ["Gemma3ForConditionalGeneration"], "text_config": {}},
     "model.architectures", "multimodal"),
    ({"architectures": None}, "model.architectures", "is missing"),
    ({"hidden_size": None}, "model.hidden_size", "is missing"),
    ({"num_hidden_layers": 0}, "model.num_hidden_layers", "positive integer"),
    ({"num_key_value_heads": 3}, "model.num_key_value_heads", "must divide"),
    ({"torch_dtype": "int4"}, "model.torch_dtype", "must be one of"),
    ({"quantization_config": {"quant_method": "awq"}}, "model.quantization_config",
     "quantized"),
])
def test_a_bad_config_names_its_field(change: dict, field: str, words: str) -> None:
    data = {**_config("Llama-3.1-8B-Instruct"), **change}
    data = {k: v for k, v in data.items() if v is not None or k in ("architectures",)}
    with pytest.raises(ConfigError) as err:
        model_from_config(data, name="x")
    assert err.value.field == field and words in err.value.message


def test_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_model_config(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        load_model_config(tmp_path)


def test_dtype_follows_vllm_auto_and_an_explicit_dtype() -> None:
    data = _config("Llama-3.2-1B-Instruct")
    assert model_from_config({**data, "torch_dtype": "float32"}, name="x").dtype_bytes == 2
    assert model_from_config({k: v for k, v in data.items() if k != "torch_dtype"},
                             name="x").dtype_bytes == 2
    assert model_from_config({**data, "dtype": "float16"}, name="x").dtype_bytes == 2
    assert model_from_config(data, name="x", dtype="float32").dtype_bytes == 4
    with pytest.raises(ConfigError) as err:
        model_from_config(data, name="x", dtype="fp8")
    assert err.value.field == "dtype"


def test_biases_and_tied_embeddings_change_the_count_by_their_shapes() -> None:
    data = _config("Llama-3.2-1B-Instruct")
    base = model_from_config(data, name="x").num_params
    untied = model_from_config({**data, "tie_word_embeddings": False}, name="x").num_params
    assert untied - base == 128256 * 2048
    biased = model_from_config({**data, "attention_bias": True}, name="x").num_params
    assert biased - base == 16 * (2048 + 2 * 512)
