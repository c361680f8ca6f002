"""Health checks under load: a worker whose ``/health`` answers late while it streams tokens
stays up (vLLM's API server answers ``/health`` on the event loop that writes the responses,
so on a loaded CPU server it is late); one that is late and silent is marked down."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import openai
from aiohttp import web
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI

from gateway.config import AdapterEntry, GatewayConfig, PlacementMode, WorkerEndpoint
from gateway.control.planning import round_robin
from gateway.emulator.adapters import scaffold_adapter
from gateway.fleet.registry import WorkerStatus
from gateway.server.app import create_app
from gateway.server.keys import FLEET
from tests.gateway.server.factories import BASE, demands

INTERVAL_S = 0.2  # health checks; each times out after this too
STREAM_S = 3.0  # one stream: 15 health intervals, 5x the misses that mark a worker down


def _late_health_vllm(stalled: asyncio.Event) -> web.Application:
    """A vLLM-shaped worker whose ``/health`` never answers in time, streaming one chunk
    every 0.1 s (none once ``stalled``: a hung engine)."""

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": BASE, "parent": None}, {"id": "sql", "parent": BASE}]})

    async def health(request: web.Request) -> web.Response:
        await asyncio.sleep(10 * INTERVAL_S)
        return web.Response()

    async def completions(request: web.Request) -> web.StreamResponse:
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        for i in range(int(STREAM_S / 0.1)):
            while stalled.is_set():
                await asyncio.sleep(0.1)
            chunk = {"id": "c", "object": "text_completion", "model": "sql", "created": 0,
                     "choices": [{"index": 0, "text": str(i), "finish_reason": None}]}
            await out.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await asyncio.sleep(0.1)
        await out.write(b"data: [DONE]\n\n")
        return out

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/health", health)
    return app


async def _watch(app: web.Application, until: asyncio.Future[object]) -> list[WorkerStatus]:
    seen = []
    while not until.done():
        seen.append(app[FLEET].workers[0].status)
        await asyncio.sleep(INTERVAL_S / 2)
    return seen


async def test_late_health_while_streaming_is_load_and_late_and_silent_is_down(
        tmp_path: Path) -> None:
    stalled = asyncio.Event()
    async with TestServer(_late_health_vllm(stalled)) as worker:
        sql = demands("sql")
        cfg = GatewayConfig(
            base_model=BASE, adapters=(AdapterEntry(sql[0], str(scaffold_adapter(
                tmp_path / "sql", rank=8))),),
            workers=(WorkerEndpoint("w0", str(worker.make_url("")).rstrip("/")),),
            placement=PlacementMode.ROUND_ROBIN, health_interval_s=INTERVAL_S,
            connect_timeout_s=INTERVAL_S, replan_interval_s=0)
        app = create_app(cfg, plan=round_robin(sql, ["w0"]))
        async with TestServer(app) as gw, AsyncOpenAI(
                base_url=str(gw.make_url("/v1")), api_key="x", max_retries=0) as client:
            for _ in range(500):
                if app[FLEET].ready:
                    break
                await asyncio.sleep(0.01)
            assert app[FLEET].ready

            async def stream() -> int:
                chunks = [c async for c in await client.completions.create(
                    model="sql", prompt="x", max_tokens=30, stream=True)]
                return len(chunks)

            served = asyncio.ensure_future(stream())
            during = await _watch(app, served)
            assert served.result() == int(STREAM_S / 0.1)
            assert set(during) == {WorkerStatus.UP}, during  # late /health: load

            stalled.set()  # the engine hangs: late /health and no tokens
            hung = asyncio.ensure_future(stream())
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30 * INTERVAL_S + 10  # the busy window, then 3 misses
            while app[FLEET].workers[0].status is WorkerStatus.UP and loop.time() < deadline:
                await asyncio.sleep(INTERVAL_S / 2)
            assert app[FLEET].workers[0].status is WorkerStatus.DOWN
            stalled.clear()
            hung.cancel()
            with contextlib.suppress(asyncio.CancelledError, openai.APIError):
                await hung
