"""Typed application state keys (``web.AppKey``), declared once for the whole gateway.

The state types are imported for type checking only: the modules that hold them import
this one (a cycle otherwise), and an ``AppKey`` needs its type only for checking.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import ClientSession, web

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from gateway.config import GatewayConfig
    from gateway.emulator.service import EmulatedWorker
    from gateway.server.auth import ApiKey, KeyRing
    from gateway.server.guard import StarvationGuard
    from gateway.server.metrics import GatewayMetrics
    from gateway.server.migrate import Releases
    from gateway.server.observer import Observer
    from gateway.server.registry import Fleet
    from gateway.server.replanner import Replanner
    from gateway.server.replicas import Role
    from gateway.server.state import StateKeeper
    from gateway.server.target_training import TargetSurrogate
    from gateway.server.upstream import UpstreamPool
    from gateway.shared.limits import FleetLimits

__all__ = [
    "ADMIN_TOKEN",
    "API_KEY",
    "CLIENT_SESSION",
    "EMULATED_WORKER",
    "FLEET",
    "GATEWAY_CONFIG",
    "GATEWAY_METRICS",
    "GUARD",
    "KEYRING",
    "METRICS_TOKEN",
    "OBSERVER",
    "REDIS",
    "RELEASES",
    "REPLANNER",
    "REQUEST_ID",
    "REQUEST_MODEL",
    "ROLE",
    "SHARED_LIMITS",
    "STATE_KEEPER",
    "TARGET_SURROGATE",
    "UPSTREAM_POOL",
    "UPSTREAM_WORKER",
]

EMULATED_WORKER: web.AppKey[EmulatedWorker] = web.AppKey("emulated_worker")

# The gateway (gateway/server/).
GATEWAY_CONFIG: web.AppKey[GatewayConfig] = web.AppKey("gateway_config")
CLIENT_SESSION = web.AppKey("gateway_client_session", ClientSession)
UPSTREAM_POOL: web.AppKey[UpstreamPool] = web.AppKey("gateway_upstream_pool")  # request path
FLEET: web.AppKey[Fleet] = web.AppKey("gateway_fleet")
GATEWAY_METRICS: web.AppKey[GatewayMetrics] = web.AppKey("gateway_metrics")
OBSERVER: web.AppKey[Observer] = web.AppKey("gateway_observer")
GUARD: web.AppKey[StarvationGuard] = web.AppKey("gateway_starvation_guard")
REPLANNER: web.AppKey[Replanner] = web.AppKey("gateway_replanner")
RELEASES: web.AppKey[Releases] = web.AppKey("gateway_releases")
TARGET_SURROGATE: web.AppKey[TargetSurrogate] = web.AppKey("gateway_target_surrogate")
REQUEST_ID = web.RequestKey("gateway_request_id", str)
# Replicas on shared state (gateway.yaml's redis:; gateway/shared/): None without it.
REDIS: web.AppKey[aioredis.Redis | None] = web.AppKey("gateway_redis")
ROLE: web.AppKey[Role] = web.AppKey("gateway_role")  # leads, or follows (always leads alone)
# Fleet-wide per-key limits (gateway/server/key_limits.py): None without redis: or rate limits.
SHARED_LIMITS: web.AppKey[FleetLimits | None] = web.AppKey("gateway_shared_limits")
# Keys, admin token, state (gateway/server/auth.py, admin.py, state.py, access.py).
KEYRING: web.AppKey[KeyRing] = web.AppKey("gateway_keyring")
ADMIN_TOKEN: web.AppKey[bytes | None] = web.AppKey("gateway_admin_token_digest")
METRICS_TOKEN: web.AppKey[bytes | None] = web.AppKey("gateway_metrics_token_digest")
STATE_KEEPER: web.AppKey[StateKeeper | None] = web.AppKey("gateway_state_keeper")
API_KEY: web.RequestKey[ApiKey] = web.RequestKey("gateway_api_key")
REQUEST_MODEL = web.RequestKey("gateway_request_model", str)
UPSTREAM_WORKER = web.RequestKey("gateway_upstream_worker", str)
