"""Replicas on shared state: the composition of ``gateway.shared`` into the app. Nothing
here acts without ``redis:`` in the config (one gateway process, the embedded default: it
always leads).

With ``redis:``, every replica serves requests; one leads (``gateway.shared.lease``):

- **the leader** runs the control loop (re-plans, migrations, the actuator, learning,
  discovery) and publishes the fleet's state on every change (``replica_state.document``,
  a fenced write), and once more when it takes the lead;
- **a follower** polls the published version every ``POLL_S`` and routes by each new one
  (``replica_state.adopt``) as soon as it appears; it loads and unloads nothing;
- **every replica** sends its observer's events to the others and merges theirs
  (``gateway.shared.observations``), so the leader plans on all the traffic and a follower
  that takes over has the window already;
- **admin calls** on a follower go to the leader (its ``advertise_url``; the HTTP layer's
  ``gateway/server/forward.py``) and its answer comes back as it is; with no leader
  reachable they get 503, or act here with ``redis.admin_fail_open``.

``lorafleet_leader{replica}`` is 1 on the leader, 0 on the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

from prometheus_client import Gauge

from gateway.config import GatewayConfig
from gateway.control.replica_state import adopt, document
from gateway.control.state import GatewayState
from gateway.shared.client import UNREACHABLE, connect
from gateway.shared.lease import LeaderInfo, LeaderLease
from gateway.shared.observations import FLUSH_S, ObservationStream
from gateway.shared.published import POLL_S, Published, load_now
from twin.errors import ConfigError

if TYPE_CHECKING:
    from gateway.control.plane import ControlPlane

__all__ = ["Role", "redis_client", "replica_role", "shared_state"]

logger = logging.getLogger(__name__)

STOP_WAIT_S = 2.0  # for the loops to end at shutdown


def shared_state(cfg: GatewayConfig) -> GatewayState | None:
    """The state the leader published, for ``create_app`` to restore (None: none yet, or
    Redis unreachable at start-up: logged, and the replica follows once it answers)."""
    assert cfg.redis is not None
    try:
        raw = load_now(cfg.redis)
        return None if raw is None else GatewayState.from_json(json.loads(raw))
    except UNREACHABLE as exc:
        logger.warning("Redis at %s unreachable at start-up (%r): the published state is "
                       "read once it answers", cfg.redis.url, exc)
    except (ConfigError, ValueError) as exc:
        logger.error("the published state in Redis is not one (%s): planning afresh", exc)
    return None


class Role:
    """Whether this replica leads (always, without Redis), and who does."""

    def __init__(self, name: str, lease: LeaderLease | None = None) -> None:
        self.name = name
        self.lease = lease
        self.published: Published | None = None
        self.applied: str | None = None  # the published version this replica routes by
        self.on_lead: list[Callable[[], Awaitable[None]]] = []  # run when it takes the lead
        self.stopping = False  # the replica stops: its loops end

    @property
    def shared(self) -> bool:
        return self.lease is not None

    @property
    def leading(self) -> bool:
        return self.lease is None or self.lease.leading

    async def refresh_leader(self) -> str | None:
        """Read who holds the lease now (between this replica's own renewals); the
        leader's URL as ``leader_url``."""
        if self.lease is not None and not self.lease.leading:
            with contextlib.suppress(*UNREACHABLE):
                self.lease.leader = LeaderInfo.parse(await self.lease.client.get(
                    self.lease.key))
        return self.leader_url

    @property
    def leader_url(self) -> str | None:
        """The leader's admin API, when another replica leads."""
        if self.lease is None or self.lease.leading or self.lease.leader is None:
            return None
        return self.lease.leader.url


async def redis_client(plane: ControlPlane) -> AsyncIterator[None]:
    """Background work (``running``): ``plane.redis``, the replica's Redis client (None without
    ``redis:``)."""
    cfg = plane.cfg.redis
    client = None if cfg is None else connect(cfg)
    plane.redis = client
    try:
        yield
    finally:
        if client is not None:
            await client.aclose()


async def replica_role(plane: ControlPlane) -> AsyncIterator[None]:
    """Background work (``running``) (after ``redis_client``, before the bootstrap): the role, the
    lease and its loops; the lease is released at the end, so another replica leads at once."""
    cfg = plane.cfg
    gauge = Gauge("lorafleet_leader", "1 on the replica that runs the control loop (re-plans, "
                  "migrations, scaling), 0 on the others.", ["replica"],
                  registry=plane.metrics.registry)
    client = plane.redis
    if cfg.redis is None or client is None:  # alone: the plane's own role, always leading
        gauge.labels(plane.role.name).set(1)
        yield
        return
    lease = LeaderLease(client, cfg.redis)
    plane.role = role = Role(cfg.redis.replica, lease)
    role.published = Published(client, cfg.redis)
    stream = ObservationStream(client, cfg.redis, window_s=cfg.observe_window_s)
    plane.observer.sink = stream.record
    publisher = _Publisher(plane, role)
    plane.fleet.on_change(publisher.schedule)
    await lease.step()
    gauge.labels(role.name).set(int(role.leading))
    tasks = [asyncio.create_task(coro, name=name) for name, coro in (
        ("lease", _lease_loop(plane, role, publisher, gauge)),
        ("follow", _follow_loop(plane, role, publisher)), ("publish", publisher.run()),
        ("observations", _observe_loop(plane, role, stream)))]
    try:
        yield
    finally:
        # a loop ends at its next turn, or at once when cancelled (a Redis call may swallow
        # the cancellation: redis-py turns some into connection errors, which the loops
        # take for an outage and go on), so none is waited for without bound
        role.stopping = True
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=STOP_WAIT_S)
        if role.leading:
            await publisher.publish()  # the state at shutdown, for the next leader
        await lease.release()
        gauge.labels(role.name).set(0)


