"""Background work of the control plane, run by ``running.py``:

- ``bootstrap``: make the initial plan (in a thread, off the serving loop), reconcile each
  worker's residency with its ``/v1/models``, load what the plan puts where it is missing
  (vLLM's ``/v1/load_lora_adapter``), then install the placement: the gateway is ready. With
  discovery it first waits for the first workers to be found. Workers the gateway did not
  start run ``cfg.worker_engine`` (what the re-planner plans with), not the plan's choice.
- ``health_checks``: poll each worker's ``/health``; a worker that comes back is reconciled
  and given its planned adapters again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import aiohttp

from gateway.config import GatewayConfig, PlacementMode
from gateway.control.planning import InitialPlan, from_planner, round_robin
from gateway.fleet.lora_api import LoraCallError, list_adapters, load_adapter, unload_adapter
from gateway.fleet.registry import WorkerStatus
from gateway.fleet.worker_settings import engine_from, fetch_settings
from twin.errors import ConfigError
from twin.routing import BASE_MODEL

if TYPE_CHECKING:
    from gateway.control.plane import ControlPlane

__all__ = ["background", "bootstrap", "health_checks", "make_plan", "sync_worker"]

logger = logging.getLogger(__name__)

HEALTH_MISSES = 3  # health checks in a row that time out before a worker is marked down

Ctx = Callable[["ControlPlane"], AsyncIterator[None]]


def make_plan(cfg: GatewayConfig) -> InitialPlan:
    """The initial plan for ``cfg`` (CPU-bound: run it off the event loop)."""
    adapters = [a.demand for a in cfg.adapters]
    names = [w.name for w in cfg.workers]
    if cfg.placement is PlacementMode.ROUND_ROBIN or not adapters:
        return round_robin(adapters, names, gpu=cfg.gpu, max_model_len=cfg.max_model_len,
                           tensor_parallel_size=cfg.tensor_parallel_size)
    from gateway.pretrained import surrogate_for  # the target's own, else the shipped file
    from planner import Target

    surrogate, _ = surrogate_for(Target.resolve(cfg.model, cfg.gpu, cfg.profile),
                                 cfg.tensor_parallel_size)
    return from_planner(adapters, names, surrogate, gpu=cfg.gpu, model=cfg.model,
                        profile=cfg.profile, max_model_len=cfg.max_model_len,
                        headroom=cfg.headroom, search_seconds=cfg.search_seconds,
                        tensor_parallel_size=cfg.tensor_parallel_size)


async def _read_engine(plane: ControlPlane, index: int) -> None:
    """The options a worker the gateway did not start runs, as it reports them
    (``gateway.fleet.worker_settings``; at each sync, and at health checks until it has
    reported ``max_loras``): they replace ``worker_engine``'s. One that
    contradicts the config now (it was restarted with other flags) is what it runs: an
    error is logged and its own values are kept."""
    cfg, fleet = plane.cfg, plane.fleet
    worker = fleet.workers[index]
    if cfg.worker_engine is None:
        return
    settings = await fetch_settings(plane.session, worker.endpoint.url, cfg.base_model,
                                    cfg.connect_timeout_s)
    if settings is None:
        return
    base = worker.engine or cfg.worker_engine
    worker.max_loras_reported = settings.max_loras is not None
    try:
        worker.engine = engine_from(base, dict(cfg.worker_engine_given), settings,
                                    worker.endpoint.name)
    except ConfigError as exc:
        logger.error("%s; planning with what the worker runs", exc)
        worker.engine = engine_from(base, {}, settings, worker.endpoint.name)


async def sync_worker(plane: ControlPlane, index: int) -> None:
    """Reconcile worker ``index`` with its ``/v1/models`` and load its planned adapters."""
    cfg, fleet, session = plane.cfg, plane.fleet, plane.session
    worker = fleet.workers[index]
    url = worker.endpoint.url
    if not plane.role.leading:  # a follower routes by the leader's residency, loads nothing
        fleet.set_status(index, WorkerStatus.UP)
        return
    try:
        resident = await list_adapters(session, url, timeout=cfg.load_timeout_s)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        logger.warning("worker %s (%s): cannot list its models: %r", worker.endpoint.name,
                       url, exc)
        fleet.set_status(index, WorkerStatus.DOWN)
        fleet.set_resident(index, set())
        return
    fleet.set_status(index, WorkerStatus.UP)
    await _read_engine(plane, index)
    for name in sorted(resident & (fleet.stale | fleet.dropped) - worker.refreshed):
        try:  # a copy from before a restart whose config changed or dropped the adapter
            await unload_adapter(session, url, name, timeout=cfg.load_timeout_s)
        except LoraCallError as exc:
            logger.warning("worker %s: %s", worker.endpoint.name, exc)
            continue
        worker.refreshed.add(name)
        resident.discard(name)
        logger.info("worker %s: unloaded %s (%s)", worker.endpoint.name, name,
                    "dropped from the config" if name in fleet.dropped else "changed")
    planned = set() if fleet.plan is None else set(fleet.plan.workers[index].shares)
    for name in sorted(planned - resident - {BASE_MODEL}):
        entry = fleet.adapters.get(name)
        if entry is None or entry.path is None:
            continue
        try:
            await load_adapter(session, url, name, entry.path, timeout=cfg.load_timeout_s)
        except LoraCallError as exc:
            logger.warning("worker %s: %s", worker.endpoint.name, exc)
            continue
        resident.add(name)
        logger.info("worker %s: loaded %s", worker.endpoint.name, name)
    fleet.set_resident(index, resident)


async def _initial(plane: ControlPlane, plan: InitialPlan | None) -> None:
    cfg, fleet, role = plane.cfg, plane.fleet, plane.role
    while not role.leading:  # a follower: routes once the leader's state is adopted
        if fleet.synced:
            return
        await asyncio.sleep(0.1)
    while not fleet.workers:  # discovery has found none yet (gateway/control/discovery.py)
        await asyncio.sleep(0.1)
    names = [w.endpoint.name for w in fleet.workers]
    if plan is not None and [w.name for w in plan.placement.workers] != names:
        plan = None  # made for other workers: plan afresh
    if plan is None:
        cfg = replace(cfg, workers=tuple(w.endpoint for w in fleet.workers))
        plan = await asyncio.get_running_loop().run_in_executor(None, make_plan, cfg)
    if cfg.worker_engine is None:  # workers the gateway started with the plan's options
        fleet.set_engines(plan.engines)
    else:
        fleet.set_engines([cfg.worker_engine] * len(fleet.workers))
    fleet.planned_gpus = plan.planned_gpus
    fleet.set_plan(plan.placement)  # routes nothing until residency is known
    await asyncio.gather(*(sync_worker(plane, i) for i in range(len(fleet.workers))))
    fleet.synced = True
    logger.info("placement installed: %d of %d workers active (planned %d GPUs)",
                fleet.workers_active, len(fleet.workers), plan.planned_gpus)


async def _take_over(plane: ControlPlane) -> None:
    """A follower took the lead: reconcile every worker with what the plan wants (a load the
    old leader left half done is finished here)."""
    fleet = plane.fleet
    if fleet.synced and fleet.plan is not None:
        await asyncio.gather(*(sync_worker(plane, i) for i in range(len(fleet.workers))))


def bootstrap(plan: InitialPlan | None) -> Ctx:
    """The start-up task (``plan``: a precomputed plan, else one is made from the config)."""

    async def ctx(plane: ControlPlane) -> AsyncIterator[None]:
        plane.role.on_lead.append(lambda: _take_over(plane))
        async with background(_initial(plane, plan), "bootstrap"):
            yield

    return ctx


async def _health_loop(plane: ControlPlane) -> None:
    cfg, fleet, session = plane.cfg, plane.fleet, plane.session
    limit = min(cfg.health_interval_s, cfg.connect_timeout_s)
    timeout = aiohttp.ClientTimeout(total=limit)
    # a late /health from a worker that sent response bytes this recently is load, not a
    # miss: vLLM's API server answers it on the event loop that streams the tokens
    busy_window = HEALTH_MISSES * (cfg.health_interval_s + limit)

    misses: Counter[int] = Counter()  # by worker index; workers may join at run time

    async def check(index: int) -> None:
        worker = fleet.workers[index]
        refused = late = False
        try:
            async with session.get(f"{worker.endpoint.url}/health", timeout=timeout) as resp:
                ok = resp.status == 200
        except aiohttp.ClientConnectorError:
            ok, refused = False, True
        except (aiohttp.ClientError, TimeoutError):
            ok, late = False, True
        if ok:
            misses[index] = 0
        elif not late or time.monotonic() - worker.answered_at > busy_window:
            misses[index] += 1
        if ok and worker.status is WorkerStatus.DOWN and fleet.plan is not None:
            await sync_worker(plane, index)  # it came back: reconcile and reload
        elif ok:
            fleet.set_status(index, WorkerStatus.UP)
            if not worker.max_loras_reported:  # vLLM reports it once it has run a request
                await _read_engine(plane, index)
        elif refused or misses[index] >= HEALTH_MISSES:
            # a refused connection is certain; a slow answer may be load: a few in a row
            fleet.set_status(index, WorkerStatus.DOWN)

    while True:
        await asyncio.sleep(cfg.health_interval_s)
        await asyncio.gather(*(check(i) for i in range(len(fleet.workers))))


async def health_checks(plane: ControlPlane) -> AsyncIterator[None]:
    async with background(_health_loop(plane), "health checks"):
        yield


@contextlib.asynccontextmanager
async def background(coro: Coroutine[Any, Any, None], what: str) -> AsyncIterator[None]:
    """Run ``coro`` as a task for the block's duration (logged if it fails, cancelled at the
    end): the shape of every loop of the control plane."""
    async def run() -> None:
        try:
            await coro
        except Exception:
            logger.exception("%s failed", what)

    task = asyncio.create_task(run(), name=what)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

