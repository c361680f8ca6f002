"""The engine options read from the workers themselves (gateway/fleet/worker_settings.py):
an emulated worker reports them as vLLM does, the gateway plans with them, and a config
that contradicts a worker stops ``lorafleet serve`` with one line."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from gateway.config import parse_config
from gateway.fleet.worker_settings import WorkerSettings, engine_from, fetch_settings
from gateway.server.cli import _workers_settings
from tests.gateway.server.factories import BASE, MAX_MODEL_LEN
from tests.gateway.server.procfleet import worker_processes
from twin.errors import ConfigError
from twin.specs import EngineConfig

ENGINE = EngineConfig(max_loras=4, max_cpu_loras=6, max_lora_rank=16,
                      max_model_len=MAX_MODEL_LEN)


def _config(url: str, worker_engine: dict[str, int]) -> dict[str, object]:
    return {"base_model": BASE, "workers": [{"url": url, "name": "w0"}],
            "worker_engine": worker_engine, "max_model_len": MAX_MODEL_LEN,
            "adapters": [{"name": "sql", "rank": 8, "rate": 1.0, "path": "/nowhere/sql"}]}


def test_reported_values_replace_the_config_and_contradictions_name_the_field() -> None:
    base = EngineConfig(max_loras=8, max_cpu_loras=8, max_lora_rank=16)
    seen = WorkerSettings(max_loras=16, max_model_len=4096, block_size=16)
    engine = engine_from(base, {}, seen, "w0")
    assert (engine.max_loras, engine.cpu_loras, engine.max_model_len) == (16, 16, 4096)
    assert engine_from(base, {"max_loras": 16}, seen, "w0") == engine
    with pytest.raises(ConfigError) as info:
        engine_from(base, {"max_loras": 8}, seen, "w3")
    assert info.value.field == "worker_engine.max_loras"
    assert "the config says 8 but worker w3 runs 16" in str(info.value)


async def _one_request(url: str) -> None:
    """vLLM reports ``max_lora`` once its engine has run a request."""
    async with aiohttp.ClientSession() as session, session.post(
            f"{url}/v1/completions", json={"model": BASE, "prompt": "hi", "max_tokens": 2},
            timeout=aiohttp.ClientTimeout(total=60)) as resp:
        assert resp.status == 200


async def test_an_emulated_worker_reports_what_vllm_reports(tmp_path: Path) -> None:
    async with (worker_processes(1, ENGINE, tmp_path) as [worker],
                aiohttp.ClientSession() as session):
        fresh = await fetch_settings(session, worker.url, BASE, 10.0)
        await _one_request(worker.url)
        got = await fetch_settings(session, worker.url, BASE, 10.0)
        gone = await fetch_settings(session, "http://127.0.0.1:9", BASE, 2.0)
    assert fresh is not None and fresh.max_loras is None  # as vLLM before any request
    assert fresh.max_model_len == MAX_MODEL_LEN
    assert got == WorkerSettings(max_loras=4, max_model_len=MAX_MODEL_LEN, block_size=16,
                                 gpu_memory_utilization=ENGINE.gpu_memory_utilization)
    assert gone is None


async def test_serve_plans_with_the_workers_options_and_refuses_a_contradiction(
        tmp_path: Path) -> None:
    async with worker_processes(1, ENGINE, tmp_path / "logs") as [worker]:
        await _one_request(worker.url)
        # Not stated: read from the worker (the plan is made for 4 slots, not the default).
        cfg = await _workers_settings(parse_config(_config(worker.url, {"max_cpu_loras": 6})))
        assert cfg.worker_engine is not None and cfg.worker_engine.max_loras == 4
        # Stated and contradicted: lorafleet serve stops before serving, in one line.
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(_config(worker.url, {"max_loras": 8})))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "serve", "--config", str(path), "--port", "0",
            "--log-level", "error", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 2
    assert err.decode().strip().splitlines()[-1] == (
        "lorafleet: serve: worker_engine.max_loras: the config says 8 but worker w0 runs 4 "
        "(as it reports it)")