class _Publisher:
    """The leader's side: publish the fleet's state after every change (coalesced)."""

    def __init__(self, plane: ControlPlane, role: Role) -> None:
        self.plane, self.role = plane, role
        self.wanted = asyncio.Event()

    def schedule(self) -> None:
        if self.role.leading:
            self.wanted.set()

    async def run(self) -> None:
        while not self.role.stopping:
            await self.wanted.wait()
            self.wanted.clear()
            await self.publish()

    async def publish(self) -> None:
        lease, published = self.role.lease, self.role.published
        fleet = self.plane.fleet
        if lease is None or published is None or lease.value is None or fleet.plan is None:
            return
        try:
            version = await published.publish(lease.value, lease.epoch or 0, document(fleet))
        except UNREACHABLE as exc:
            logger.warning("publishing the fleet's state failed (%r); retried", exc)
            await asyncio.sleep(POLL_S)
            self.wanted.set()
            return
        if version is None:
            logger.warning("replica %s leads no more: its state was not published",
                           self.role.name)
        else:
            self.role.applied = version


async def _lease_loop(plane: ControlPlane, role: Role, publisher: _Publisher,
                      gauge: Gauge) -> None:
    lease = role.lease
    assert lease is not None
    was = role.leading
    while not role.stopping:
        await asyncio.sleep(lease.renew_every_s)
        now = await lease.step()
        gauge.labels(role.name).set(int(now))
        if now and not was:  # took the lead: publish what it routes by, then take over
            await publisher.publish()
            for hook in role.on_lead:
                try:
                    await hook()
                except Exception:
                    logger.exception("taking the lead")
        was = now


async def _follow_loop(plane: ControlPlane, role: Role, publisher: _Publisher) -> None:
    published = role.published
    assert published is not None
    while not role.stopping:
        await asyncio.sleep(POLL_S)
        try:
            version = await published.version()
            if role.leading:
                if version is None:  # Redis lost it (restarted): publish again
                    await publisher.publish()
                continue
            if version is None or version == role.applied:
                continue
            found = await published.read()
        except UNREACHABLE:
            continue  # routing goes on by the last state; the lease loop logs the outage
        if found is None:
            continue
        try:
            adopt(plane.fleet, found[1])
        except (ConfigError, ValueError, TypeError) as exc:
            logger.error("the published state %s cannot be routed by: %s", found[0], exc)
        role.applied = found[0]


async def _observe_loop(plane: ControlPlane, role: Role, stream: ObservationStream) -> None:
    observer = plane.observer
    while not role.stopping:
        await asyncio.sleep(FLUSH_S)
        await stream.flush()
        for event in await stream.pull():
            observer.merge(event)
