"""The admin API, behind a bearer token (``admin_token_env``, default
``LORAFLEET_ADMIN_TOKEN``, read at start-up; compared in constant time).

Every ``/admin/*`` route is guarded by ``admin_middleware``: 401 without the token or with a
wrong one, 403 when no token is configured (the admin API is then off). Errors are
OpenAI-style JSON.

- ``GET /admin/placement``: each worker's adapters and shares, the plan's GPU count, GPUs
  active, and the baselines the metrics know.
- ``GET /admin/workers``: name, URL, status (health), state (``lorafleet_worker_state``'s;
  null once gone), requests outstanding, adapters resident.
- ``POST /admin/adapters`` ``{"name", "path", "rate"?, "input_tokens"?, "output_tokens"?,
  "input_std"?, "output_std"?, "cv"?}``: registers an adapter. Its rank is read from
  ``<path>/adapter_config.json`` (``r``), so the gateway must see the path the workers load
  from. 400 naming the field on bad input, 409 if the name is taken; 201 with the record.
  It is listed by ``/v1/models`` at once; placing it is the replanner's job (until then its
  requests answer 503).
- ``DELETE /admin/adapters/{name}``: 404 if unknown. Stops routing it (new requests are 404),
  waits up to ``drain_timeout_s`` for its requests in flight, unloads it from the workers
  that hold it (vLLM's ``/v1/unload_lora_adapter``) and forgets it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

from aiohttp import web
from pydantic import Field, field_validator

from gateway.config import AdapterEntry, AdapterOrigin
from gateway.errors import ApiError, AuthError, clip
from gateway.fleet.lora_api import LoraCallError, unload_adapter
from gateway.openai_schema import OpenAIBody
from gateway.server.keys import ADMIN_TOKEN, CLIENT_SESSION, FLEET, GATEWAY_CONFIG
from gateway.server.protocol import parse_body, read_json
from planner import MAX_CV, MAX_RATE, MAX_TOKENS, AdapterDemand, adapter_name_error
from twin.routing import BASE_MODEL
from twin.specs import ALLOWED_LORA_RANKS

__all__ = ["AddAdapterRequest", "add_admin_routes", "admin_middleware", "check_bearer",
           "token_digest"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PREFIX = "/admin"


def token_digest(token: str | None) -> bytes | None:
    """What the middleware compares against (None: the admin API is off)."""
    return hashlib.sha256(token.encode()).digest() if token else None


def check_bearer(request: web.Request, expected: bytes | None, *, env: str, what: str,
                 name: str) -> None:
    """The request carries ``Authorization: Bearer <token>`` whose digest is ``expected``
    (compared in constant time): 401 otherwise (``Incorrect <name>.``), 403 when no token
    is configured (``env`` unset in the gateway's environment: ``what`` is then off)."""
    if expected is None:
        raise ApiError(HTTPStatus.FORBIDDEN, "PermissionDeniedError",
                       f"{what} is disabled: no token is configured (set {env} in the "
                       "gateway's environment).")
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise AuthError(HTTPStatus.UNAUTHORIZED, "invalid_request_error",
                        f"{what} needs Authorization: Bearer <{name}>.", None)
    if not hmac.compare_digest(hashlib.sha256(token.strip().encode()).digest(), expected):
        raise AuthError(HTTPStatus.UNAUTHORIZED, "invalid_request_error",
                        f"Incorrect {name}.", "invalid_api_key")


@web.middleware
async def admin_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path != PREFIX and not request.path.startswith(PREFIX + "/"):
        return await handler(request)
    check_bearer(request, request.app[ADMIN_TOKEN],
                 env=request.app[GATEWAY_CONFIG].admin_token_env, what="The admin API",
                 name="admin token")
    return await handler(request)


class AddAdapterRequest(OpenAIBody):
    """``POST /admin/adapters``; unknown fields are refused (a typo is not ignored), and every
    number is bounded as in the config (``planner.features.demand_error``)."""

    model_config = OpenAIBody.model_config | {"extra": "forbid"}

    name: str
    path: str = Field(min_length=1, max_length=4096)
    rate: float = Field(default=0.0, ge=0, le=MAX_RATE, allow_inf_nan=False)
    input_tokens: float = Field(default=512.0, ge=1, le=MAX_TOKENS, allow_inf_nan=False)
    output_tokens: float = Field(default=128.0, ge=1, le=MAX_TOKENS, allow_inf_nan=False)
    input_std: float = Field(default=0.0, ge=0, le=MAX_TOKENS, allow_inf_nan=False)
    output_std: float = Field(default=0.0, ge=0, le=MAX_TOKENS, allow_inf_nan=False)
    cv: float = Field(default=1.0, gt=0, le=MAX_CV, allow_inf_nan=False)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        error = adapter_name_error(value)
        if error is not None:
            raise ValueError(error)
        return value


def read_rank(path: str) -> int:
    """``r`` from ``path/adapter_config.json``; a 400 naming ``path`` otherwise."""
    config_file = Path(path) / "adapter_config.json"
    try:
        config = json.loads(config_file.read_text())
    except OSError as exc:
        raise ApiError.bad_request(f"cannot read {config_file}: {exc.strerror}", "path") from None
    except ValueError as exc:
        raise ApiError.bad_request(f"{config_file} is not JSON: {exc}", "path") from None
    rank = config.get("r") if isinstance(config, dict) else None
    if isinstance(rank, bool) or rank not in ALLOWED_LORA_RANKS:
        raise ApiError.bad_request(f"{config_file}: r must be one of vLLM's LoRA ranks "
                                   f"{list(ALLOWED_LORA_RANKS)}, got {rank!r}", "path")
    return int(rank)


async def _json_body(request: web.Request) -> Any:
    return (await read_json(request))[1]


async def placement(request: web.Request) -> web.Response:
    fleet = request.app[FLEET]
    plan = fleet.plan
    workers = [{"name": w.endpoint.name,
                "adapters": {} if plan is None else {
                    ("<base model>" if k == BASE_MODEL else k): v
                    for k, v in plan.workers[i].shares.items()}}
               for i, w in enumerate(fleet.workers)]
    baselines = fleet.gpus_baseline()  # as lorafleet_gpus_baseline{policy} exports them
    placed = set().union(*(w["adapters"] for w in workers)) if workers else set()
    return web.json_response({
        "planned": plan is not None, "planned_gpus": fleet.planned_gpus,
        "tensor_parallel_size": fleet.tensor_parallel_size,
        "gpus_active": fleet.gpus_active, "gpus_running": fleet.gpus_running,
        "workers": workers, "baselines": baselines,
        "unplaced": sorted(set(fleet.adapters) - placed)})


async def workers(request: web.Request) -> web.Response:
    fleet = request.app[FLEET]
    return web.json_response({"workers": [
        {"name": w.endpoint.name, "url": w.endpoint.url, "status": w.status.value,
         "state": getattr(fleet.phase(i), "value", None),  # lorafleet_worker_state's
         "outstanding": fleet.outstanding(i), "resident": sorted(w.resident)}
        for i, w in enumerate(fleet.workers)]})


def _record(entry: AdapterEntry) -> dict[str, Any]:
    d = entry.demand
    return {"name": d.name, "path": entry.path, "rank": d.rank, "rate": d.rate,
            "input_tokens": d.input_tokens, "output_tokens": d.output_tokens,
            "input_std": d.input_std, "output_std": d.output_std, "cv": d.cv}


async def add_adapter(request: web.Request) -> web.Response:
    body = parse_body(AddAdapterRequest, await _json_body(request))
    fleet = request.app[FLEET]
    if body.name in fleet.adapters or body.name in fleet.removing \
            or body.name in (fleet.base_model, BASE_MODEL):
        raise ApiError(HTTPStatus.CONFLICT, "ConflictError",
                       f"The adapter `{body.name}` exists.", "name")
    rank = await asyncio.to_thread(read_rank, body.path)
    demand = AdapterDemand(name=body.name, rank=rank, rate=body.rate,
                           input_tokens=body.input_tokens, output_tokens=body.output_tokens,
                           input_std=body.input_std, output_std=body.output_std, cv=body.cv)
    entry = AdapterEntry(demand, body.path, AdapterOrigin.ADMIN)
    try:
        fleet.register(entry)
    except ValueError:  # registered by another request while the rank was read
        raise ApiError(HTTPStatus.CONFLICT, "ConflictError",
                       f"The adapter `{body.name}` exists.", "name") from None
    return web.json_response({**_record(entry), "placed": False}, status=201)


async def remove_adapter(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    app = request.app
    cfg, fleet = app[GATEWAY_CONFIG], app[FLEET]
    if name not in fleet.adapters:
        raise ApiError(HTTPStatus.NOT_FOUND, "NotFoundError",
                       f"The adapter `{clip(name)}` does not exist.", "name")
    fleet.retire(name)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.drain_timeout_s
        drained = True
        for i in range(len(fleet.workers)):
            drained &= await fleet.drained(i, [name], max(0.0, deadline - loop.time()))
        holders = [i for i, w in enumerate(fleet.workers) if name in w.resident]

        async def unload(i: int) -> str | None:
            try:
                await unload_adapter(app[CLIENT_SESSION], fleet.workers[i].endpoint.url, name,
                                     timeout=cfg.load_timeout_s)
            except LoraCallError as exc:
                return str(exc)
            fleet.forget(i, name)
            return None

        errors = await asyncio.gather(*(unload(i) for i in holders))
    finally:
        fleet.retired(name)
    failed = {fleet.workers[i].endpoint.name: e for i, e in zip(holders, errors, strict=True)
              if e is not None}
    return web.json_response({
        "name": name, "removed": True, "drained": drained,
        "unloaded_from": [fleet.workers[i].endpoint.name for i, e in
                          zip(holders, errors, strict=True) if e is None],
        "failed": failed})


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get(PREFIX + "/placement", placement)
    app.router.add_get(PREFIX + "/workers", workers)
    app.router.add_post(PREFIX + "/adapters", add_adapter)
    app.router.add_delete(PREFIX + "/adapters/{name}", remove_adapter)
