"""Kubernetes worker discovery in the gateway: the ready worker pods, listed every
``discovery.interval_s`` seconds (``kube.discover_workers``), kept in step with the fleet.

- A pod the fleet does not have is appended to it (``Fleet.add_worker``; its fixed engine is
  ``cfg.worker_engine``), reconciled with its ``/v1/models`` (``lifecycle.sync_worker``) and
  routed nothing until a re-plan places adapters there: one is triggered (``discovery``).
- A worker no longer listed (scaled away, terminating, not ready) is marked gone: routed
  nothing, and the replanner moves what the plan put on it elsewhere.
- A gone worker listed again (the same pod name, perhaps a new IP) rejoins the same way.

Before the first placement the fleet may be empty: the first listing fills it and
``lifecycle.bootstrap`` plans over what was found. Workers join and leave under the
replanner's lock, so a migration never sees the worker list change under it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from gateway.control.lifecycle import background, sync_worker
from gateway.fleet.kube import ActuatorError, discovery_for
from gateway.fleet.metrics import ReplanTrigger
from gateway.fleet.registry import WorkerStatus

if TYPE_CHECKING:
    from gateway.control.plane import ControlPlane

__all__ = ["discover_once", "discovery"]

logger = logging.getLogger(__name__)


async def discover_once(plane: ControlPlane) -> list[int]:
    """List the pods once and update the fleet; the indexes of workers that joined or
    rejoined a placed fleet (to reconcile and place adapters on; the first listing fills an
    empty fleet for ``bootstrap`` and returns none). ``ActuatorError`` if the API fails."""
    cfg, fleet = plane.cfg, plane.fleet
    assert cfg.discovery is not None
    found = await discovery_for(cfg.discovery).workers(session=plane.session)
    joined: list[int] = []
    async with plane.replanner.lock:
        first = not fleet.workers
        if not first and not fleet.synced:
            return []  # the first placement is being made over the workers found so far
        index = {w.endpoint.name: i for i, w in enumerate(fleet.workers)}
        for endpoint in found:
            i = index.get(endpoint.name)
            if i is None:
                joined.append(fleet.add_worker(endpoint, cfg.worker_engine))
                logger.info("discovered worker %s at %s", endpoint.name, endpoint.url)
            elif (fleet.workers[i].status is WorkerStatus.GONE
                  or fleet.workers[i].endpoint.url != endpoint.url):
                fleet.rejoin(i, endpoint)
                joined.append(i)
                logger.info("worker %s is back at %s", endpoint.name, endpoint.url)
        listed = {e.name for e in found}
        for i, w in enumerate(fleet.workers):
            if w.endpoint.name not in listed:
                fleet.set_gone(i)
    return [] if first else joined


async def _welcome(plane: ControlPlane, joined: list[int]) -> None:
    """Reconcile workers that joined a placed fleet, then re-plan to put adapters on them."""
    await asyncio.gather(*(sync_worker(plane, i) for i in joined))
    await plane.replanner.replan(ReplanTrigger.DISCOVERY)


async def _loop(plane: ControlPlane) -> None:
    cfg = plane.cfg
    assert cfg.discovery is not None
    while True:
        try:
            joined = await discover_once(plane) if plane.role.leading else []
            if joined:
                await _welcome(plane, joined)
        except ActuatorError as exc:
            logger.warning("worker discovery failed: %s", exc)
        except Exception:
            logger.exception("worker discovery failed")
        await asyncio.sleep(cfg.discovery.interval_s)


async def discovery(plane: ControlPlane) -> AsyncIterator[None]:
    """Background work (``running``): the discovery loop (nothing without ``cfg.discovery``)."""
    if plane.cfg.discovery is None:
        yield
        return
    async with background(_loop(plane), "discovery"):
        yield
