"""Builders for gateway tests: a gateway in front of emulated workers, all in-process."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import GatewayConfig, PlacementMode, WorkerEndpoint
from gateway.config.engine import fallback_engine
from gateway.control.planning import InitialPlan, round_robin
from gateway.server.app import create_app
from gateway.server.emulated import (
    EmulatedFleet,
    scaffold_entries,
    start_emulated,
    worker_configs,
)
from gateway.server.keys import FLEET
from planner.demand import AdapterDemand
from twin.routing import Placement, WorkerPlacement

BASE = "base"
MAX_MODEL_LEN = 2048


def demands(*names: str, rank: int = 8) -> list[AdapterDemand]:
    return [AdapterDemand(name=n, rank=rank, rate=1.0) for n in names]


def plan_of(shares: Sequence[dict[str, float]], template: InitialPlan) -> InitialPlan:
    """``template`` (for its engines) with the placement given by ``shares``."""
    placement = Placement(tuple(WorkerPlacement(name=f"w{i}", shares=s)
                                for i, s in enumerate(shares)))
    return replace(template, placement=placement)


@dataclass
class Stack:
    url: str
    app: web.Application
    workers: EmulatedFleet
    session: aiohttp.ClientSession

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    async def worker_metric(self, index: int, name: str) -> float:
        """The sum of a worker's series ``name`` (vLLM names, as exported)."""
        async with self.session.get(f"{self.workers.urls[index]}/metrics") as resp:
            text = await resp.text()
        total = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name:
                    total += sample.value
        return total

    async def gateway_series(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """The gateway's series ``name`` from ``/metrics``, by their sorted labels."""
        async with self.session.get(f"{self.url}/metrics") as resp:
            text = await resp.text()
        return {tuple(sorted(s.labels.items())): s.value
                for f in text_string_to_metric_families(text) for s in f.samples
                if s.name == name}

    async def worker_states(self) -> dict[str, str]:
        """Worker -> its ``lorafleet_worker_state`` (the one series at 1 of its four)."""
        series = await self.gateway_series("lorafleet_worker_state")
        ones = [dict(labels) for labels, value in series.items() if value == 1]
        assert len(ones) * 4 == len(series), series  # every state present, exactly one at 1
        return {labels["worker"]: labels["state"] for labels in ones}

    async def served(self) -> list[float]:
        """Requests each worker finished."""
        return [await self.worker_metric(i, "vllm:request_success_total")
                for i in range(len(self.workers.urls))]


async def until_ready(app: web.Application, tries: int = 200) -> None:
    """Wait (10 ms a try) until the gateway has installed its placement: ready."""
    for _ in range(tries):
        if app[FLEET].ready:
            break
        await asyncio.sleep(0.01)
    assert app[FLEET].ready


@asynccontextmanager
async def gateway_stack(folder: Path, adapters: Sequence[AdapterDemand], *, workers: int = 2,
                        shares: Sequence[dict[str, float]] | None = None,
                        time_scale: float = 200.0, roomy: bool = False,
                        slowdown: float = 1.0, planned_gpus: int | None = None,
                        max_loras: int | None = None, **overrides: Any) -> AsyncIterator[Stack]:
    """``workers`` emulated workers (round-robin placement unless ``shares`` is given) and the
    gateway in front, served by aiohttp's test server (handler cancellation on). ``roomy``
    starts every worker with room for all the adapters (as an operator sizes a fleet that
    re-plans), instead of just the round-robin share; ``max_loras`` caps every worker's GPU
    slots."""
    names = [f"w{i}" for i in range(workers)]
    plan = round_robin(adapters, names, max_model_len=MAX_MODEL_LEN)
    if shares is not None:
        plan = plan_of(shares, plan)
    if roomy:
        engine = fallback_engine(adapters, "a100-80gb", MAX_MODEL_LEN)
        plan = replace(plan, engines=(engine,) * workers)
    if max_loras is not None:  # fewer GPU slots than adapters: the skip rule's lockouts
        plan = replace(plan, engines=tuple(replace(e, max_loras=max_loras,
                                                   max_cpu_loras=max(e.cpu_loras, max_loras))
                                           for e in plan.engines))
    if planned_gpus is not None:  # a plan that asked for more GPUs than run
        plan = replace(plan, planned_gpus=planned_gpus)
    fleet = await start_emulated([replace(c, slowdown=slowdown) for c in worker_configs(
        plan, served_model_name=BASE, time_scale=time_scale)])
    try:
        values: dict[str, Any] = {"placement": PlacementMode.ROUND_ROBIN,
                                  "max_model_len": MAX_MODEL_LEN, "health_interval_s": 0.2,
                                  "connect_timeout_s": 1.0,
                                  "time_scale": time_scale}
        values.update(overrides)
        cfg = GatewayConfig(base_model=BASE, workers=tuple(
            WorkerEndpoint(n, u) for n, u in zip(names, fleet.urls, strict=True)),
            adapters=scaffold_entries(adapters, folder), **values)
        app = create_app(cfg, plan=plan)
        async with TestServer(app) as server, aiohttp.ClientSession() as session:
            await until_ready(app)
            yield Stack(str(server.make_url("")).rstrip("/"), app, fleet, session)
    finally:
        await fleet.stop()


def stop_serving(proc: subprocess.Popen[str]) -> str:
    """SIGTERM a `lorafleet serve` process and wait for it (killed past 60 s, then the
    timeout raised); its stderr."""
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return str(err)
