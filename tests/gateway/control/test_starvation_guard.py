"""The starvation guard at the gateway: an emulated worker with ``max_loras 2`` serving three
equally busy adapters locks one out (vLLM's skip rule, copied by the twin), and the guard
re-plans (trigger ``starvation``) within 10 s; a healthy fleet sees no guard re-plan."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from openai import AsyncOpenAI

from gateway.server.keys import CONTROL, GATEWAY_METRICS, GUARD
from tests.gateway.server.factories import demands, gateway_stack


async def _load(url: str, names: list[str], rate: float, stop: asyncio.Event,
                seed: int = 0) -> dict[str, list[float]]:
    """Poisson arrivals at ``rate`` req/s per adapter, streamed, lengths drawn from 32-128
    tokens, until ``stop``; each adapter's TTFTs (open loop: closed-loop clients of equal
    requests finish together, and the adapter leaves the batch for the next one)."""
    rng = random.Random(seed)
    ttfts: dict[str, list[float]] = {n: [] for n in names}
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    async def one(client: AsyncOpenAI, name: str, max_tokens: int) -> None:
        started = loop.time()
        stream = await client.completions.create(model=name, prompt="hello " * 32,
                                                 max_tokens=max_tokens, stream=True)
        async for _ in stream:
            if started:
                ttfts[name].append(loop.time() - started)
                started = 0.0

    async with AsyncOpenAI(base_url=url, api_key="x", max_retries=0, timeout=120) as client:
        next_at = {n: loop.time() + rng.expovariate(rate) for n in names}
        while not stop.is_set():
            name = min(next_at, key=next_at.__getitem__)
            await asyncio.sleep(max(0.0, next_at[name] - loop.time()))
            next_at[name] += rng.expovariate(rate)
            task = asyncio.create_task(one(client, name, rng.randint(32, 128)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return ttfts


def _starvation_replans(app) -> float:  # type: ignore[no-untyped-def]
    registry = app[GATEWAY_METRICS].registry
    return registry.get_sample_value("lorafleet_replans_total", {"trigger": "starvation"}) or 0.0


async def test_the_guard_catches_a_skip_rule_lockout_within_10_s(tmp_path: Path) -> None:
    names = ["a", "b", "c"]
    async with gateway_stack(tmp_path, demands(*names), workers=1, time_scale=1.0,
                             max_loras=2, replan_interval_s=3600, ttft_bound_s=10.0,
                             validate_replans=False) as stack:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        started = loop.time()
        load = asyncio.create_task(_load(stack.v1, names, rate=8.0, stop=stop))
        try:
            guard = stack.app[GUARD]
            deadline = started + 60
            while _starvation_replans(stack.app) < 1 and loop.time() < deadline:
                await asyncio.sleep(0.2)
        finally:
            stop.set()
            ttfts = await load
        assert _starvation_replans(stack.app) >= 1
        # found (and its re-plan started) within 10 s of the load: the lockout shows after
        # lockout_s (5 s), checked once a second
        assert guard.last_fired - started < 10.0
        registry = stack.app[GATEWAY_METRICS].registry
        assert registry.get_sample_value("lorafleet_starvation_findings_total",
                                         {"evidence": "lockout"}) >= 1
        body = next(b for b in stack.app[CONTROL].replanner.history if b["trigger"] == "starvation")
        assert body["speeds"]["w0"] < 1.0  # the worker is planned with less room
    # one adapter was locked out: it got (almost) no first token while the others streamed
    counts = sorted(len(v) for v in ttfts.values())
    assert counts[0] <= 0.2 * counts[1] and counts[1] > 20


@pytest.mark.slow
async def test_no_guard_replan_on_a_steady_healthy_fleet_over_5_minutes(tmp_path: Path) -> None:
    """Five minutes of the workers' time (60 s at ``time_scale`` 5, every threshold scaled
    with it) of a steady load well inside two roomy workers, periodic re-plans on."""
    names = [f"a{i}" for i in range(6)]
    async with gateway_stack(tmp_path, demands(*names), workers=2, time_scale=5.0,
                             roomy=True, replan_interval_s=10, ttft_bound_s=10.0,
                             validate_replans=False) as stack:
        stop = asyncio.Event()
        load = asyncio.create_task(_load(stack.v1, names, rate=2.0, stop=stop, seed=1))
        await asyncio.sleep(60)
        stop.set()
        ttfts = await load
        served = sum(len(v) for v in ttfts.values())
        assert served > 500  # the load ran: ~2 req/s for each of 6 adapters
        history = list(stack.app[CONTROL].replanner.history)
        assert sum(b["trigger"] == "periodic" for b in history) >= 3
        assert _starvation_replans(stack.app) == 0
        registry = stack.app[GATEWAY_METRICS].registry
        for evidence in ("lockout", "ttft", "queue"):
            assert registry.get_sample_value("lorafleet_starvation_findings_total",
                                             {"evidence": evidence}) == 0
