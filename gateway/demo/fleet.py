"""The demo's gateway and emulated fleet, started in-process the way ``lorafleet serve
--emulate`` starts them, with workers slower and noisier than the profile the planner knows.

Planning is CPU-bound and happens before the event loop starts: ``plan_demo``; ``start_demo``
then brings the workers and the gateway up. What the demo shows of the fleet's GPUs it reads
from the gateway's metrics (``read_metrics``), as Grafana does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.config import GatewayConfig, WorkerEndpoint
from gateway.control.planning import InitialPlan, from_planner
from gateway.server.app import create_app, serve
from gateway.server.emulated import EmulatedFleet, scaffold_entries, start_emulated, worker_configs
from gateway.server.keys import CONTROL, FLEET, GATEWAY_METRICS
from planner import (
    DEFAULT_GPU,
    DEFAULT_MODEL,
    DEFAULT_PROFILE,
    AdapterDemand,
    Surrogate,
)
from twin.routing import BASE_MODEL

__all__ = ["DemoFleet", "FleetReading", "FleetSpec", "plan_demo", "read_metrics", "start_demo"]

READY_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetSpec:
    """The fleet the demo runs: what the planner assumes, and how the workers really run."""

    workers: int = 8
    gpu: str = DEFAULT_GPU
    model: str = DEFAULT_MODEL
    profile: str = DEFAULT_PROFILE
    # how much slower than the profile the workers run: one factor, or one per worker
    # (cycled over the pool: worker i runs ``slowdown[i % len]``)
    slowdown: float | tuple[float, ...] = 1.15
    jitter: float = 0.1
    time_scale: float = 2.0
    seed: int = 0
    replan_every_s: float = 15.0  # wall seconds between periodic re-plans (0: never)
    observe_window_s: float = 20.0  # wall seconds of traffic a re-plan looks at
    headroom: float = 0.9  # GPUs planned for load / headroom
    ttft_bound_s: float = 10.0  # the starvation guard's bound (the workers' seconds)
    starvation_guard: bool = True
    # The bench's oracle: the gateway is told each worker's true speed (1 / its slowdown)
    # instead of learning it.
    known_speeds: bool = False

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        factors = self.slowdown if isinstance(self.slowdown, tuple) else (self.slowdown,)
        if not factors or not all(f > 0 for f in factors):
            raise ValueError(f"slowdown must be > 0 (one or one per worker), got "
                             f"{self.slowdown!r}")

    def slowdown_of(self, worker: int) -> float:
        """Worker ``worker``'s slowdown (the factors cycle over the pool)."""
        if isinstance(self.slowdown, tuple):
            return self.slowdown[worker % len(self.slowdown)]
        return self.slowdown
        if not self.time_scale > 0:
            raise ValueError(f"time_scale must be > 0, got {self.time_scale!r}")


def plan_demo(adapters: Sequence[AdapterDemand], spec: FleetSpec,
              surrogate: Surrogate) -> InitialPlan:
    """The planner's placement over the workers (the baselines it is compared with are the
    gateway's own: ``lorafleet_gpus_baseline``, measured by its planning process)."""
    names = [f"w{i}" for i in range(spec.workers)]
    return from_planner(adapters, names, surrogate, gpu=spec.gpu, model=spec.model,
                        profile=spec.profile, headroom=spec.headroom)


@dataclass(frozen=True, slots=True, kw_only=True)
class FleetReading:
    """The fleet as the gateway's metrics show it (the series the Grafana dashboard reads)."""

    gpus_running: int  # lorafleet_gpus_running
    gpus_planned: int  # lorafleet_gpus_planned
    baselines: dict[str, int]  # lorafleet_gpus_baseline{policy}
    gpu_seconds_saved: dict[str, float]  # lorafleet_gpu_seconds_saved_total{policy}
    migrations: int  # lorafleet_migrations_total{outcome="ok"}: re-plans that moved adapters
    adapters_moved: int  # lorafleet_adapters_moved_total


