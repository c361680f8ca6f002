"""HTTP glue of the gateway's OpenAI-compatible surface.

``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``
(alive), ``GET /ready`` (a placement and a healthy worker), ``GET /metrics`` (open, or behind
a bearer token with ``metrics_token_env``: the series name every adapter, which client keys
otherwise hide from each other).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.errors import ApiError
from gateway.server.admin import check_bearer
from gateway.server.auth import check_model, visible
from gateway.server.keys import FLEET, GATEWAY_CONFIG, GATEWAY_METRICS, METRICS_TOKEN
from gateway.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    SamplingRequest,
    parse_body,
    read_json,
)
from gateway.server.proxy import forward

__all__ = ["add_routes"]

_CREATED = int(time.time())


async def _read_json(request: web.Request) -> tuple[bytes, dict[str, Any]]:
    raw, body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError.bad_request("the request body must be a JSON object")
    return raw, body


async def _serve(request: web.Request, path: str,
                 model: type[SamplingRequest]) -> web.StreamResponse:
    raw, body = await _read_json(request)
    parsed = parse_body(model, body)
    check_model(request, parsed.model)
    return await forward(request, path, raw, body, parsed)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "/v1/completions", CompletionRequest)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "/v1/chat/completions", ChatCompletionRequest)


def _card(model_id: str, root: str, parent: str | None,
          max_model_len: int | None) -> dict[str, Any]:
    """A model card in vLLM's shape (``entrypoints/openai/models/serving.py``)."""
    return {"id": model_id, "object": "model", "created": _CREATED, "owned_by": "vllm",
            "root": root, "parent": parent, "max_model_len": max_model_len,
            "permission": [{
                "id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission",
                "created": _CREATED, "allow_create_engine": False, "allow_sampling": True,
                "allow_logprobs": True, "allow_search_indices": False, "allow_view": True,
                "allow_fine_tuning": False, "organization": "*", "group": None,
                "is_blocking": False}]}


async def models(request: web.Request) -> web.Response:
    cfg = request.app[GATEWAY_CONFIG]
    fleet = request.app[FLEET]
    cards = [_card(cfg.base_model, cfg.base_model, None, cfg.max_model_len)]
    cards += [_card(name, entry.path or name, cfg.base_model, None)
              for name, entry in fleet.adapters.items()]
    cards = [c for c in cards if visible(request, c["id"])]  # what the client's key may use
    return web.json_response({"object": "list", "data": cards})


async def health(request: web.Request) -> web.Response:
    return web.Response(status=200)


async def ready(request: web.Request) -> web.Response:
    fleet = request.app[FLEET]
    up = sum(1 for w in fleet.workers if w.up)
    body = {"ready": fleet.ready, "placement": fleet.router is not None, "workers_up": up,
            "workers": len(fleet.workers), "gpus_active": fleet.gpus_active}
    return web.json_response(body, status=200 if fleet.ready else 503)


async def metrics(request: web.Request) -> web.Response:
    env = request.app[GATEWAY_CONFIG].metrics_token_env
    if env is not None:  # adapter names are in the series: scrapes need the token
        check_bearer(request, request.app[METRICS_TOKEN], env=env, what="/metrics",
                     name="metrics token")
    data = generate_latest(request.app[GATEWAY_METRICS].registry)
    return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
