"""Process-level HTTP plumbing: the collector tuning of a serving process, and the gateway's
upstream session keeping no cookies between clients."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI

from gateway.config import GatewayConfig, PlacementMode, WorkerEndpoint
from gateway.http import GC_GEN0_THRESHOLD, tune_gc
from gateway.server.app import create_app
from gateway.server.keys import FLEET


def test_tune_gc_freezes_startup_objects_and_raises_the_young_threshold() -> None:
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    try:
        tune_gc()
        assert gc.get_threshold()[0] >= GC_GEN0_THRESHOLD
        assert gc.get_threshold()[1:] == before[1:]
        assert gc.get_freeze_count() > frozen
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def _stub_worker(cookies_seen: list[str | None]) -> web.Application:
    """A worker in vLLM's shapes for what the gateway calls, that sets a cookie on every
    completion and notes the ``Cookie`` header each completion request carried."""
    async def models(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": "base", "object": "model", "root": "base", "parent": None}]})

    async def health(_: web.Request) -> web.Response:
        return web.Response()

    async def completions(request: web.Request) -> web.Response:
        cookies_seen.append(request.headers.get("Cookie"))
        body = {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": "base",
                "choices": [{"index": 0, "text": "hi", "finish_reason": "length",
                             "logprobs": None}],
                "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}}
        response = web.json_response(body)
        response.set_cookie("session", "worker-secret")
        return response

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_post("/v1/completions", completions)
    return app


async def test_a_workers_cookie_is_not_replayed_on_other_clients_requests(
        tmp_path: Path) -> None:
    seen: list[str | None] = []
    async with TestServer(_stub_worker(seen)) as worker:
        # by host name: aiohttp's default jar keeps no cookies from IP addresses, but
        # workers are named (a Kubernetes Service, a compose service)
        cfg = GatewayConfig(base_model="base", workers=(WorkerEndpoint(
            "w0", f"http://localhost:{worker.port}"),), adapters=(),
            placement=PlacementMode.ROUND_ROBIN, health_interval_s=0.2)
        app = create_app(cfg)
        async with TestServer(app) as gateway:
            for _ in range(300):
                if app[FLEET].ready:
                    break
                await asyncio.sleep(0.01)
            assert app[FLEET].ready
            client = AsyncOpenAI(base_url=str(gateway.make_url("/v1")), api_key="x",
                                 max_retries=0)
            for _ in range(2):
                done = await client.completions.create(model="base", prompt="hi", max_tokens=1)
                assert done.usage is not None and done.usage.completion_tokens == 1
            await client.close()
    assert seen == [None, None]
