"""``lorafleet plan --emit DIR``: a plan as files to deploy it with.

- ``serve-worker.sh``: the ``vllm serve`` command every worker runs (``--enable-lora``,
  ``--max-loras``, ``--max-cpu-loras``, ``--max-lora-rank``, ``--max-model-len``,
  ``--tensor-parallel-size``; ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``, as the gateway loads
  and unloads adapters at run time with vLLM's ``/v1/load_lora_adapter``);
- ``gateway.yaml``: the gateway in front of them (one URL per worker to fill in, the same
  engine options as ``worker_engine``, its ``tensor_parallel_size``, the adapters with the
  folder each is loaded from);
- ``plan.json``: the plan as ``lorafleet plan --json`` prints it.

Every worker gets the same options, the largest the plan gives any (what a StatefulSet or
a compose file runs, and what ``gateway.yaml``'s one ``worker_engine`` describes): a worker
with more slots than adapters serves them as well, only with less KV cache, so the plan is
checked again in the twin with those options (``--no-validate`` skips it), and options that
do not fit in memory together are an error naming them.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from planner import AdapterDemand, Plan, Predictor
from twin.catalog import MODELS
from twin.errors import ConfigError, InsufficientMemoryError
from twin.hf_config import config_path
from twin.memory import plan_memory
from twin.specs import EngineConfig

__all__ = ["HF_IDS", "emit", "uniform_engine", "vllm_model"]

# What ``vllm serve`` is given for the bundled models: their Hugging Face ids.
HF_IDS = {"llama-3.1-8b": "meta-llama/Llama-3.1-8B-Instruct",
          "llama-3.1-70b": "meta-llama/Llama-3.1-70B-Instruct",
          "llama-3.2-1b": "meta-llama/Llama-3.2-1B-Instruct"}
ADAPTER_ROOT = "/adapters"  # where gateway.yaml says the workers find each adapter's folder


def vllm_model(model: str) -> str:
    """What ``vllm serve`` is given for ``--model``'s value: a bundled model's Hugging Face
    id, or the folder holding the ``config.json`` given."""
    if model in HF_IDS:
        return HF_IDS[model]
    path = config_path(model)
    if path is not None:
        return str(path.parent.resolve())
    if model in MODELS:  # a bundled test model with no public checkpoint
        raise ConfigError("--model", f"{model!r} has no checkpoint to serve; give a "
                          "config.json or a folder holding one")
    raise ConfigError("--model", f"unknown model {model!r}")


def _absolute(model: str) -> str:
    """A config path as an absolute path (gateway.yaml may be read from anywhere)."""
    path = config_path(model) if model not in MODELS else None
    return str(Path(model).resolve()) if path is not None else model


def uniform_engine(plan: Plan) -> EngineConfig:
    """The options every worker runs: the plan's largest slot count, CPU cache and rank."""
    engines = [g.engine for g in plan.gpus]
    top = max(engines, key=lambda e: (e.max_lora_rank, e.max_loras))
    return dataclasses.replace(top, max_loras=max(e.max_loras for e in engines),
                               max_cpu_loras=max(e.cpu_loras for e in engines),
                               max_lora_rank=max(e.max_lora_rank for e in engines))


def _serve_script(model: str, served: str, engine: EngineConfig,
                  plan: Plan) -> str:
    flags = ["--served-model-name", served, "--enable-lora",
             "--max-loras", str(engine.max_loras), "--max-cpu-loras", str(engine.cpu_loras),
             "--max-lora-rank", str(engine.max_lora_rank),
             "--max-model-len", str(engine.max_model_len),
             "--max-num-seqs", str(engine.max_num_seqs),
             "--max-num-batched-tokens", str(engine.max_num_batched_tokens),
             "--tensor-parallel-size", str(engine.tensor_parallel_size),
             "--gpu-memory-utilization", f"{engine.gpu_memory_utilization:g}"]
    lines = ["#!/bin/sh",
             f"# One lorafleet worker: {engine.tensor_parallel_size} GPU(s) each, "
             f"{plan.num_workers} workers ({plan.num_gpus} GPUs) for this plan.",
             "# The gateway loads each adapter at run time (gateway.yaml); the plan puts:"]
    lines += [f"#   worker {g.index}: {', '.join(sorted(g.rates))}" for g in plan.gpus]
    lines += ["export VLLM_ALLOW_RUNTIME_LORA_UPDATING=True",
              f"exec vllm serve {shlex.quote(model)} {shlex.join(flags)} "
              '--port "${PORT:-8000}" "$@"', ""]
    return "\n".join(lines)


