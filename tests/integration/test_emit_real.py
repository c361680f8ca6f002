"""What ``lorafleet plan --emit`` writes for ``vllm serve`` is what vLLM's own argument parser
(``vllm/entrypoints/launchers/cli_args.py``, ``make_arg_parser``) accepts, with the values
the plan meant."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
from pathlib import Path

import pytest

from gateway.cli import main

from ..gateway.test_emit import ADAPTERS, MODELS, serve_flags
from .server import vllm_python

pytestmark = pytest.mark.real_vllm

_SCRIPT = """
import json, sys
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser
out = []
for argv in json.loads(sys.argv[1]):
    ns = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
    ns.model = ns.model_tag  # as `vllm serve MODEL` does (vllm/entrypoints/cli/serve.py)
    out.append({k: getattr(ns, k) for k in ("model", "served_model_name", "enable_lora",
                "max_loras", "max_cpu_loras", "max_lora_rank", "max_model_len",
                "tensor_parallel_size", "max_num_seqs", "max_num_batched_tokens",
                "gpu_memory_utilization", "port")})
print(json.dumps(out))
"""


def test_vllm_parses_the_emitted_command(tmp_path: Path) -> None:
    runs = [("8b", []), ("70b", ["--model", str(MODELS / "Llama-3.1-70B-Instruct"), "-tp", "4"])]
    argvs, expected = [], []
    for name, extra in runs:
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["plan", str(ADAPTERS), "--emit", str(tmp_path / name),
                         "--no-baselines", "--no-validate", *extra]) == 0
        model, flags = serve_flags(tmp_path / name)
        argvs.append([model, *(w for k, v in flags.items() if k != "--port"
                               for w in (k, v) if w), "--port", "8000"])
        expected.append((model, flags))
    done = subprocess.run([str(vllm_python()), "-c", _SCRIPT, json.dumps(argvs)],
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    parsed = json.loads(done.stdout.strip().splitlines()[-1])
    for ns, (model, flags) in zip(parsed, expected, strict=True):
        assert ns["model"] == model and ns["enable_lora"] is True
        assert ns["served_model_name"] == [flags["--served-model-name"]]
        for flag in ("--max-loras", "--max-cpu-loras", "--max-lora-rank", "--max-model-len",
                     "--tensor-parallel-size", "--max-num-seqs", "--max-num-batched-tokens"):
            assert ns[flag.removeprefix("--").replace("-", "_")] == int(flags[flag]), flag
        assert ns["gpu_memory_utilization"] == pytest.approx(
            float(flags["--gpu-memory-utilization"]))
    assert [ns["tensor_parallel_size"] for ns in parsed] == [1, 4]
