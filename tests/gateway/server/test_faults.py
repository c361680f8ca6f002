"""Faults with workers in processes of their own (``procfleet``), through the official
``openai`` client: a worker killed mid-stream, and a worker that hangs (SIGSTOP).

Either way the client of the failed worker gets a clean OpenAI error (an SSE error event, or a
502) within bounded time, clients of the other workers see no failure, the worker is marked
down, and its adapters are re-placed and served by the others. (A load that fails and a
gateway restart are covered by ``test_replan.py`` and ``test_state.py``.)
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI

from gateway.fleet.registry import WorkerStatus
from gateway.server.keys import FLEET
from tests.gateway.server.factories import demands
from tests.gateway.server.procfleet import FaultStack, fault_stack

NAMES = [f"a{i}" for i in range(6)]  # round-robin over 3 workers: w0 a0 a3, w1 a1 a4, ...
ADMIN = {"Authorization": "Bearer fault-token"}
LONG = 1500  # tokens: a stream that lasts ~10 s at real speed, so it is cut mid-way
REPLACED_WITHIN_S = 60.0  # the first re-plan starts the planning process's surrogate


@pytest.fixture(autouse=True)
def _admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLEET_FAULT_ADMIN", "fault-token")


@dataclass
class Tally:
    ok: int = 0
    failed: list[str] = field(default_factory=list)


@asynccontextmanager
async def other_clients(stack: FaultStack, models: Sequence[str]) -> AsyncIterator[Tally]:
    """Clients of the healthy workers' adapters, streaming and not, until the block ends."""
    tally, stop = Tally(), asyncio.Event()

    async def loop(client: AsyncOpenAI, k: int) -> None:
        while not stop.is_set():
            model = models[k % len(models)]
            try:
                if k % 2:
                    chunks = [c async for c in await client.completions.create(
                        model=model, prompt="hello", max_tokens=4, stream=True)]
                    ok = sum(1 for c in chunks if c.choices) == 4
                else:
                    done = await client.completions.create(model=model, prompt="hello",
                                                           max_tokens=4)
                    ok = done.usage is not None and done.usage.completion_tokens == 4
            except openai.APIError as exc:
                ok = False
                tally.failed.append(f"{model}: {exc!r}")
            tally.ok += ok
            k += 4

    async with AsyncOpenAI(base_url=stack.v1, api_key="x", max_retries=0,
                           timeout=30) as client:
        tasks = [asyncio.create_task(loop(client, k)) for k in range(4)]
        try:
            yield tally
        finally:
            stop.set()
            await asyncio.gather(*tasks)


async def _status(stack: FaultStack, name: str) -> str:
    async with stack.session.get(f"{stack.url}/admin/workers", headers=ADMIN) as resp:
        assert resp.status == 200
        workers = (await resp.json())["workers"]
    return str(next(w["status"] for w in workers if w["name"] == name))


async def _until(check: Callable[[], Any], within: float, what: str) -> float:
    """Seconds until ``await check()`` is true; fails after ``within``."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < within, f"{what}: not within {within} s"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def _replaced(stack: FaultStack, name: str, lost: Sequence[str]) -> None:
    """The worker ``name`` holds nothing and every adapter it held is served elsewhere."""
    fleet = stack.app[FLEET]

    async def moved() -> bool:
        return not fleet.holding()[name]

    await _until(moved, REPLACED_WITHIN_S, f"{name}'s adapters re-placed")
    holders = {a: [w for w, held in fleet.holding().items() if a in held] for a in lost}
    assert all(h and name not in h for h in holders.values()), holders
    async with AsyncOpenAI(base_url=stack.v1, api_key="x", max_retries=0,
                           timeout=30) as client:
        for adapter in lost:
            done = await client.completions.create(model=adapter, prompt="x", max_tokens=2)
            assert done.usage is not None and done.usage.completion_tokens == 2


async def test_worker_killed_mid_stream(tmp_path: Path) -> None:
    async with fault_stack(tmp_path, demands(*NAMES), admin_token_env="LORAFLEET_FAULT_ADMIN",
                           load_timeout_s=5.0) as stack:
        fleet = stack.app[FLEET]
        lost = sorted(fleet.holding()["w0"])
        spared = [a for a in NAMES if a not in lost]
        assert lost and spared
        received = 0
        async with other_clients(stack, spared) as tally, AsyncOpenAI(
                base_url=stack.v1, api_key="x", max_retries=0, timeout=30) as client:
            await asyncio.sleep(0.3)
            stream = await client.completions.create(model=lost[0], prompt="tell a story",
                                                     max_tokens=LONG, stream=True)

            async def consume() -> None:
                nonlocal received
                async for chunk in stream:
                    received += bool(chunk.choices)
                    if received == 5:
                        stack.processes[0].kill()

            started = time.monotonic()
            with pytest.raises(openai.APIError) as caught:
                await asyncio.wait_for(consume(), 15)
            cut_after = time.monotonic() - started
            await asyncio.sleep(0.5)  # the others go on after the kill
        assert 5 <= received < LONG
        body = caught.value.body
        assert isinstance(body, dict) and body["code"] == 502  # the gateway's error event
        assert "mid-stream" in caught.value.message
        assert cut_after < 10
        assert not tally.failed, tally.failed[:5]
        assert tally.ok >= 8

        async def down() -> bool:
            return await _status(stack, "w0") == "down"

        await _until(down, 5, "w0 marked down")
        await _replaced(stack, "w0", lost)
        assert fleet.workers[1].up and fleet.workers[2].up


async def test_hanging_worker_times_out_and_is_replaced(tmp_path: Path) -> None:
    read_timeout = 1.5
    async with fault_stack(tmp_path, demands(*NAMES), admin_token_env="LORAFLEET_FAULT_ADMIN",
                           read_timeout_s=read_timeout, load_timeout_s=2.0,
                           health_interval_s=1.0) as stack:
        fleet = stack.app[FLEET]
        frozen = stack.processes[1]
        lost = sorted(fleet.holding()["w1"])
        spared = [a for a in NAMES if a not in lost]
        try:
            async with other_clients(stack, spared) as tally, AsyncOpenAI(
                    base_url=stack.v1, api_key="x", max_retries=0, timeout=30) as client:
                stream = await client.completions.create(model=lost[0], prompt="tell a story",
                                                         max_tokens=LONG, stream=True)
                chunks = stream.__aiter__()
                for _ in range(3):
                    await chunks.__anext__()
                frozen.freeze()
                started = time.monotonic()

                async def rest() -> None:
                    async for _ in chunks:
                        pass

                stalled, asked = await asyncio.gather(
                    asyncio.wait_for(rest(), 10),
                    client.completions.create(model=lost[1], prompt="x", max_tokens=2),
                    return_exceptions=True)
                failed_after = time.monotonic() - started
            # the stream in flight ends with an error event, the new request with a 502
            assert isinstance(stalled, openai.APIError), stalled
            assert isinstance(stalled.body, dict) and stalled.body["code"] == 502
            assert isinstance(asked, openai.APIStatusError), asked
            assert asked.status_code == 502 and "timed out" in asked.message
            assert failed_after < read_timeout + 2.5
            assert not tally.failed, tally.failed[:5]

            async def down() -> bool:
                return await _status(stack, "w1") == "down"

            await _until(down, 15, "w1 marked down after three slow answers")
            await _replaced(stack, "w1", lost)
        finally:
            frozen.thaw()

        async def back() -> bool:
            return fleet.workers[1].status is WorkerStatus.UP

        await _until(back, 10, "w1 back up after SIGCONT")