def _gateway_yaml(served: str, model_arg: str, gpu_arg: str, profile: str,
                  engine: EngineConfig, plan: Plan, adapters: Sequence[AdapterDemand]) -> str:
    worker_engine = {"max_loras": engine.max_loras, "max_cpu_loras": engine.cpu_loras,
                     "max_lora_rank": engine.max_lora_rank,
                     "max_model_len": engine.max_model_len,
                     "max_num_seqs": engine.max_num_seqs,
                     "max_num_batched_tokens": engine.max_num_batched_tokens,
                     "gpu_memory_utilization": engine.gpu_memory_utilization}
    gpu: Any = gpu_arg
    if gpu_arg.lstrip().startswith("{"):
        gpu = json.loads(gpu_arg)
    data = {
        "base_model": served, "model": model_arg, "gpu": gpu, "profile": profile,
        "workers": [{"url": f"http://worker-{g.index}:8000", "name": f"w{g.index}"}
                    for g in plan.gpus],
        "worker_engine": worker_engine,
        "max_model_len": engine.max_model_len,
        "tensor_parallel_size": engine.tensor_parallel_size,
        "adapters": [{**{k: v for k, v in dataclasses.asdict(a).items()
                         if k in ("name", "rank", "rate", "input_tokens", "output_tokens")},
                      **({} if a.is_base else {"path": f"{ADAPTER_ROOT}/{a.name}"})}
                     for a in adapters],
        "placement": "planner", "host": "0.0.0.0", "port": 8080,
    }
    head = ("# lorafleet gateway for the plan in plan.json (`lorafleet serve --config "
            "gateway.yaml`).\n# Fill in each worker's URL; each adapter's path is the folder "
            "the workers load it from.\n")
    return head + yaml.safe_dump(data, sort_keys=False)


def emit(out_dir: Path, plan: Plan, predictor: Predictor, adapters: Sequence[AdapterDemand],
         *, model_arg: str, gpu_arg: str, profile: str,
         plan_json: dict[str, Any]) -> tuple[EngineConfig, list[Path]]:
    """Write the three files into ``out_dir`` (made if missing); the engine every worker
    runs, and the files. ``ConfigError`` naming ``--emit`` or ``--model`` if the plan cannot
    be deployed that way."""
    engine = uniform_engine(plan)
    try:
        plan_memory(predictor.model, predictor.gpu, engine, predictor.profile.memory)
    except InsufficientMemoryError as exc:
        raise ConfigError("--emit", f"one setting for every worker (max_loras "
                          f"{engine.max_loras}, max_lora_rank {engine.max_lora_rank}) does "
                          f"not fit: {exc}") from None
    model = vllm_model(model_arg)
    served = predictor.model.name
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        files = {out_dir / "serve-worker.sh": _serve_script(model, served, engine, plan),
                 out_dir / "gateway.yaml": _gateway_yaml(served, _absolute(model_arg),
                                                         gpu_arg, profile, engine, plan,
                                                         adapters),
                 out_dir / "plan.json": json.dumps(plan_json, indent=1) + "\n"}
        for path, text in files.items():
            path.write_text(text)
        (out_dir / "serve-worker.sh").chmod(0o755)
    except OSError as exc:
        raise ConfigError("--emit", f"cannot write {out_dir}: {exc.strerror}") from None
    return engine, list(files)
