"""The gateway's application factory.

Examples
--------
>>> from gateway.config import parse_config
>>> cfg = parse_config({"base_model": "b", "workers": ["http://127.0.0.1:8001"]})
>>> routes = {r.resource.canonical for r in create_app(cfg).router.routes()
...           if r.resource is not None}
>>> sorted(r for r in routes if not r.startswith("/admin/"))
['/health', '/metrics', '/ready', '/v1/chat/completions', '/v1/completions', '/v1/models']
>>> {"/admin/adapters", "/admin/adapters/{name}", "/admin/placement"} <= routes
True
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from gateway import http
from gateway.config import GatewayConfig
from gateway.control.plane import ControlPlane
from gateway.control.planning import InitialPlan
from gateway.control.replicas import shared_state
from gateway.control.restore import restore
from gateway.control.running import running
from gateway.control.state import FileStateStore, StateKeeper
from gateway.fleet.metrics import GatewayMetrics
from gateway.fleet.registry import Fleet
from gateway.fleet.upstream import UpstreamPool
from gateway.server.access import access_middleware
from gateway.server.admin import add_admin_routes, admin_middleware, token_digest
from gateway.server.auth import KeyRing, auth_middleware, worker_key
from gateway.server.errors import error_middleware
from gateway.server.forward import forward_admin, forward_session
from gateway.server.key_limits import shared_limits
from gateway.server.keys import (
    ADMIN_TOKEN,
    CLIENT_SESSION,
    CONTROL,
    FLEET,
    GATEWAY_CONFIG,
    GATEWAY_METRICS,
    GUARD,
    KEYRING,
    METRICS_TOKEN,
    OBSERVER,
    UPSTREAM_POOL,
)
from gateway.server.listener import ConnectionGuard, GuardedSite, ListenerLimits
from gateway.server.replan_routes import add_replan_routes
from gateway.server.routes import add_routes

__all__ = ["create_app", "serve"]

Ctx = Callable[[web.Application], AsyncIterator[None]]


def create_app(cfg: GatewayConfig, *, plan: InitialPlan | None = None) -> web.Application:
    """The gateway in front of ``cfg.workers`` (or the workers ``cfg.discovery`` finds).

    Parameters
    ----------
    cfg
        The configuration.
    plan
        A plan made already (``lorafleet serve --emulate`` makes it first, to start its
        workers with the plan's engine options); by default one is made at start-up
        (or restored from ``cfg.state_file``, which also restores the adapter registry).
    """
    store = FileStateStore(cfg.state_file) if cfg.state_file else None
    saved = shared_state(cfg) if cfg.redis is not None else None
    if saved is not None:
        restored = restore(cfg, plan, saved, "the state the leader published in Redis")
    else:
        restored = restore(cfg, plan, None if store is None else store.load())
    cfg, plan = restored.cfg, restored.plan
    app = web.Application(middlewares=[access_middleware, error_middleware, auth_middleware,
                                       admin_middleware, forward_admin],
                          client_max_size=cfg.body_limit)
    app[GATEWAY_CONFIG] = cfg
    app[KEYRING] = KeyRing.resolve(cfg.keys)
    app[ADMIN_TOKEN] = token_digest(os.environ.get(cfg.admin_token_env))
    app[METRICS_TOKEN] = None if cfg.metrics_token_env is None else token_digest(
        os.environ.get(cfg.metrics_token_env))
    fleet = Fleet(cfg.base_model, cfg.workers, {a.demand.name: a for a in cfg.adapters},
                  cfg.routing, cfg.retry_after_s, cfg.tensor_parallel_size)
    fleet.stale, fleet.dropped = restored.stale, restored.dropped
    fleet.planned_gpus = None if plan is None else plan.planned_gpus
    metrics = GatewayMetrics()
    metrics.bind(fleet, adapters=len(cfg.adapters))
    plane = ControlPlane(cfg, fleet, metrics,
                         keeper=None if store is None else StateKeeper(store, fleet))
    app[CONTROL] = plane
    # what the request path reads and records
    app[FLEET], app[GATEWAY_METRICS] = fleet, metrics
    app[OBSERVER], app[GUARD] = plane.observer, plane.guard
    app.cleanup_ctx.append(_client_session(plane, worker_key(cfg)))
    app.cleanup_ctx.append(lambda _app: _running(plane, plan))  # the control plane's work
    app.cleanup_ctx.append(shared_limits)  # after the plane's Redis client
    app.cleanup_ctx.append(forward_session)
    app.on_shutdown.append(_stop_serving)
    add_routes(app)
    add_admin_routes(app)
    add_replan_routes(app)
    return app


async def _running(plane: ControlPlane, plan: InitialPlan | None) -> AsyncIterator[None]:
    async with running(plane, plan):
        yield


def _client_session(plane: ControlPlane, worker_key: str | None) -> Ctx:
    """``cleanup_ctx``: the one ``ClientSession`` to the workers (the control plane's calls,
    and the admin API's) and the ``UpstreamPool`` of the proxied requests, both sending
    ``worker_key`` (``worker_api_key_env``) as ``Authorization: Bearer``."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        cfg = plane.cfg
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=cfg.connect_timeout_s,
                                        sock_read=cfg.read_timeout_s)
        connector = aiohttp.TCPConnector(limit=cfg.max_connections)
        # No cookie jar: a gateway must not replay one worker's Set-Cookie on every
        # client's requests (and filtering an empty jar per request is CPU for nothing).
        async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                         cookie_jar=aiohttp.DummyCookieJar()) as session:
            app[CLIENT_SESSION] = plane.session = session
            pool = UpstreamPool(connect_timeout_s=cfg.connect_timeout_s,
                                read_timeout_s=cfg.read_timeout_s,
                                max_connections=cfg.max_connections)
            app[UPSTREAM_POOL] = pool
            if worker_key is not None:
                session.headers["Authorization"] = f"Bearer {worker_key}"
                pool.headers["Authorization"] = f"Bearer {worker_key}"
            try:
                yield
            finally:
                await pool.close()

    return ctx


async def _stop_serving(app: web.Application) -> None:
    # aiohttp runs this after closing the listening sockets and before waiting for the
    # handlers in flight: /ready answers 503 on the connections still open.
    app[FLEET].shutting_down = True


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve the gateway (its listener guarded: ``gateway/server/listener.py``); at
    ``runner.cleanup()`` (SIGTERM) requests in flight get ``drain_timeout_s`` to finish
    before they are cancelled, then the state is saved."""
    cfg = app[GATEWAY_CONFIG]
    guard = ConnectionGuard(ListenerLimits(
        header_timeout_s=cfg.client_header_timeout_s,
        max_connections=cfg.client_max_connections,
        max_connections_per_address=cfg.client_max_connections_per_address))
    return await http.serve(app, host, port, shutdown_timeout=cfg.drain_timeout_s,
                            site=lambda runner: GuardedSite(runner, host, port, guard=guard))