def read_metrics(registry: CollectorRegistry) -> FleetReading:
    """Read the gateway's registry as a scrape would (the fleet's series are computed now)."""
    by_name: dict[str, dict[str, float]] = {}
    for family in registry.collect():
        for sample in family.samples:
            key = sample.labels.get("policy") or sample.labels.get("outcome") or ""
            by_name.setdefault(sample.name, {})[key] = sample.value
    return FleetReading(
        gpus_running=int(by_name["lorafleet_gpus_running"][""]),
        gpus_planned=int(by_name["lorafleet_gpus_planned"][""]),
        baselines={k: int(v) for k, v in by_name["lorafleet_gpus_baseline"].items()},
        gpu_seconds_saved=dict(by_name["lorafleet_gpu_seconds_saved_total"]),
        migrations=int(by_name["lorafleet_migrations_total"]["ok"]),
        adapters_moved=int(by_name["lorafleet_adapters_moved_total"][""]))


@dataclass(slots=True)
class DemoFleet:
    """The running gateway and its workers."""

    app: web.Application
    runner: web.AppRunner
    workers: EmulatedFleet
    url: str

    def adapters_per_worker(self) -> list[int]:
        """LoRA adapters routed to each worker now."""
        router = self.app[FLEET].router
        if router is None:
            return [0] * len(self.workers.urls)
        return [sum(1 for k in w.shares if k != BASE_MODEL) for w in router.placement.workers]

    def outstanding(self) -> list[int]:
        fleet = self.app[FLEET]
        return [fleet.outstanding(i) for i in range(len(fleet.workers))]

    @property
    def gpus_active(self) -> int:
        return self.app[FLEET].gpus_active

    @property
    def replans(self) -> list[dict[str, Any]]:
        """The re-plans so far (``Replanner.history``), oldest first."""
        return list(self.app[CONTROL].replanner.history)

    @property
    def migrations(self) -> int:
        """Adapters moved by the migrations so far."""
        return self.app[CONTROL].replanner.migrations

    def reading(self) -> FleetReading:
        """GPUs running, planned and of the baselines, GPU-seconds saved, migrations: as the
        gateway's ``/metrics`` reports them."""
        return read_metrics(self.app[GATEWAY_METRICS].registry)

    async def stop(self) -> None:
        await self.runner.cleanup()
        await self.workers.stop()


async def start_demo(adapters: Sequence[AdapterDemand], plan: InitialPlan, spec: FleetSpec,
                     folder: Path) -> DemoFleet:
    """Start the workers with the plan's engine options (and the spec's slowdown and jitter),
    then the gateway on a free loopback port; returns once the placement is loaded."""
    cfg = GatewayConfig(base_model=spec.model, workers=tuple(
        WorkerEndpoint(f"w{i}", "http://127.0.0.1:1") for i in range(spec.workers)),
        adapters=scaffold_entries(adapters, folder, base_model=spec.model), gpu=spec.gpu,
        model=spec.model, profile=spec.profile, port=0, replan_interval_s=spec.replan_every_s,
        observe_window_s=spec.observe_window_s, time_scale=spec.time_scale,
        headroom=spec.headroom, ttft_bound_s=spec.ttft_bound_s,
        starvation_guard=spec.starvation_guard)
    configs = [replace(c, slowdown=spec.slowdown_of(i), jitter=spec.jitter)
               for i, c in enumerate(worker_configs(
                   plan, served_model_name=cfg.base_model, model=spec.model, gpu=spec.gpu,
                   profile=spec.profile, time_scale=spec.time_scale, seed=spec.seed))]
    workers = await start_emulated(configs)
    runner = None
    started = False
    try:
        cfg = replace(cfg, workers=tuple(WorkerEndpoint(w.name, url) for w, url in zip(
            cfg.workers, workers.urls, strict=True)))
        app = create_app(cfg, plan=plan)
        runner = await serve(app, cfg.host, 0)
        if spec.known_speeds:
            app[CONTROL].replanner.learner.known = {
                w.name: 1 / spec.slowdown_of(i) for i, w in enumerate(cfg.workers)}
        fleet = DemoFleet(app, runner, workers, f"http://{cfg.host}:{runner.addresses[0][1]}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT_S
        while not app[FLEET].ready:
            if loop.time() > deadline:
                raise TimeoutError(f"the gateway was not ready after {READY_TIMEOUT_S:.0f} s")
            await asyncio.sleep(0.05)
        started = True
        return fleet
    finally:
        if not started:  # stop what did start, whatever stopped the rest
            if runner is not None:
                await runner.cleanup()
            await workers.stop()
