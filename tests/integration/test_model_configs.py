"""Each ``tests/data/models`` config read by lorafleet against ``transformers`` building the
model on the meta device (in the vLLM venv, which has ``transformers`` and ``torch``): the
parameter count, and the shapes the twin's memory arithmetic uses."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from twin.hf_config import load_model_config

from .server import vllm_python

pytestmark = pytest.mark.real_vllm

MODELS_DIR = Path(__file__).resolve().parents[1] / "data" / "models"

_SCRIPT = """
import json, sys, torch
from transformers import AutoConfig, AutoModelForCausalLM
out = {}
for path in sys.argv[1:]:
    cfg = AutoConfig.from_pretrained(path)
    text = cfg.get_text_config()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    out[path] = {"params": sum(p.numel() for p in model.parameters()),
                 "kv_heads": text.num_key_value_heads,
                 "head_dim": getattr(text, "head_dim", None)
                 or text.hidden_size // text.num_attention_heads}
print(json.dumps(out))
"""


def test_parameter_counts_match_transformers_on_the_meta_device() -> None:
    folders = sorted(p for p in MODELS_DIR.iterdir() if "Mixtral" not in p.name)
    done = subprocess.run([str(vllm_python()), "-c", _SCRIPT, *map(str, folders)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    built = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(built) == len(folders) >= 9
    for folder in folders:
        spec, real = load_model_config(folder), built[str(folder)]
        assert (spec.num_params, spec.num_kv_heads, spec.head_dim) == (
            real["params"], real["kv_heads"], real["head_dim"]), folder.name
