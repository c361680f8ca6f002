"""The emulated worker's HTTP application: vLLM 0.32's OpenAI-compatible surface.

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``,
``POST /v1/load_lora_adapter``, ``POST /v1/unload_lora_adapter`` (vLLM registers these only
with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING``; the emulator always does unless
``runtime_lora_updating`` is off), ``GET /metrics``, ``GET /health``, ``GET /version``.
Errors (``ApiError``) become vLLM's JSON error body in one middleware.

Serve with handler cancellation on, so that a client that disconnects cancels its handler
and aborts its request (``serve`` below does; aiohttp's test server does too).

Examples
--------
>>> from twin.catalog import get_gpu, get_model
>>> from twin.profile import load_profile
>>> from twin.specs import EngineConfig
>>> cfg = WorkerConfig(model=get_model("llama-3.1-8b"), gpu=get_gpu("a100-80gb"),
...                    profile=load_profile("roofline-default"), engine=EngineConfig(),
...                    served_model_name="base")
>>> sorted({r.resource.canonical for r in create_app(cfg).router.routes()
...         if r.resource is not None})[:3]
['/health', '/metrics', '/v1/chat/completions']
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.emulator.completions import chat_completions, completions, read_json
from gateway.emulator.config import WorkerConfig
from gateway.emulator.errors import ApiError
from gateway.emulator.protocol import LoadLoRAAdapterRequest, UnloadLoRAAdapterRequest, parse_body
from gateway.emulator.service import VLLM_VERSION, EmulatedWorker
from gateway.http import serve
from gateway.server.keys import EMULATED_WORKER

__all__ = ["create_app", "serve"]

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return web.json_response(exc.body(), status=int(exc.status))


async def _models(request: web.Request) -> web.Response:
    return web.json_response(request.app[EMULATED_WORKER].models_body())


async def _load(request: web.Request) -> web.Response:
    body = parse_body(LoadLoRAAdapterRequest, await read_json(request))
    text = await request.app[EMULATED_WORKER].adapters.load(
        body.lora_name, body.lora_path, load_inplace=body.load_inplace)
    return web.Response(text=text)


async def _unload(request: web.Request) -> web.Response:
    body = parse_body(UnloadLoRAAdapterRequest, await read_json(request))
    return web.Response(text=request.app[EMULATED_WORKER].adapters.unload(body.lora_name))


async def _metrics(request: web.Request) -> web.Response:
    data = generate_latest(request.app[EMULATED_WORKER].registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _health(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def _version(request: web.Request) -> web.Response:
    return web.json_response({"version": VLLM_VERSION})


def create_app(cfg: WorkerConfig) -> web.Application:
    """The application of one emulated worker; its engine starts with the app.

    Raises ``StartupError`` where vLLM would refuse to start.
    """
    worker = EmulatedWorker(cfg)
    app = web.Application(middlewares=[_errors])
    app[EMULATED_WORKER] = worker

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        await worker.start()
        yield
        await worker.stop()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", _models)
    if cfg.runtime_lora_updating:
        app.router.add_post("/v1/load_lora_adapter", _load)
        app.router.add_post("/v1/unload_lora_adapter", _unload)
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/health", _health)
    app.router.add_get("/version", _version)
    return app
