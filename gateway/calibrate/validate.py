"""``lorafleet validate``: one scenario on a real server and in the twin, side by side.

The server must run the scenario's ``max_loras`` (read from ``vllm:lora_requests_info``) and
``max_model_len`` (from ``/v1/models``); the scenario's adapters are served under their own
names, loaded at run time from ``--adapter RANK=PATH`` unless the server already serves them,
and unloaded afterwards. Both runs are scored by ``twin.results.summarize``: throughput is
input plus output tokens processed within ``duration_s`` per second (the paper's measure),
starvation is throughput below 0.9 x the ideal.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.calibrate.client import ServerClient
from gateway.calibrate.replay import replay
from gateway.calibrate.sweep import AdapterSource, discover
from twin.errors import ConfigError
from twin.results import STARVATION_RATIO, SimulationResult, summarize
from twin.scenario import Scenario
from twin.simulation import simulate

__all__ = ["BORDERLINE", "METRICS", "Validation", "relative_error", "run_real", "validate"]

#: A verdict is a coin toss when real throughput is within this fraction of 0.9 x ideal.
BORDERLINE = 0.05
#: The figures compared, as (label, SimulationResult field).
METRICS = (("throughput (tok/s)", "throughput_tps"), ("throughput (req/s)", "throughput_rps"),
           ("TTFT p50 (s)", "ttft_p50_s"), ("TTFT p99 (s)", "ttft_p99_s"),
           ("E2E p50 (s)", "e2e_p50_s"), ("E2E p99 (s)", "e2e_p99_s"))


def relative_error(twin: float, real: float) -> float:
    """``|twin - real| / real`` (nan when undefined).

    Examples
    --------
    >>> relative_error(105.0, 100.0)
    0.05
    """
    if math.isnan(twin) or math.isnan(real) or real == 0:
        return float("nan")
    return abs(twin - real) / abs(real)


@dataclass(frozen=True, slots=True, kw_only=True)
class Validation:
    """A real run and the twin's run of one scenario."""

    scenario: str
    real: SimulationResult
    twin: SimulationResult
    real_wall_s: float
    real_errors: int
    late_sends: int

    @property
    def throughput_error(self) -> float:
        return relative_error(self.twin.throughput_tps, self.real.throughput_tps)

    @property
    def ttft_p50_error(self) -> float:
        return relative_error(self.twin.ttft_p50_s, self.real.ttft_p50_s)

    @property
    def speedup(self) -> float:
        return self.real_wall_s / max(self.twin.wall_seconds, 1e-9)

    @property
    def borderline(self) -> bool:
        threshold = STARVATION_RATIO * self.real.ideal_tps
        return abs(self.real.throughput_tps - threshold) <= BORDERLINE * threshold

    def to_dict(self) -> dict[str, Any]:
        def figures(r: SimulationResult) -> dict[str, Any]:
            keys = ("throughput_tps", "throughput_rps", "ideal_tps", "ttft_p50_s",
                    "ttft_p99_s", "e2e_p50_s", "e2e_p99_s", "requests", "finished",
                    "starved", "starved_adapters", "wall_seconds")
            return {k: _clean(getattr(r, k)) for k in keys}

        return {"name": self.scenario, "real": {**figures(self.real),
                                                 "errors": self.real_errors,
                                                 "late_sends": self.late_sends},
                "twin": figures(self.twin), "throughput_error": _clean(self.throughput_error),
                "ttft_p50_error": _clean(self.ttft_p50_error),
                "e2e_p50_error": _clean(relative_error(self.twin.e2e_p50_s,
                                                       self.real.e2e_p50_s)),
                "starved_real": self.real.starved, "starved_twin": self.twin.starved,
                "borderline": self.borderline, "speedup": self.speedup}


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


async def _prepare(client: ServerClient, scenario: Scenario,
                   sources: Mapping[int, str]) -> tuple[dict[str | None, str], list[str]]:
    """Check the server against the scenario, load missing adapters; return the model names
    by adapter and the adapters loaded here."""
    probe = next((AdapterSource(path, rank) for rank, path in sorted(sources.items())), None)
    facts = await discover(client, probe=probe)
    engine = scenario.engine
    if facts.max_loras != engine.max_loras:
        raise ConfigError("engine.max_loras", f"the scenario has {engine.max_loras} but the "
                          f"server at {client.url} runs --max-loras {facts.max_loras}")
    if facts.max_model_len != engine.max_model_len:
        raise ConfigError("engine.max_model_len", f"the scenario has {engine.max_model_len} "
                          f"but the server serves {facts.max_model_len}")
    served = {str(c["id"]) for c in await client.models()}
    models: dict[str | None, str] = {None: facts.base_model}
    loaded = []
    for a in scenario.workload.adapters:
        if a.rank == 0:
            continue
        models[a.name] = a.name
        if a.name in served:
            continue
        if a.rank not in sources:
            raise ConfigError("--adapter", f"adapter {a.name!r} of rank {a.rank} is not served "
                              f"and no --adapter {a.rank}=PATH was given")
        await client.load_adapter(a.name, sources[a.rank])
        loaded.append(a.name)
    return models, loaded


async def _wait_idle(client: ServerClient, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        s = await client.scrape()
        if s.total("vllm:num_requests_running") + s.total("vllm:num_requests_waiting") == 0:
            return
        await asyncio.sleep(0.2)


async def run_real(url: str, scenario: Scenario, sources: Mapping[int, str], *,
                   warmup: bool = True) -> tuple[SimulationResult, float, int, int]:
    """The scenario on the server: its summary, wall seconds, failed and late requests."""
    arrivals, clipped = scenario.workload.generate(scenario.engine.max_model_len)
    duration = scenario.workload.duration_s
    async with ServerClient(url, seed=scenario.workload.seed) as client:
        models, loaded = await _prepare(client, scenario, sources)
        try:
            if warmup:  # one short burst per model: first requests pay one-off costs
                await asyncio.gather(*(client.complete(m, 16, 4) for m in models.values()
                                       for _ in range(4)))
            await _wait_idle(client)
            result = await replay(client, arrivals, duration, models)
            await _wait_idle(client)
        finally:
            for name in loaded:
                await client.unload_adapter(name)
    end_ns = round(duration * 1e9)
    summary = summarize(result.requests, duration_s=duration, end_ns=end_ns,
                        itl_ns=_no_itl(), itl_weight=_no_itl(), preemptions=0, lora_loads=0,
                        kv_blocks=0, kv_cache_tokens=0, steps=0, wall_seconds=result.wall_s,
                        clipped_lengths=clipped)
    return summary, result.wall_s, len(result.errors), result.late_sends


def _no_itl() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


async def validate(url: str, scenario: Scenario, sources: Mapping[int, str], *,
                   progress: Callable[[str], None] = lambda _: None) -> Validation:
    """Run ``scenario`` on the server at ``url`` and in the twin."""
    progress(f"{scenario.name}: {scenario.workload.duration_s:.0f} s on {url}")
    real, wall, errors, late = await run_real(url, scenario, sources)
    progress(f"{scenario.name}: twin")
    twin, _ = simulate(scenario)
    return Validation(scenario=scenario.name, real=real, twin=twin, real_wall_s=wall,
                      real_errors=errors, late_sends=late)

