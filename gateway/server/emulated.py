"""An emulated fleet in the gateway's own process (``lorafleet serve --emulate N``).

Each worker is the emulator's own application (``gateway.emulator.create_app``) on a loopback
port of the same event loop, started with the engine options the plan gives it. Fault tests
and benchmarks run workers in their own processes (``lorafleet fleet``) instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.config import AdapterEntry
from gateway.control.planning import InitialPlan
from gateway.emulator.adapters import scaffold_adapter
from gateway.emulator.app import create_app as create_worker_app
from gateway.emulator.app import serve as serve_worker
from gateway.emulator.config import WorkerConfig
from planner import DEFAULT_GPU, DEFAULT_MODEL, DEFAULT_PROFILE, AdapterDemand
from twin.catalog import get_gpu, get_model
from twin.errors import ConfigError
from twin.profile import load_profile
from twin.specs import ALLOWED_LORA_RANKS

__all__ = ["EmulateSpec", "EmulatedFleet", "emulated_config_data", "parse_emulate",
           "scaffold_entries", "start_emulated", "worker_configs"]


def worker_configs(plan: InitialPlan, *, served_model_name: str, model: str = DEFAULT_MODEL,
                   gpu: str = DEFAULT_GPU, profile: str = DEFAULT_PROFILE,
                   time_scale: float = 1.0, seed: int = 0) -> list[WorkerConfig]:
    """One emulated worker per plan worker, with the engine options the plan chose."""
    spec, card, prof = get_model(model), get_gpu(gpu), load_profile(profile)
    return [WorkerConfig(model=spec, gpu=card, profile=prof, engine=engine,
                         served_model_name=served_model_name, time_scale=time_scale,
                         seed=seed + i)
            for i, engine in enumerate(plan.engines)]


def scaffold_entries(adapters: Sequence[AdapterDemand], folder: Path, *,
                     base_model: str = DEFAULT_MODEL) -> tuple[AdapterEntry, ...]:
    """Adapter folders (``adapter_config.json`` only) for emulated workers to load."""
    return tuple(AdapterEntry(a, None if a.is_base else str(
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


MAX_EMULATED = 256  # emulated workers one gateway process runs


@dataclass(frozen=True, slots=True, kw_only=True)
class EmulateSpec:
    """``emulate:`` in ``gateway.yaml``: an emulated fleet started in the gateway's process
    instead of static worker URLs (``lorafleet serve --emulate N`` in a file)."""

    count: int
    time_scale: float = 1.0
    slowdown: float = 1.0
    jitter: float = 0.0
    seed: int = 0


def parse_emulate(data: Any) -> EmulateSpec:
    """``{count, time_scale?, slowdown?, jitter?, seed?}``; ``ConfigError`` names the field.

    Examples
    --------
    >>> parse_emulate({"count": 4, "time_scale": 2})
    EmulateSpec(count=4, time_scale=2.0, slowdown=1.0, jitter=0.0, seed=0)
    >>> parse_emulate({"count": 0})
    Traceback (most recent call last):
    ...
    twin.errors.ConfigError: emulate.count: must be an integer in [1, 256], got 0
    """
    if isinstance(data, int) and not isinstance(data, bool):
        data = {"count": data}
    if not isinstance(data, dict):
        raise ConfigError("emulate", "must be a worker count or {count, time_scale?, "
                          "slowdown?, jitter?, seed?}")
    unknown = sorted(set(data) - {"count", "time_scale", "slowdown", "jitter", "seed"})
    if unknown:
        raise ConfigError(f"emulate.{unknown[0]}", "unknown field")
    ints: dict[str, int] = {}
    for name, low, high in (("count", 1, MAX_EMULATED), ("seed", 0, 2**32 - 1)):
        raw = data.get(name, 0)
        if isinstance(raw, bool) or not isinstance(raw, int) or not low <= raw <= high:
            raise ConfigError(f"emulate.{name}", f"must be an integer in [{low}, {high}], "
                              f"got {raw!r}")
        ints[name] = raw
    values: dict[str, float] = {}
    for name, default, floor, ceiling in (("time_scale", 1.0, 0.0, 10_000.0),
                                          ("slowdown", 1.0, 0.0, 100.0),
                                          ("jitter", 0.0, -1.0, 10.0)):
        value = data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value) or not floor < value <= ceiling:
            bottom = "(0" if floor == 0 else "[0"
            raise ConfigError(f"emulate.{name}", f"must be a number in {bottom}, {ceiling:g}], "
                              f"got {value!r}")
        values[name] = float(value)
    return EmulateSpec(count=ints["count"], seed=ints["seed"], **values)


def emulated_config_data(data: dict[str, Any], folder: Path) -> tuple[dict[str, Any],
                                                                      EmulateSpec]:
    """A ``gateway.yaml`` mapping with ``emulate:`` turned into placeholder workers (their URLs
    are set once the workers listen) and adapter folders scaffolded under ``folder`` for the
    adapters that give no ``path``."""
    data = dict(data)
    spec = parse_emulate(data.pop("emulate"))
    if "workers" in data or data.get("discovery") is not None:
        raise ConfigError("emulate", "give one of workers, discovery or emulate")
    data["workers"] = [{"url": "http://127.0.0.1:1", "name": f"w{i}"}
                       for i in range(spec.count)]
    items = data.get("adapters", [])
    if isinstance(items, list):
        base = str(data.get("model", DEFAULT_MODEL))
        filled = []
        for item in items:
            if isinstance(item, dict) and not item.get("path") \
                    and isinstance(item.get("name"), str) and item.get("rank"):
                rank = item["rank"]
                if isinstance(rank, int) and rank in ALLOWED_LORA_RANKS:
                    item = {**item, "path": str(scaffold_adapter(
                        folder / item["name"], rank=rank, base_model=base))}
            filled.append(item)
        data["adapters"] = filled
    return data, spec
