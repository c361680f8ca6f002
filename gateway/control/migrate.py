"""Carrying out a migration (``planner.migration.Migration``) on the live fleet without
dropping a request: load on the targets, switch routing once, drain the sources, unload, retire.

1. **Load** every adapter on the workers that gain it (vLLM's runtime LoRA API), a few at a
   time. If any load fails, the ones this migration loaded are unloaded again and routing is
   left as it was: the outcome is ``rolled_back``.
2. **Route**: the new placement is installed in one assignment (``Fleet.set_plan``); requests
   already on their way keep their worker.
3. **Drain and unload**, in the background (``Releases``: a long request on a source must not
   hold up the next re-plan): each source waits, up to ``drain_timeout_s``, until it has no
   request in flight for an adapter it lost, checks that no later plan put it back, then
   unloads it. A source that does not drain in time keeps the adapter loaded (harmless:
   vLLM's LRU evicts it) rather than failing a request. ``Releases.settled`` waits for them.
4. **Retire**: workers left empty are reported (highest-numbered first) and no longer count as
   GPUs in use.

Only a migration that moves adapters (``MigrationReport.moved``: where the folded target
routes them differs from where they are routed now) counts in ``lorafleet_migrations_total``,
and each adapter it moves in ``lorafleet_adapters_moved_total``: most periodic re-plans
keep everything where it is.

Adapters the plan puts on workers the fleet does not have (the plan needs more GPUs than run)
are folded onto the running workers with the fewest adapters by ``fold``; the replanner asks
the actuator for more workers separately (``scaling.Scaler``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gateway.fleet.lora_api import LoraCallError, load_adapter, unload_adapter
from gateway.fleet.metrics import MigrationOutcome
from planner import Migration
from twin.routing import BASE_MODEL, Placement, WorkerPlacement

if TYPE_CHECKING:
    from gateway.control.plane import ControlPlane

__all__ = ["MigrationReport", "Releases", "execute", "fold", "releases_ctx"]

logger = logging.getLogger(__name__)

LOAD_CONCURRENCY = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class MigrationReport:
    """What a migration did."""

    outcome: MigrationOutcome
    loaded: tuple[tuple[str, str], ...] = ()  # (worker, adapter)
    releasing: tuple[tuple[str, str], ...] = ()  # drained and unloaded in the background
    retired: tuple[str, ...] = ()
    seconds: float = 0.0
    error: str | None = None
    moved: tuple[str, ...] = field(default=())  # adapters whose workers change (``_moved``)

    def as_dict(self) -> dict[str, object]:
        return {"outcome": self.outcome.value, "loaded": [list(x) for x in self.loaded],
                "releasing": [list(x) for x in self.releasing], "retired": list(self.retired),
                "moved": list(self.moved), "seconds": round(self.seconds, 3),
                "error": self.error}


def fold(shares: Mapping[str, Mapping[str, float]], workers: list[str],
         up: Collection[str] | None = None,
         takes: Callable[[str, str], bool] | None = None) -> Placement:
    """The migration's shares as a placement over ``workers``; shares of workers that do not
    run are folded onto the worker with the fewest adapters (ties: lowest index) among those
    ``up`` (default: all; a down or gone worker would only fail the load) that can load them
    all (``takes(worker, adapter)``: its ``max_lora_rank``), else adapter by adapter. An
    adapter no running worker can load is left out, with a warning: its load would fail and
    roll the whole migration back."""
    out: dict[str, dict[str, float]] = {w: {} for w in workers}
    hosts = [w for w in workers if up is None or w in up] or workers

    def fewest(candidates: list[str]) -> str:
        return min(candidates, key=lambda w: (len(out[w]), workers.index(w)))

    def able(adapters: Collection[str]) -> list[str]:
        return [w for w in hosts if takes is None or all(takes(w, k) for k in adapters)]

    for name, s in shares.items():
        if name in out:
            for k, v in s.items():
                out[name][k] = out[name].get(k, 0.0) + v
    for name, s in shares.items():
        if name in out:
            continue
        whole = able(s)
        groups = [(fewest(whole), dict(s))] if whole else []
        for k, v in ([] if whole else s.items()):
            some = able([k])
            if some:
                groups.append((fewest(some), {k: v}))
            else:
                logger.warning("the plan's worker %s does not run and no running worker can "
                               "load %s (its rank): left unplaced", name, k)
        for target, part in groups:
            logger.warning("the plan's worker %s does not run; %s go to %s", name,
                           ", ".join(sorted(part)), target)
            for k, v in part.items():
                out[target][k] = out[target].get(k, 0.0) + v
    return Placement(tuple(WorkerPlacement(name=w, shares=out[w]) for w in workers))


async def execute(plane: ControlPlane, migration: Migration,
                  avoid: Collection[str] = ()) -> MigrationReport:
    """Carry ``migration`` out on the plane's fleet (see the module doc); ``avoid``: workers
    being drained, which take none of the load folded from workers that do not run."""
    cfg, fleet, session = plane.cfg, plane.fleet, plane.session
    metrics = plane.metrics
    started = time.perf_counter()
    names = [w.endpoint.name for w in fleet.workers]
    index = {n: i for i, n in enumerate(names)}
    hosts = {w.endpoint.name for w in fleet.workers if w.up} - set(avoid)

    def takes(worker: str, adapter: str) -> bool:
        engine, entry = fleet.workers[index[worker]].engine, fleet.adapters.get(adapter)
        return adapter == BASE_MODEL or engine is None or entry is None or (
            engine.enable_lora and entry.demand.rank <= engine.max_lora_rank)

    target = fold(migration.shares, names, hosts, takes)
    holding = fleet.holding()
    wanted = {wp.name: {k for k in wp.shares if k != BASE_MODEL} for wp in target.workers}
    moved = _moved(holding, wanted)

    # 1. load where an adapter is wanted and not resident
    loads = [(w, a) for w in names for a in sorted(wanted[w])
             if a not in fleet.workers[index[w]].resident]
    gate = asyncio.Semaphore(LOAD_CONCURRENCY)

    async def load(worker: str, adapter: str) -> tuple[str, str] | str:
        entry = fleet.adapters.get(adapter)
        if entry is None or entry.path is None:
            return f"{adapter}: not registered"
        await plane.releases.wait(worker, adapter)  # moving back where it is being unloaded
        async with gate:
            try:
                await load_adapter(session, fleet.workers[index[worker]].endpoint.url, adapter,
                                   entry.path, timeout=cfg.load_timeout_s)
            except LoraCallError as exc:
                return str(exc)
        fleet.workers[index[worker]].resident.add(adapter)
        return worker, adapter

    results = await asyncio.gather(*(load(w, a) for w, a in loads))
    loaded = tuple(r for r in results if isinstance(r, tuple))
    errors = [r for r in results if isinstance(r, str)]
    if errors:
        await _unload_all(plane, loaded)
        metrics.migrations.labels(MigrationOutcome.ROLLED_BACK).inc()
        logger.warning("migration rolled back: %s", "; ".join(errors))
        return MigrationReport(outcome=MigrationOutcome.ROLLED_BACK, loaded=loaded,
                               seconds=time.perf_counter() - started, error=errors[0],
                               moved=moved)

    # 2. switch routing in one step (fenced: a leader that lost the lead meanwhile, paused
    # past its lease, undoes its loads instead: gateway/shared/lease.py)
    if not plane.role.leading:
        await _unload_all(plane, loaded)
        metrics.migrations.labels(MigrationOutcome.ROLLED_BACK).inc()
        logger.warning("migration rolled back: this replica lost the lead")
        return MigrationReport(outcome=MigrationOutcome.ROLLED_BACK, loaded=loaded,
                               seconds=time.perf_counter() - started,
                               error="this replica lost the lead", moved=moved)
    fleet.set_plan(target)

    # 3. drain each source of what it lost, then unload: in the background, so a long
    # request on a source does not hold up the next re-plan
    releases = plane.releases
    releasing = tuple((w, a) for w in names
                      for a in sorted(holding.get(w, frozenset()) - wanted[w]))
    for worker, adapter in releasing:
        releases.start(plane, worker, adapter)

    # 4. retire what is left empty (highest-numbered first)
    retired = tuple(n for n in reversed(names)
                    if holding.get(n) and not target.workers[index[n]].shares)
    for n in retired:
        logger.info("worker %s retired (nothing placed on it)", n)
    if moved:  # a re-plan that keeps every adapter where it is is no migration
        metrics.migrations.labels(MigrationOutcome.OK).inc()
        metrics.adapters_moved.inc(len(moved))
    return MigrationReport(outcome=MigrationOutcome.OK, loaded=loaded, releasing=releasing,
                           retired=retired, seconds=time.perf_counter() - started,
                           moved=moved)


def _moved(before: Mapping[str, Collection[str]],
           after: Mapping[str, Collection[str]]) -> tuple[str, ...]:
    """The adapters whose workers differ between ``before`` and ``after`` (worker -> LoRA
    adapters routed there): loaded where they were not, or taken off a worker.

    >>> _moved({"w0": {"a", "b"}, "w1": set()}, {"w0": {"a"}, "w1": {"b"}})
    ('b',)
    >>> _moved({"w0": {"a"}}, {"w0": {"a"}})
    ()
    """
    pairs = {(w, a) for w, held in before.items() for a in held}
    pairs ^= {(w, a) for w, held in after.items() for a in held}
    return tuple(sorted({a for _, a in pairs}))


# With replicas: how long a source keeps what a migration moved away before it drains and
# unloads it, for the followers to route by the new placement (they poll every
# ``gateway.shared.published.POLL_S``; their requests in flight finish either way: vLLM
# loads the adapters of the requests it runs if missing: ``LRUCacheWorkerLoRAManager``,
# vllm/lora/worker_manager.py)
FOLLOWER_GRACE_S = 2.0


class Releases:
    """Sources draining and unloading what a migration moved away, one task per (worker,
    adapter). Before unloading, a task checks that the current plan still routes nothing of
    the adapter to the worker (a later re-plan may have moved it back); a load onto a worker
    where the same adapter is being released waits for that release first."""

    def __init__(self) -> None:
        self.tasks: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.unloaded: list[tuple[str, str]] = []
        self.kept: list[tuple[str, str]] = []  # not drained in time, or the unload failed

    def start(self, plane: ControlPlane, worker: str, adapter: str) -> None:
        key = (worker, adapter)
        if key in self.tasks:
            return
        task = asyncio.create_task(self._release(plane, worker, adapter),
                                   name=f"release {adapter} from {worker}")
        self.tasks[key] = task
        task.add_done_callback(lambda _: self.tasks.pop(key, None))

    async def wait(self, worker: str, adapter: str) -> None:
        task = self.tasks.get((worker, adapter))
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)

    async def settled(self) -> None:
        """Wait for every release in progress."""
        while self.tasks:
            await asyncio.gather(*list(self.tasks.values()), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self.tasks.values()):
            task.cancel()
        await asyncio.gather(*list(self.tasks.values()), return_exceptions=True)

    async def _release(self, plane: ControlPlane, worker: str, adapter: str) -> None:
        cfg, fleet, session = plane.cfg, plane.fleet, plane.session
        index = next(i for i, w in enumerate(fleet.workers) if w.endpoint.name == worker)
        if plane.role.shared:  # followers route by the old placement until they read the new
            await asyncio.sleep(FOLLOWER_GRACE_S)
        if not await fleet.drained(index, [adapter], cfg.drain_timeout_s):
            logger.warning("%s did not drain %s in %.0f s; it stays loaded", worker, adapter,
                           cfg.drain_timeout_s)
            self.kept.append((worker, adapter))
            return
        if adapter in fleet.holding().get(worker, frozenset()):
            return  # a later re-plan put it back here
        try:
            await unload_adapter(session, fleet.workers[index].endpoint.url, adapter,
                                 timeout=cfg.load_timeout_s)
        except LoraCallError as exc:
            logger.warning("%s; it stays loaded", exc)
            self.kept.append((worker, adapter))
            return
        fleet.workers[index].resident.discard(adapter)
        self.unloaded.append((worker, adapter))


async def releases_ctx(plane: ControlPlane) -> AsyncIterator[None]:
    """Background work (``running``): the plane's releases, cancelled at shutdown."""
    yield
    await plane.releases.close()


async def _unload_all(plane: ControlPlane, pairs: tuple[tuple[str, str], ...]) -> None:
    cfg, fleet, session = plane.cfg, plane.fleet, plane.session
    index = {w.endpoint.name: i for i, w in enumerate(fleet.workers)}
    for worker, adapter in pairs:
        i = index[worker]
        try:
            await unload_adapter(session, fleet.workers[i].endpoint.url, adapter,
                                 timeout=cfg.load_timeout_s)
        except LoraCallError as exc:
            logger.warning("rollback: %s", exc)
            continue
        fleet.workers[i].resident.discard(adapter)
