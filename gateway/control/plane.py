"""The control plane: what the gateway decides about its fleet, with its dependencies
explicit, and no HTTP of its own.

``ControlPlane`` holds the registry (``fleet``), the configuration, the metrics it counts on,
the observer and starvation guard the request path feeds, the replica's role (the leader
lease), the state keeper, the background releases of past migrations and, once started, the
client session it calls the workers with. Its parts (``replanner`` with the learner and the
scaler, ``migrate.execute``, the bootstrap, health checks and discovery in ``lifecycle`` and
``discovery``, the replica loops in ``replicas``) take the plane rather than the aiohttp
application: the HTTP layer (``gateway/server/``) composes one per app, hands its
``cleanup_ctx`` the plane's background work, and calls its methods. A test can build one
over emulated workers and re-plan without any gateway HTTP.

Only the leader acts (re-plans, migrates, loads and unloads, scales, learns, discovers):
``role.leading``, always true without ``redis:``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp

from gateway.config import GatewayConfig
from gateway.control.migrate import Releases
from gateway.control.replicas import Role
from gateway.fleet.guard import GuardConfig, StarvationGuard
from gateway.fleet.metrics import GatewayMetrics
from gateway.fleet.observer import Observer
from gateway.fleet.registry import Fleet

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from gateway.control.replanner import Replanner
    from gateway.control.state import StateKeeper
    from gateway.control.target_training import TargetSurrogate

__all__ = ["ControlPlane"]


class ControlPlane:
    """The fleet's control plane (see the module doc).

    Parameters
    ----------
    cfg
        The configuration.
    fleet
        The registry: workers, adapters, placement and routing.
    metrics
        The gateway's metrics (bound to ``fleet``).
    keeper
        Writes the state file on every change (None: no ``state_file``).
    observer, guard
        What the request path records (default: new ones for ``cfg``).
    """

    def __init__(self, cfg: GatewayConfig, fleet: Fleet, metrics: GatewayMetrics, *,
                 keeper: StateKeeper | None = None, observer: Observer | None = None,
                 guard: StarvationGuard | None = None) -> None:
        self.cfg = cfg
        self.fleet = fleet
        self.metrics = metrics
        self.keeper = keeper
        self.observer = observer or Observer(cfg.observe_window_s)
        # a penalty holds while the learner sees at least four windows of the worker at its
        # new load (120 s: on the fleet bench at 1.2x, penalties lifted after 60 s starved an
        # adapter)
        self.guard = guard or StarvationGuard(GuardConfig(
            ttft_bound_s=cfg.ttft_bound_s / cfg.time_scale,
            relax_s=max(120.0, 2 * cfg.observe_window_s)))
        self.role = Role(f"{cfg.host}:{cfg.port}")  # with redis:, ``replica_role``'s
        self.releases = Releases()
        self.redis: aioredis.Redis | None = None  # with ``redis:``: ``replicas.redis_client``
        self.surrogate: TargetSurrogate | None = None  # ``target_training.target_training``
        self._session: aiohttp.ClientSession | None = None
        self._replanner: Replanner | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The client session to the workers (set when the plane starts)."""
        assert self._session is not None, "the control plane has no session yet"
        return self._session

    @session.setter
    def session(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    @property
    def replanner(self) -> Replanner:
        """The replanner (made when re-planning starts: ``replan_loop.replanning``)."""
        assert self._replanner is not None, "the control plane has no replanner yet"
        return self._replanner

    @replanner.setter
    def replanner(self, replanner: Replanner) -> None:
        self._replanner = replanner
