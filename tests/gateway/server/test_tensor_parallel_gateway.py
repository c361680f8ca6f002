"""Workers of several GPUs in the gateway (``tensor_parallel_size``): the config refuses a
model that does not split or fit, plans and re-plans make engines of that size, emulated
workers run them, and the GPU gauges count GPUs, not workers."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import GatewayConfig, WorkerEndpoint, parse_config
from gateway.control.lifecycle import make_plan
from gateway.server.app import create_app
from gateway.server.emulated import scaffold_entries, start_emulated, worker_configs
from gateway.server.keys import FLEET
from planner.demand import AdapterDemand
from tests.gateway.server.factories import until_ready
from twin.errors import ConfigError, InsufficientMemoryError

MODEL = "llama-3.1-70b"
ADAPTERS = [AdapterDemand(name=f"a{i}", rank=8, rate=r, input_tokens=400, output_tokens=100)
            for i, r in enumerate((2.0, 1.0, 0.5, 0.5))]


def _data(**extra: object) -> dict[str, object]:
    return {"base_model": "base", "model": MODEL, "workers": ["http://127.0.0.1:9"],
            "adapters": [{"name": a.name, "rank": a.rank, "rate": a.rate, "path": "/x"}
                         for a in ADAPTERS], **extra}


def test_the_config_refuses_a_size_vllm_would_refuse() -> None:
    with pytest.raises(InsufficientMemoryError, match="smallest tensor_parallel_size that "
                       "fits is 2"):
        parse_config(_data())
    with pytest.raises(ConfigError) as info:
        parse_config(_data(tensor_parallel_size=3))  # 64 attention heads
    assert info.value.field == "tensor_parallel_size"
    cfg = parse_config(_data(tensor_parallel_size=4))
    assert cfg.worker_engine is not None and cfg.worker_engine.tensor_parallel_size == 4


async def test_an_emulated_fleet_at_tp_four_counts_gpus(tmp_path: Path) -> None:
    names = ["w0", "w1"]
    cfg = GatewayConfig(base_model="base", model=MODEL, tensor_parallel_size=4,
                        workers=tuple(WorkerEndpoint(n, "http://127.0.0.1:1") for n in names),
                        adapters=scaffold_entries(ADAPTERS, tmp_path, base_model=MODEL),
                        search_seconds=0.1, time_scale=50.0,
                        train_target=False)  # tested in test_target_training.py
    plan = make_plan(cfg)
    assert all(e.tensor_parallel_size == 4 for e in plan.engines)
    assert plan.planned_gpus % 4 == 0 and plan.planned_gpus >= 4
    fleet = await start_emulated(worker_configs(plan, served_model_name="base", model=MODEL,
                                                time_scale=50.0))
    try:
        cfg = replace(cfg, workers=tuple(WorkerEndpoint(n, u) for n, u in zip(
            names, fleet.urls, strict=True)))
        app = create_app(cfg, plan=plan)
        async with TestServer(app) as server, aiohttp.ClientSession() as session:
            await until_ready(app, tries=500)
            for _ in range(600):  # the planning process measures the baselines at start-up
                if app[FLEET].baselines:
                    break
                await asyncio.sleep(0.1)
            async with session.get(server.make_url("/metrics")) as resp:
                text = await resp.text()
    finally:
        await fleet.stop()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("lorafleet_gpus_running", ())] == 4 * len(names)
    assert samples[("lorafleet_gpus_planned", ())] == plan.planned_gpus
    per_adapter = samples[("lorafleet_gpus_baseline", (("policy", "one_per_adapter"),))]
    round_robin = samples[("lorafleet_gpus_baseline", (("policy", "round_robin"),))]
    assert per_adapter >= 4 * len(ADAPTERS) and per_adapter % 4 == 0
    assert 4 <= round_robin <= per_adapter and round_robin % 4 == 0
