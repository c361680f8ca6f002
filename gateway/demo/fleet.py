"""The demo's gateway and emulated fleet, started in-process the way ``lorafleet serve
--emulate`` starts them, with workers slower and noisier than the profile the planner knows.

Planning (and the baselines it is compared with) is CPU-bound and happens before the event
loop starts: ``plan_demo``; ``start_demo`` then brings the workers and the gateway up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.keys import FLEET, REPLANNER
from gateway.server.app import create_app, serve
from gateway.server.config import GatewayConfig, WorkerEndpoint
from gateway.server.emulated import EmulatedFleet, scaffold_entries, start_emulated, worker_configs
from gateway.server.planning import InitialPlan, from_planner
from planner import (
    DEFAULT_GPU,
    DEFAULT_MODEL,
    DEFAULT_PROFILE,
    AdapterDemand,
    Surrogate,
    Target,
    round_robin,
)
from twin.routing import BASE_MODEL

__all__ = ["DemoFleet", "FleetSpec", "plan_demo", "start_demo"]

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
              surrogate: Surrogate) -> tuple[InitialPlan, dict[str, int]]:
    """The planner's placement over the workers, and the GPUs of the baselines: one GPU per
    adapter (what the gateway's ``gateway_gpus_baseline`` reports) and round-robin at the
    fewest GPUs the same surrogate check accepts."""
    names = [f"w{i}" for i in range(spec.workers)]
    plan = from_planner(adapters, names, surrogate, gpu=spec.gpu, model=spec.model,
                        profile=spec.profile, headroom=spec.headroom)
    predictor = Target.resolve(spec.model, spec.gpu, spec.profile).predictor(surrogate)
    baselines = {"one_per_adapter": sum(1 for a in adapters if not a.is_base),
                 "round_robin": round_robin(adapters, predictor).num_gpus}
    return plan, baselines


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
        return list(self.app[REPLANNER].history)

    @property
    def migrations(self) -> int:
        """Adapters moved by the migrations so far."""
        return self.app[REPLANNER].migrations

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
            app[REPLANNER].learner.known = {
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
