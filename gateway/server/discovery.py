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

from aiohttp import web

from gateway.keys import CLIENT_SESSION, FLEET, GATEWAY_CONFIG, REPLANNER, ROLE
from gateway.server.kube import ActuatorError, discovery_for
from gateway.server.lifecycle import background, sync_worker
from gateway.server.metrics import ReplanTrigger
from gateway.server.registry import WorkerStatus

__all__ = ["discover_once", "discovery"]

logger = logging.getLogger(__name__)


async def discover_once(app: web.Application) -> list[int]:
    """List the pods once and update the fleet; the indexes of workers that joined or
    rejoined a placed fleet (to reconcile and place adapters on; the first listing fills an
    empty fleet for ``bootstrap`` and returns none). ``ActuatorError`` if the API fails."""
    cfg, fleet = app[GATEWAY_CONFIG], app[FLEET]
    assert cfg.discovery is not None
    found = await discovery_for(cfg.discovery).workers(session=app[CLIENT_SESSION])
    joined: list[int] = []
    async with app[REPLANNER].lock:
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


async def _welcome(app: web.Application, joined: list[int]) -> None:
    """Reconcile workers that joined a placed fleet, then re-plan to put adapters on them."""
    await asyncio.gather(*(sync_worker(app, i) for i in joined))
    await app[REPLANNER].replan(ReplanTrigger.DISCOVERY)


async def _loop(app: web.Application) -> None:
    cfg = app[GATEWAY_CONFIG]
    assert cfg.discovery is not None
    while True:
        try:
            joined = await discover_once(app) if app[ROLE].leading else []
            if joined:
                await _welcome(app, joined)
        except ActuatorError as exc:
            logger.warning("worker discovery failed: %s", exc)
        except Exception:
            logger.exception("worker discovery failed")
        await asyncio.sleep(cfg.discovery.interval_s)


async def discovery(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: the discovery loop (nothing without ``cfg.discovery``)."""
    if app[GATEWAY_CONFIG].discovery is None:
        yield
        return
    async with background(_loop(app), "discovery"):
        yield
