"""Typed application state keys (``web.AppKey``), declared once for the whole gateway.

The state types are imported for type checking only: the modules that hold them import
this one (a cycle otherwise), and an ``AppKey`` needs its type only for checking.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import ClientSession, web

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.control.plane import ControlPlane
    from gateway.emulator.service import EmulatedWorker
    from gateway.fleet.guard import StarvationGuard
    from gateway.fleet.metrics import GatewayMetrics
    from gateway.fleet.observer import Observer
    from gateway.fleet.registry import Fleet
    from gateway.fleet.upstream import UpstreamPool
    from gateway.server.auth import ApiKey, KeyRing
    from gateway.shared.limits import FleetLimits

__all__ = [
    "ADMIN_TOKEN",
    "API_KEY",
    "CLIENT_SESSION",
    "CONTROL",
    "EMULATED_WORKER",
    "FLEET",
    "GATEWAY_CONFIG",
    "GATEWAY_METRICS",
    "GUARD",
    "KEYRING",
    "METRICS_TOKEN",
    "OBSERVER",
    "REQUEST_ID",
    "REQUEST_MODEL",
    "SHARED_LIMITS",
    "UPSTREAM_POOL",
    "UPSTREAM_WORKER",
]

EMULATED_WORKER: web.AppKey[EmulatedWorker] = web.AppKey("emulated_worker")

# The gateway (gateway/server/).
GATEWAY_CONFIG: web.AppKey[GatewayConfig] = web.AppKey("gateway_config")
CLIENT_SESSION = web.AppKey("gateway_client_session", ClientSession)
UPSTREAM_POOL: web.AppKey[UpstreamPool] = web.AppKey("gateway_upstream_pool")  # request path
FLEET: web.AppKey[Fleet] = web.AppKey("gateway_fleet")
# The control plane (gateway/control/plane.py): re-planning, the replica's role, ...
CONTROL: web.AppKey[ControlPlane] = web.AppKey("gateway_control")
GATEWAY_METRICS: web.AppKey[GatewayMetrics] = web.AppKey("gateway_metrics")
OBSERVER: web.AppKey[Observer] = web.AppKey("gateway_observer")
GUARD: web.AppKey[StarvationGuard] = web.AppKey("gateway_starvation_guard")
REQUEST_ID = web.RequestKey("gateway_request_id", str)
# Fleet-wide per-key limits (gateway/server/key_limits.py): None without redis: or rate limits.
SHARED_LIMITS: web.AppKey[FleetLimits | None] = web.AppKey("gateway_shared_limits")
# Keys, admin token, state (gateway/server/auth.py, admin.py, state.py, access.py).
KEYRING: web.AppKey[KeyRing] = web.AppKey("gateway_keyring")
ADMIN_TOKEN: web.AppKey[bytes | None] = web.AppKey("gateway_admin_token_digest")
METRICS_TOKEN: web.AppKey[bytes | None] = web.AppKey("gateway_metrics_token_digest")
API_KEY: web.RequestKey[ApiKey] = web.RequestKey("gateway_api_key")
REQUEST_MODEL = web.RequestKey("gateway_request_model", str)
UPSTREAM_WORKER = web.RequestKey("gateway_upstream_worker", str)
