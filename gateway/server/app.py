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

from aiohttp import web

from gateway import http
from gateway.config import GatewayConfig
from gateway.keys import (
    ADMIN_TOKEN,
    FLEET,
    GATEWAY_CONFIG,
    GATEWAY_METRICS,
    GUARD,
    KEYRING,
    METRICS_TOKEN,
    OBSERVER,
    STATE_KEEPER,
)
from gateway.server.access import access_middleware
from gateway.server.admin import add_admin_routes, admin_middleware, token_digest
from gateway.server.auth import KeyRing, auth_middleware, upstream_auth, worker_key
from gateway.server.discovery import discovery
from gateway.server.errors import error_middleware
from gateway.server.guard import GuardConfig, StarvationGuard
from gateway.server.key_limits import shared_limits
from gateway.server.lifecycle import bootstrap, client_session, health_checks
from gateway.server.listener import ConnectionGuard, GuardedSite, ListenerLimits
from gateway.server.metrics import GatewayMetrics
from gateway.server.migrate import releases_ctx
from gateway.server.observer import Observer
from gateway.server.planning import InitialPlan
from gateway.server.registry import Fleet
from gateway.server.replan_loop import replanning
from gateway.server.replan_routes import add_replan_routes
from gateway.server.replicas import forward_admin, redis_client, replica_role, shared_state
from gateway.server.restore import restore
from gateway.server.routes import add_routes
from gateway.server.state import FileStateStore, StateKeeper, keep_state
from gateway.server.target_training import target_training

__all__ = ["create_app", "serve"]


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
    app[FLEET] = fleet
    fleet.planned_gpus = None if plan is None else plan.planned_gpus
    app[STATE_KEEPER] = None if store is None else StateKeeper(store, fleet)
    metrics = GatewayMetrics()
    metrics.bind(fleet, adapters=len(cfg.adapters))
    app[GATEWAY_METRICS] = metrics
    app[OBSERVER] = Observer(cfg.observe_window_s)
    # a penalty holds while the learner sees at least four windows of the worker at its new
    # load (120 s: on the fleet bench at 1.2x, penalties lifted after 60 s starved an adapter)
    app[GUARD] = StarvationGuard(GuardConfig(ttft_bound_s=cfg.ttft_bound_s / cfg.time_scale,
                                             relax_s=max(120.0, 2 * cfg.observe_window_s)))
    app.cleanup_ctx.append(client_session)
    app.cleanup_ctx.append(redis_client)
    app.cleanup_ctx.append(replica_role)  # before the bootstrap: whether it leads
    app.cleanup_ctx.append(shared_limits)  # after redis_client: its client
    app.cleanup_ctx.append(upstream_auth(worker_key(cfg)))
    app.cleanup_ctx.append(keep_state)  # before bootstrap: it saves the installed plan
    app.cleanup_ctx.append(bootstrap(plan))
    app.cleanup_ctx.append(health_checks)
    app.cleanup_ctx.append(releases_ctx)  # closed after the replanner stops
    app.cleanup_ctx.append(target_training())  # before the replanner: which surrogate
    app.cleanup_ctx.append(replanning)
    app.cleanup_ctx.append(discovery)  # after the replanner: workers join under its lock
    app.on_shutdown.append(_stop_serving)
    add_routes(app)
    add_admin_routes(app)
    add_replan_routes(app)
    return app


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
