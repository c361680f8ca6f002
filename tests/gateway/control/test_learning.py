"""Online learning at the gateway: with emulated workers 20% slower than the profile, under a
load that does not saturate them, the capacity scale the next plan assumes converges to about
1/1.2 from the workers' own inter-token latency (scraped from /metrics), and the surrogate
error (prequential: predicted at the speed assumed before each window) falls from about 0.2
to under half of that; with workers that match the profile the scale stays near 1 and the
error small."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from openai import AsyncOpenAI

from gateway.server.keys import CONTROL, GATEWAY_METRICS
from tests.gateway.server.factories import demands, gateway_stack

# At 10x the emulator's own event-loop overhead per step (steps of ~3 ms wall) inflated the
# engine's inter-token latency by ~30%; at 2x it is a few percent.
TIME_SCALE = 2.0


async def _learned_scale(tmp_path: Path, slowdown: float) -> tuple[float, int]:
    names = [f"a{i}" for i in range(4)]
    async with gateway_stack(tmp_path, demands(*names), workers=2, roomy=True,
                             time_scale=TIME_SCALE, slowdown=slowdown, replan_interval_s=0,
                             observe_window_s=4.0) as stack:
        replanner = stack.app[CONTROL].replanner
        stop = asyncio.Event()

        async def client_loop(k: int) -> None:
            async with AsyncOpenAI(base_url=stack.v1, api_key="x", max_retries=0,
                                   timeout=30) as client:
                i = k
                while not stop.is_set():
                    stream = await client.completions.create(
                        model=names[i % len(names)], prompt="hello " * 20, max_tokens=48,
                        stream=True)
                    async for _ in stream:
                        pass
                    i += 1

        tasks = [asyncio.create_task(client_loop(k)) for k in range(6)]
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while (replanner.learner.online.windows() < 6 or len(replanner.learner.errors) < 4
                   ) and loop.time() < deadline:
                await asyncio.sleep(0.5)
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        registry = stack.app[GATEWAY_METRICS].registry
        learner = replanner.learner
        error = registry.get_sample_value("lorafleet_surrogate_error")
        assert error == pytest.approx(learner.errors[-1][1])
        errors = [e for _, e in learner.errors]
        if slowdown > 1.1:  # predicted at the profile first, then at the learned speed
            assert errors[0] > 0.1 and errors[-1] < 0.5 * errors[0]
        else:
            assert max(errors[-2:]) < 0.1
        for worker in ("w0", "w1"):  # each worker's own speed, or the fleet's until it has one
            own = learner.speed(worker)
            assert registry.get_sample_value("lorafleet_worker_speed", {"worker": worker}) == \
                pytest.approx(learner.capacity_scale if own is None else own, abs=0.02)
        return replanner.learner.capacity_scale, replanner.learner.online.windows()


async def test_slower_workers_lower_the_capacity_scale(tmp_path: Path) -> None:
    scale, windows = await _learned_scale(tmp_path, slowdown=1.2)
    assert windows >= 6
    assert scale == pytest.approx(1 / 1.2, rel=0.07)


async def test_matching_workers_keep_it_near_one(tmp_path: Path) -> None:
    scale, windows = await _learned_scale(tmp_path, slowdown=1.0)
    assert windows >= 6
    assert scale == pytest.approx(1.0, rel=0.07)
