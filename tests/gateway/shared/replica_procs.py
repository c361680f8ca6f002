"""Gateway replicas as ``lorafleet serve`` processes (so one can be killed or frozen) on one
real Redis, in front of emulated worker processes (``procfleet``)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.config.engine import fallback_engine
from gateway.server.emulated import scaffold_entries
from planner.demand import AdapterDemand
from tests.gateway.server.factories import BASE, MAX_MODEL_LEN
from tests.gateway.server.procfleet import (
    WorkerProcess,
    start_printing_url,
    worker_processes,
)
from tests.redis_server import free_port

ADMIN_TOKEN = "replica-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class GatewayProcess(WorkerProcess):
    """One ``lorafleet serve`` process: kill, freeze, thaw and stop as a worker's."""

    name: str = ""


async def series(session: aiohttp.ClientSession, gateway: GatewayProcess,
                 name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """One metric's samples on ``gateway`` (labels -> value); {} when it does not answer."""
    try:
        async with session.get(f"{gateway.url}/metrics",
                               timeout=aiohttp.ClientTimeout(total=5)) as resp:
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return {}
    return {tuple(sorted(s.labels.items())): s.value
            for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == name}


async def leads(session: aiohttp.ClientSession, gateway: GatewayProcess) -> bool:
    return any(v == 1 for v in (await series(session, gateway, "lorafleet_leader")).values())


async def _start(name: str, config: Path, log: Path) -> GatewayProcess:
    proc, url = await start_printing_url(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config),
         "--log-level", "INFO"], log, f"gateway {name}", {"LORAFLEET_ADMIN_TOKEN": ADMIN_TOKEN})
    return GatewayProcess(proc, url, log, name)


async def until_ready(session: aiohttp.ClientSession, gateway: GatewayProcess,
                      timeout: float = 60.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(f"{gateway.url}/ready") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{gateway.name} not ready: {gateway.log.read_text()[-3000:]}")


@asynccontextmanager
async def gateway_processes(folder: Path, redis_url: str, adapters: Sequence[AdapterDemand],
                            *, replicas: int = 3, workers: int = 2, **overrides: Any
                            ) -> AsyncIterator[list[GatewayProcess]]:
    """``workers`` emulated worker processes and ``replicas`` gateways on ``redis_url``, the
    first started (and ready) before the others: it leads."""
    engine = fallback_engine(adapters, "a100-80gb", MAX_MODEL_LEN)
    entries = scaffold_entries(adapters, folder / "adapters")
    async with worker_processes(workers, engine, folder / "logs", time_scale=50.0) as procs, \
            aiohttp.ClientSession() as session:
        started: list[GatewayProcess] = []
        try:
            for i in range(replicas):
                port = free_port()
                data = {
                    "base_model": BASE, "placement": "round-robin", "port": port,
                    "max_model_len": MAX_MODEL_LEN, "time_scale": 50.0,
                    "health_interval_s": 0.5, "connect_timeout_s": 1.0,
                    "replan_interval_s": 0, "validate_replans": False, "train_target": False,
                    "worker_engine": {"max_loras": engine.max_loras,
                                      "max_cpu_loras": engine.cpu_loras,
                                      "max_lora_rank": engine.max_lora_rank},
                    "workers": [{"url": p.url, "name": f"w{k}"} for k, p in enumerate(procs)],
                    "adapters": [{"name": e.demand.name, "rank": e.demand.rank,
                                  "rate": e.demand.rate, "path": e.path} for e in entries],
                    "redis": {"url": redis_url, "replica": f"r{i}", "lease_ttl_s": 2.0},
                    **overrides}
                path = folder / f"r{i}.yaml"
                path.write_text(yaml.safe_dump(data))
                gateway = await _start(f"r{i}", path, folder / f"r{i}.log")
                started.append(gateway)
                await until_ready(session, gateway)
            yield started
        finally:
            await asyncio.gather(*(g.stop() for g in started))
