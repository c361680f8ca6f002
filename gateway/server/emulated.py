"""An emulated fleet in the gateway's own process (``lorafleet serve --emulate N``).

Each worker is the emulator's own application (``gateway.emulator.create_app``) on a loopback
port of the same event loop, started with the engine options the plan gives it. Fault tests
and benchmarks run workers in their own processes (``lorafleet fleet``) instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from gateway.emulator.adapters import scaffold_adapter
from gateway.emulator.app import create_app as create_worker_app
from gateway.emulator.app import serve as serve_worker
from gateway.emulator.config import WorkerConfig
from gateway.server.config import AdapterEntry
from gateway.server.planning import InitialPlan
from planner.features import AdapterDemand
from twin.catalog import get_gpu, get_model
from twin.profile import load_profile

__all__ = ["EmulatedFleet", "scaffold_entries", "start_emulated", "worker_configs"]


def worker_configs(plan: InitialPlan, *, served_model_name: str, model: str = "llama-3.1-8b",
                   gpu: str = "a100-80gb", profile: str = "roofline-default",
                   time_scale: float = 1.0, seed: int = 0) -> list[WorkerConfig]:
    """One emulated worker per plan worker, with the engine options the plan chose."""
    spec, card, prof = get_model(model), get_gpu(gpu), load_profile(profile)
    return [WorkerConfig(model=spec, gpu=card, profile=prof, engine=engine,
                         served_model_name=served_model_name, time_scale=time_scale,
                         seed=seed + i)
            for i, engine in enumerate(plan.engines)]


def scaffold_entries(adapters: Sequence[AdapterDemand], folder: Path, *,
                     base_model: str = "llama-3.1-8b") -> tuple[AdapterEntry, ...]:
    """Adapter folders (``adapter_config.json`` only) for emulated workers to load."""
    return tuple(AdapterEntry(a, None if a.rank == 0 else str(
        scaffold_adapter(folder / a.name, rank=a.rank, base_model=base_model)))
        for a in adapters)


@dataclass(slots=True)
class EmulatedFleet:
    """Running emulated workers: their runners, applications and URLs."""

    runners: list[web.AppRunner]
    apps: list[web.Application]
    urls: list[str]

    async def stop(self) -> None:
        for runner in self.runners:
            await runner.cleanup()
        self.runners.clear()


async def start_emulated(configs: Sequence[WorkerConfig],
                         host: str = "127.0.0.1") -> EmulatedFleet:
    """Start one worker per config on free ports of ``host``."""
    fleet = EmulatedFleet([], [], [])
    started = False
    try:
        for cfg in configs:
            app = create_worker_app(cfg)
            runner = await serve_worker(app, host, 0)
            fleet.runners.append(runner)
            fleet.apps.append(app)
            fleet.urls.append(f"http://{host}:{runner.addresses[0][1]}")
        started = True
    finally:
        if not started:  # a worker failed to start: stop the ones that did
            await fleet.stop()
    return fleet
