"""The gateway's application factory.

Examples
--------
>>> from gateway.server.config import parse_config
>>> cfg = parse_config({"base_model": "b", "workers": ["http://127.0.0.1:8001"]})
>>> sorted({r.resource.canonical for r in create_app(cfg).router.routes()
...         if r.resource is not None})
['/health', '/metrics', '/ready', '/v1/chat/completions', '/v1/completions', '/v1/models']
"""

from __future__ import annotations

from aiohttp import web

from gateway.http import serve
from gateway.keys import FLEET, GATEWAY_CONFIG, GATEWAY_METRICS
from gateway.server.config import GatewayConfig
from gateway.server.errors import error_middleware
from gateway.server.lifecycle import bootstrap, client_session, health_checks
from gateway.server.metrics import GatewayMetrics
from gateway.server.planning import InitialPlan
from gateway.server.registry import Fleet
from gateway.server.routes import add_routes

__all__ = ["create_app", "serve"]


def create_app(cfg: GatewayConfig, *, plan: InitialPlan | None = None) -> web.Application:
    """The gateway in front of ``cfg.workers``.

    Parameters
    ----------
    cfg
        The configuration.
    plan
        A plan made already (``lorafleet serve --emulate`` makes it first, to start its
        workers with the plan's engine options); by default one is made at start-up.
    """
    app = web.Application(middlewares=[error_middleware], client_max_size=cfg.body_limit)
    app[GATEWAY_CONFIG] = cfg
    fleet = Fleet(cfg.base_model, cfg.workers, {a.demand.name: a for a in cfg.adapters},
                  cfg.routing, cfg.retry_after_s)
    app[FLEET] = fleet
    metrics = GatewayMetrics()
    metrics.bind(fleet, adapters=len(cfg.adapters))
    app[GATEWAY_METRICS] = metrics
    app.cleanup_ctx.append(client_session)
    app.cleanup_ctx.append(bootstrap(plan))
    app.cleanup_ctx.append(health_checks)
    add_routes(app)
    return app
