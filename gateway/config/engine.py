"""The engine options of workers the gateway did not start (``worker_engine:`` in
``gateway.yaml``), and those of a worker no plan chose options for (``fallback_engine``).
What workers report of themselves is read in ``gateway/fleet/worker_settings.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from planner import AdapterDemand
from twin.catalog import get_gpu
from twin.errors import ConfigError
from twin.specs import ALLOWED_LORA_RANKS, MAX_ENGINE_INT, EngineConfig, default_engine_for

__all__ = ["ENGINE_FIELDS", "ENGINE_SCHEMA", "MAX_SLOTS", "applied", "configured_engine",
           "fallback_engine"]

# What gateway.yaml's ``worker_engine`` may state.
ENGINE_FIELDS = ("max_loras", "max_cpu_loras", "max_lora_rank", "max_num_seqs",
                 "max_num_batched_tokens", "max_model_len", "gpu_memory_utilization")
_COUNT = {"type": "integer", "minimum": 1, "maximum": MAX_ENGINE_INT}
# ``worker_engine:`` for the JSON Schema: vLLM's flags of the same names
ENGINE_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "description": "the engine options of workers the gateway did not start, as they do not "
                   "report them (the rest: defaults for the adapters)",
    "properties": {
        **{name: {**_COUNT, "description": f"vLLM's --{name.replace('_', '-')}"}
           for name in ENGINE_FIELDS if name != "gpu_memory_utilization"},
        "max_lora_rank": {"enum": list(ALLOWED_LORA_RANKS),
                          "description": "vLLM's --max-lora-rank"},
        "gpu_memory_utilization": {"type": "number", "exclusiveMinimum": 0, "maximum": 1,
                                   "description": "vLLM's --gpu-memory-utilization"}}}
MAX_SLOTS = 8  # GPU LoRA slots of a round-robin worker (more adapters swap through the LRU)


def applied(base: EngineConfig, changes: Mapping[str, Any],
             stated: Mapping[str, Any]) -> EngineConfig:
    """``base`` with ``changes``; a ``max_loras`` among them raises the CPU tier to hold the
    slots at least (vLLM: ``max_cpu_loras >= max_loras``) unless ``stated`` sets it."""
    if "max_loras" in changes and "max_cpu_loras" not in stated:
        changes = {**changes, "max_cpu_loras": max(base.cpu_loras, changes["max_loras"])}
    try:
        return dataclasses.replace(base, **changes)
    except ConfigError as exc:
        raise exc.nested("worker_engine") from None


def configured_engine(given: Any, base: EngineConfig,
                      ) -> tuple[EngineConfig, tuple[tuple[str, float], ...]]:
    """gateway.yaml's ``worker_engine`` over ``base`` (``ConfigError`` naming a bad field),
    and the options it states."""
    if not isinstance(given, dict):
        raise ConfigError("worker_engine", f"must be a mapping of {list(ENGINE_FIELDS)}")
    for key, value in given.items():
        if key not in ENGINE_FIELDS:
            raise ConfigError(f"worker_engine.{key}", f"unknown field; expected one of "
                              f"{list(ENGINE_FIELDS)}")
        number = int | float if key == "gpu_memory_utilization" else int
        if isinstance(value, bool) or not isinstance(value, number):
            raise ConfigError(f"worker_engine.{key}", f"must be a number, got {value!r}")
    return applied(base, given, given), tuple(sorted(given.items()))


def fallback_engine(adapters: Sequence[AdapterDemand], gpu: str,
                    max_model_len: int, tensor_parallel_size: int = 1) -> EngineConfig:
    """Engine options for a worker holding ``adapters`` when no plan chose them: every rank
    served, up to ``MAX_SLOTS`` GPU slots, a CPU slot for each adapter."""
    loras = [a for a in adapters if not a.is_base]
    top = max((a.rank for a in loras), default=8)
    rank = next(r for r in ALLOWED_LORA_RANKS if r >= top)
    slots = max(1, min(len(loras), MAX_SLOTS))
    return default_engine_for(get_gpu(gpu), max_loras=slots,
                              max_cpu_loras=max(slots, len(loras)), max_lora_rank=rank,
                              max_model_len=max_model_len,
                              tensor_parallel_size=tensor_parallel_size)
