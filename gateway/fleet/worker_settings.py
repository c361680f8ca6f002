"""The engine options a vLLM worker runs with, read from the worker instead of repeated in
``gateway.yaml``.

vLLM exposes some of them: ``vllm:lora_requests_info{max_lora}`` (``--max-loras``; vLLM
sets the series at every logging interval, the value its time), ``vllm:cache_config_info``
(``--block-size``, ``--gpu-memory-utilization`` and the KV blocks it got; a gauge set to 1:
``vllm/v1/metrics/loggers.py``, ``log_metrics_info``) and ``/v1/models``' ``max_model_len``
(``vllm/entrypoints/openai/models/serving.py``). ``--max-cpu-loras``, ``--max-lora-rank``,
``--max-num-seqs`` and ``--max-num-batched-tokens`` are not exposed: those come from
``worker_engine`` or its defaults.

What a worker reports replaces the config's value; a value the config gives explicitly and
the worker contradicts is a start-up error naming the field (``lorafleet serve`` exits 2),
since the planner would otherwise plan for an engine no worker runs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from gateway.calibrate.prom import parse_metrics
from gateway.config.engine import applied
from twin.errors import ConfigError
from twin.specs import EngineConfig

__all__ = ["WorkerSettings", "check_workers",
           "engine_from", "fetch_settings", "parse_settings"]

logger = logging.getLogger(__name__)



@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """What one worker reports (None: not reported)."""

    max_loras: int | None = None
    max_model_len: int | None = None
    block_size: int | None = None
    gpu_memory_utilization: float | None = None

    def known(self) -> dict[str, int | float]:
        """The reported options, by ``EngineConfig`` field."""
        return {f.name: v for f in dataclasses.fields(self)
                if (v := getattr(self, f.name)) is not None}


def _number(text: str | None, kind: type[int] | type[float]) -> Any:
    try:
        return None if text is None else kind(float(text)) if kind is int else float(text)
    except ValueError:
        return None


def parse_settings(metrics_text: str, models: Mapping[str, Any] | None,
                   base_model: str) -> WorkerSettings:
    """The settings in a ``/metrics`` scrape and a ``/v1/models`` answer (pure).

    Examples
    --------
    >>> text = ('vllm:lora_requests_info{max_lora="4",running_lora_adapters="",'
    ...         'waiting_lora_adapters=""} 1.7e9\\n'
    ...         'vllm:cache_config_info{block_size="16",gpu_memory_utilization="0.9"} 1\\n')
    >>> models = {"data": [{"id": "base", "root": "m", "parent": None,
    ...                     "max_model_len": 2048}]}
    >>> parse_settings(text, models, "base")
    WorkerSettings(max_loras=4, max_model_len=2048, block_size=16, gpu_memory_utilization=0.9)
    """
    scrape = parse_metrics(metrics_text)
    lora = scrape.lora_info()
    cache = next(iter(scrape.samples.get("vllm:cache_config_info", [])), ({}, 0.0))[0]
    max_model_len = None
    for entry in (models or {}).get("data", []):
        if isinstance(entry, dict) and entry.get("id") == base_model:
            max_model_len = entry.get("max_model_len")
    return WorkerSettings(
        max_loras=_number(lora.get("max_lora"), int),
        max_model_len=max_model_len if isinstance(max_model_len, int) else None,
        block_size=_number(cache.get("block_size"), int),
        gpu_memory_utilization=_number(cache.get("gpu_memory_utilization"), float))


async def fetch_settings(session: aiohttp.ClientSession, url: str, base_model: str,
                         timeout_s: float) -> WorkerSettings | None:
    """The worker's settings, or None when it cannot be reached now."""
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    try:
        async with session.get(f"{url}/metrics", timeout=timeout) as resp:
            text = await resp.text() if resp.status == 200 else ""
        async with session.get(f"{url}/v1/models", timeout=timeout) as resp:
            models = await resp.json() if resp.status == 200 else None
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    return parse_settings(text, models if isinstance(models, dict) else None, base_model)


def engine_from(base: EngineConfig, given: Mapping[str, float], settings: WorkerSettings,
                worker: str) -> EngineConfig:
    """``base`` with what the worker reports; ``ConfigError`` naming
    ``worker_engine.<field>`` when ``given`` (the options the config states) disagrees."""
    known = settings.known()
    for name, value in known.items():
        if name in given and given[name] != value:
            raise ConfigError(f"worker_engine.{name}", f"the config says {given[name]:g} but "
                              f"worker {worker} runs {value:g} (as it reports it)")
    return applied(base, known, given)


async def check_workers(session: aiohttp.ClientSession, workers: Sequence[tuple[str, str]],
                        base: EngineConfig, given: Mapping[str, float], base_model: str,
                        timeout_s: float) -> dict[str, EngineConfig]:
    """Each reachable worker's engine (``engine_from``), by name, all asked at once (at most
    ``timeout_s`` in all); unreachable ones are left to be read when they are reached."""
    found = await asyncio.gather(*(fetch_settings(session, url, base_model, timeout_s)
                                   for _, url in workers))
    out = {}
    for (name, _), settings in zip(workers, found, strict=True):
        if settings is None:
            logger.info("worker %s: not reachable yet; its settings are read when it is", name)
            continue
        out[name] = engine_from(base, given, settings, name)
    return out
