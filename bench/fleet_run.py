"""One measurement of ``bench/fleet.py``: a policy's fleet started in this process, the seeded
load driven through it, and what came of it.

Two kinds of front end: lorafleet's gateway (``gateway.demo.fleet.start_demo``: emulated
A100 workers slower and noisier than the profile the planner knows, the gateway with
re-planning on or off, routing by placement) and, for ``prefer_loaded``, the proxy of
``bench/fleet_prefer.py`` over a fixed fleet of identical workers. Everything shares one
event loop (uvloop), as in ``lorafleet demo``; the loop's lag and the process's CPU share are
measured so a run that the machine could not keep up with shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiohttp import web

from bench.fleet_load import Arrival, drive, make_client, summarize
from bench.fleet_prefer import create_proxy, state_of
from gateway.control.planning import InitialPlan
from gateway.demo.fleet import DemoFleet, FleetSpec, start_demo
from gateway.emulator.app import serve as serve_worker
from gateway.server.emulated import scaffold_entries, start_emulated, worker_configs
from gateway.server.keys import CONTROL, EMULATED_WORKER
from planner import AdapterDemand

SAMPLE_S = 0.5  # wall seconds between samples of the GPUs in use and of the loop's lag


@dataclass(frozen=True, slots=True, kw_only=True)
class Setup:
    """What every policy's run shares."""

    adapters: tuple[AdapterDemand, ...]
    arrivals: tuple[Arrival, ...]
    seconds: float  # simulated seconds of arrivals
    time_scale: float
    slowdown: tuple[float, ...]  # one factor, or one per worker (cycled over the pool)
    jitter: float
    seed: int
    replan_every_s: float  # wall seconds (lorafleet only)
    observe_window_s: float  # wall seconds (lorafleet only)
    drain_s: float = 30.0  # wall seconds the last requests may take
    grace_s: float = 20.0  # simulated seconds past the arrivals an answer still counts
    ttft_bound_s: float = 10.0  # simulated seconds: the rare requests' p99 TTFT bound
    starvation_guard: bool = True  # lorafleet's (gateway/fleet/guard.py)
    concurrency: int = 2000


class Sampler:
    """Samples GPUs in use and the event loop's lag every ``SAMPLE_S`` wall seconds."""

    def __init__(self, gpus: Callable[[], int]) -> None:
        self.gpus = gpus
        self.samples: list[int] = []
        self.lags: list[float] = []

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(SAMPLE_S)
            self.lags.append(max(0.0, loop.time() - before - SAMPLE_S))
            self.samples.append(self.gpus())


async def _measure(setup: Setup, url: str, gpus: Callable[[], int]) -> dict[str, Any]:
    """Drive the load at ``url``; the summary plus the GPU samples, lag and CPU."""
    sampler = Sampler(gpus)
    loop = asyncio.get_running_loop()
    task = loop.create_task(sampler.run())
    cpu0, wall0 = time.process_time(), time.perf_counter()
    try:
        async with make_client(url) as client:
            records, abandoned = await drive(client, setup.adapters, setup.arrivals,
                                             time_scale=setup.time_scale,
                                             concurrency=setup.concurrency,
                                             drain_timeout_s=setup.drain_s)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    wall = time.perf_counter() - wall0
    out = summarize(records, adapters=len(setup.adapters), seconds=setup.seconds,
                    grace_s=setup.grace_s, ttft_bound_s=setup.ttft_bound_s)
    window = sampler.samples[:max(1, int(setup.seconds / setup.time_scale / SAMPLE_S))]
    lags = sorted(sampler.lags)
    every = max(1, int(5.0 / SAMPLE_S))
    out["gpus_every_5_wall_s"] = sampler.samples[::every]
    out.update(abandoned=abandoned, gpus_end=window[-1] if window else gpus(),
               gpus_time_avg=round(sum(window) / max(1, len(window)), 2),
               gpus_max=max(window, default=0), wall_s=round(wall, 1),
               cpu_share=round((time.process_time() - cpu0) / wall, 2),
               loop_lag_p99_ms=round(1000 * lags[int(0.99 * (len(lags) - 1))], 1) if lags
               else None)
    return out


def _engine_loads(apps: Sequence[web.Application]) -> int:
    """LoRA loads the workers' engines made (both cache tiers' misses, API loads included)."""
    return sum(app[EMULATED_WORKER].driver.stats().num_lora_loads for app in apps)


