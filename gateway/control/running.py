"""The control plane's background work, started and stopped as one: ``running(plane, plan)``.

In order (each stopped in reverse): the Redis client and the replica's role (whether it leads:
before anything acts), the state file's keeper, the bootstrap (the initial plan, installed on
the workers), the health checks, the background releases of past migrations, the surrogate
re-plans use (trained in the background for a target of its own), the replanner and its
loop, and discovery (after the replanner: workers join under its lock).

The plane's ``session`` must be set first: every call to the workers goes through it.
The gateway's app runs this as one ``cleanup_ctx`` (``gateway/server/app.py``); a test runs it
as it is, with no gateway HTTP.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from gateway.control.discovery import discovery
from gateway.control.lifecycle import bootstrap, health_checks
from gateway.control.migrate import releases_ctx
from gateway.control.plane import ControlPlane
from gateway.control.planning import InitialPlan
from gateway.control.replan_loop import replanning
from gateway.control.replicas import redis_client, replica_role
from gateway.control.state import keep_state
from gateway.control.target_training import target_training

__all__ = ["running"]

Work = Callable[[ControlPlane], AsyncIterator[None]]


@contextlib.asynccontextmanager
async def running(plane: ControlPlane, plan: InitialPlan | None = None,
                  ) -> AsyncIterator[ControlPlane]:
    """Run ``plane``'s background work for the block (``plan``: a plan made already, else
    one is made from the config, or the leader's is adopted)."""
    works: tuple[Work, ...] = (redis_client, replica_role, keep_state, bootstrap(plan),
                               health_checks, releases_ctx, target_training(), replanning,
                               discovery)
    async with contextlib.AsyncExitStack() as stack:
        for work in works:
            await stack.enter_async_context(contextlib.asynccontextmanager(work)(plane))
        yield plane
