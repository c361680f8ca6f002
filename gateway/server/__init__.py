"""The HTTP gateway (``lorafleet serve``): an OpenAI-compatible router in front of vLLM
workers, routing by the planner's placement with ``twin.routing.Router``."""

from gateway.config import (
    AdapterEntry,
    GatewayConfig,
    PlacementMode,
    WorkerEndpoint,
    load_config,
    parse_config,
)
from gateway.control.planning import InitialPlan, from_planner, round_robin
from gateway.errors import ApiError, GatewayError
from gateway.fleet.metrics import GatewayMetrics
from gateway.fleet.registry import Fleet, WorkerPhase, WorkerState, WorkerStatus
from gateway.server.app import create_app, serve

__all__ = [
    "AdapterEntry",
    "ApiError",
    "Fleet",
    "GatewayConfig",
    "GatewayError",
    "GatewayMetrics",
    "InitialPlan",
    "PlacementMode",
    "WorkerEndpoint",
    "WorkerPhase",
    "WorkerState",
    "WorkerStatus",
    "create_app",
    "from_planner",
    "load_config",
    "parse_config",
    "round_robin",
    "serve",
]