async def run_gateway(setup: Setup, plan: InitialPlan, folder: Path, *,
                      replan: bool, known_speeds: bool = False) -> dict[str, Any]:
    """lorafleet's gateway over the plan's workers, re-planning or not (``known_speeds``:
    told each worker's true speed instead of learning it, the oracle)."""
    spec = FleetSpec(workers=len(plan.engines), slowdown=setup.slowdown, jitter=setup.jitter,
                     time_scale=setup.time_scale, seed=setup.seed,
                     replan_every_s=setup.replan_every_s if replan else 0.0,
                     observe_window_s=setup.observe_window_s, known_speeds=known_speeds,
                     ttft_bound_s=setup.ttft_bound_s,
                     starvation_guard=setup.starvation_guard)
    fleet: DemoFleet = await start_demo(setup.adapters, plan, spec, folder)
    try:
        t0, t_mono = time.time(), time.monotonic()
        out = await _measure(setup, fleet.url, lambda: fleet.gpus_active)
        replans = [r for r in fleet.replans if not r["dry_run"]]
        out["replan_log"] = [{
            "at_s": round((r["at"] - t0) * setup.time_scale, 1), "trigger": r["trigger"],
            "planned_gpus": r["planned_gpus"], "gpus_active": r["gpus_active"],
            "moved": len(r["diff"]["moved"]), "retired": len(r["diff"]["retired"]),
            "outcome": r.get("migration", {}).get("outcome", "unchanged"),
            "plan_s": r["plan_seconds"], "validate_s": r["validate_seconds"],
            "capacity_scale": r["capacity_scale"], "speeds": r.get("speeds", {}),
            "validated": r["validated"],
            "repairs": r.get("repairs", 0)}
            for r in replans]
        out["latency_windows"] = [{
            "worker": o.worker, "ratio": None if o.ratio is None else round(o.ratio, 3),
            "skipped": o.skipped.value if o.skipped else None, "saturated": o.saturated,
            "capacity_ratio": None if o.capacity_ratio is None else round(o.capacity_ratio, 3),
            "itl_ratio": None if o.ratio is None or not o.expected_itl_s
            else round(o.observed_itl_s / o.expected_itl_s, 3)}
            for o in fleet.app[CONTROL].replanner.learner.observed]
        learner = fleet.app[CONTROL].replanner.learner
        out["surrogate_error_by_window"] = [
            {"at_s": round((t - t_mono) * setup.time_scale, 1), "error": round(e, 3)}
            for t, e in learner.errors]
        out["speeds_end"] = {f"w{i}": round(learner.speed(f"w{i}") or learner.capacity_scale, 3)
                             for i in range(len(plan.engines))}
        moved = [r.get("migration", {}) for r in replans]
        initial = sum(len(w.shares) for w in plan.placement.workers)
        out.update(workers=len(plan.engines), replans=len(replans),
                   migrations=fleet.migrations,
                   api_loads=initial + sum(len(m.get("loaded", [])) for m in moved),
                   engine_loads=_engine_loads(fleet.workers.apps),
                   adapters_per_worker=fleet.adapters_per_worker())
        return out
    finally:
        await fleet.stop()


async def run_prefer_loaded(setup: Setup, plan: InitialPlan, folder: Path) -> dict[str, Any]:
    """The ``prefer_loaded`` proxy over the plan's workers (their engine options; nothing
    loaded at the start)."""
    entries = scaffold_entries(setup.adapters, folder)
    paths = {e.demand.name: str(e.path) for e in entries if e.path is not None}
    base = worker_configs(plan, served_model_name="llama-3.1-8b",
                          time_scale=setup.time_scale, seed=setup.seed)
    configs = [replace(c, slowdown=setup.slowdown[i % len(setup.slowdown)], jitter=setup.jitter)
               for i, c in enumerate(base)]
    workers = await start_emulated(configs)
    runner: web.AppRunner | None = None
    try:
        app = create_proxy(workers.urls, paths)
        runner = await serve_worker(app, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        state = state_of(app)
        out = await _measure(setup, url,
                             lambda: sum(1 for n in state.adapters_per_worker() if n))
        out.update(workers=len(configs), replans=0, migrations=0, api_loads=state.loads,
                   engine_loads=_engine_loads(workers.apps),
                   adapters_per_worker=state.adapters_per_worker())
        return out
    finally:
        if runner is not None:
            await runner.cleanup()
        await workers.stop()


def row(policy: str, gpus: int | None, out: dict[str, Any], setup: Setup,
        **extra: Any) -> dict[str, Any]:
    served = out["throughput_rps"]
    return {"policy": policy, "gpus": gpus, "failed": out["failed"],
            "adapter_loads": out["engine_loads"], "ttft_p99_s_rare": out["ttft_p99_s_rare"],
            "starved": out["starved"], "starved_adapters": len(out["starved_adapters"]),
            "throughput_rps": served,
            "throughput_per_gpu": round(served / gpus, 3) if gpus else None,
            "ttft_p50_s_rare": out["ttft_p50_s_rare"], "ttft_p99_s": out["ttft_p99_s"],
            "api_loads": out["api_loads"], "requests": out["requests"],
            "workers_started": out["workers"], "gpus_time_avg": out["gpus_time_avg"],
            "gpus_max": out["gpus_max"],
            "replans": out["replans"], "migrations": out["migrations"],
            "starvation_replans": sum(r["trigger"] == "starvation"
                                      for r in out.get("replan_log", [])),
            "cpu_share": out["cpu_share"], "loop_lag_p99_ms": out["loop_lag_p99_ms"],
            "client_late_p99_s": out["client_late_p99_s"], "errors": out["errors"],
            "ttft_p99_s_by_window": out["ttft_p99_s_by_window"],
            "gpus_every_5_wall_s": out["gpus_every_5_wall_s"],
            "replan_log": out.get("replan_log", []),
            "latency_windows": out.get("latency_windows", []),
            "speeds_end": out.get("speeds_end", {}),
            "surrogate_error": _error_trend(out.get("surrogate_error_by_window", [])),
            "surrogate_error_by_window": out.get("surrogate_error_by_window", []), **extra}


def _error_trend(series: Sequence[dict[str, float]]) -> dict[str, float | None]:
    """The prequential surrogate error (``lorafleet_surrogate_error``) over the first and the
    last three windows of a run."""
    errors = [p["error"] for p in series]
    if len(errors) < 6:
        return {"first": None, "last": None}
    return {"first": round(sum(errors[:3]) / 3, 3), "last": round(sum(errors[-3:]) / 3, 3)}
