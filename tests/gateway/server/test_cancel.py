"""A client that goes away aborts its upstream request, streaming or not."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from gateway.server.keys import FLEET
from tests.gateway.server.factories import Stack, demands, gateway_stack

LONG = {"model": "sql", "prompt": "x", "max_tokens": 1500}  # ~15 s of decoding in real time


async def _running(s: Stack) -> float:
    return await s.worker_metric(0, "vllm:num_requests_running")


async def _until_idle(s: Stack) -> None:
    for _ in range(100):
        if await _running(s) == 0 and s.app[FLEET].outstanding(0) == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the upstream request was not aborted")


async def _assert_no_more_tokens(s: Stack) -> None:
    before = await s.worker_metric(0, "vllm:generation_tokens_total")
    await asyncio.sleep(0.2)
    assert await s.worker_metric(0, "vllm:generation_tokens_total") == before


async def test_stream_disconnect_aborts_upstream(tmp_path: Path) -> None:
    async with gateway_stack(tmp_path, demands("sql"), workers=1, time_scale=1.0) as s:
        resp = await s.session.post(f"{s.v1}/completions", json={**LONG, "stream": True})
        assert resp.status == 200
        for _ in range(3):
            assert (await resp.content.readline()).startswith(b"data: ")
            await resp.content.readline()
        assert await _running(s) == 1
        resp.close()  # drop the connection mid-stream
        await _until_idle(s)
        await _assert_no_more_tokens(s)


async def test_non_stream_disconnect_aborts_upstream(tmp_path: Path) -> None:
    async with gateway_stack(tmp_path, demands("sql"), workers=1, time_scale=1.0) as s:
        task = asyncio.create_task(s.session.post(f"{s.v1}/completions", json=LONG))
        for _ in range(100):
            if await _running(s) == 1:
                break
            await asyncio.sleep(0.02)
        assert await _running(s) == 1
        task.cancel()  # the client gives up: its connection is closed
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await _until_idle(s)
        await _assert_no_more_tokens(s)
        async with s.session.get(f"{s.url}/metrics") as resp:
            assert 'lorafleet_requests_total{adapter="sql",status="499"} 1.0' in await resp.text()
