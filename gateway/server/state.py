"""The gateway's persisted state: the placement and the adapter registry.

``state_file:`` in the config turns it on. The file is JSON with a ``version``; it is written
atomically (a temporary file in the same directory, fsynced, then ``os.replace``, then the
directory fsynced), so a crash leaves the old state or the new one, never half of one.

- Written when the plan is installed or replaced and whenever the registry changes (the fleet
  tells ``StateKeeper``), by ``persist(app)`` on demand (the migration executor calls it),
  and once more at shutdown after in-flight requests finished.
- Read by ``create_app``: when the file exists, the registry and the placement it holds are
  restored instead of planning afresh (the placement only if it names the same workers; else
  the gateway plans over the restored registry), and the usual start-up reconciliation with
  each worker's ``/v1/models`` loads what the placement wants and a worker lacks.

Examples
--------
>>> import tempfile
>>> from planner.features import AdapterDemand
>>> from gateway.server.config import AdapterEntry
>>> sql = AdapterEntry(AdapterDemand(name="sql", rank=8, rate=2.0), "/ad/sql")
>>> state = GatewayState(placement={"w0": {"sql": 1.0}, "w1": {}}, adapters=(sql,))
>>> store = FileStateStore(tempfile.mkdtemp() + "/state.json")
>>> store.load() is None
True
>>> store.save(state); store.load() == state
True
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from aiohttp import web

from gateway.keys import FLEET, STATE_KEEPER
from gateway.server.config import AdapterEntry, GatewayConfig
from gateway.server.planning import InitialPlan
from gateway.server.registry import Fleet
from planner.features import AdapterDemand
from twin.errors import ConfigError
from twin.routing import Placement, WorkerPlacement
from twin.specs import EngineConfig

__all__ = ["FileStateStore", "GatewayState", "StateKeeper", "StateStore", "keep_state",
           "persist", "restore", "snapshot"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayState:
    """What survives a restart: worker name -> {adapter: share} (``twin.routing.BASE_MODEL``
    for the base model), the registered adapters, the plan's GPU count if known, and the
    engine options each worker runs with (worker name -> ``EngineConfig``) if known."""

    VERSION: ClassVar[int] = 1

    placement: Mapping[str, Mapping[str, float]]
    adapters: tuple[AdapterEntry, ...]
    planned_gpus: int | None = None
    engines: Mapping[str, EngineConfig] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.VERSION, "planned_gpus": self.planned_gpus,
                "placement": {w: dict(s) for w, s in self.placement.items()},
                "adapters": [{**dataclasses.asdict(a.demand), "path": a.path}
                             for a in self.adapters],
                "engines": {w: dataclasses.asdict(e) for w, e in self.engines.items()}}

    @classmethod
    def from_json(cls, data: Any) -> GatewayState:
        """Parse a saved state; ``ConfigError`` (field ``state_file``) if it is not one."""
        try:
            if data["version"] != cls.VERSION:
                raise ValueError(f"version {data['version']!r}, expected {cls.VERSION}")
            placement = {str(w): {str(k): float(v) for k, v in shares.items()}
                         for w, shares in data["placement"].items()}
            adapters = tuple(
                AdapterEntry(AdapterDemand(**{k: v for k, v in a.items() if k != "path"}),
                             a["path"])
                for a in data["adapters"])
            planned = data.get("planned_gpus")
            engines = {str(w): EngineConfig(**e) for w, e in data.get("engines", {}).items()}
            return cls(placement=placement, adapters=adapters, engines=engines,
                       planned_gpus=None if planned is None else int(planned))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError("state_file", f"not a lorafleet state: {exc!r}") from None

    def plan(self, workers: Sequence[str],
             engines: Sequence[EngineConfig] | None = None) -> InitialPlan | None:
        """The placement over ``workers`` (in their order) as an ``InitialPlan``, with
        ``engines`` if given (what running workers were started with), else the saved ones;
        None if the worker names differ or no engine options are known."""
        if sorted(self.placement) != sorted(workers):
            return None
        if engines is None:
            if sorted(self.engines) != sorted(workers):
                return None
            engines = [self.engines[w] for w in workers]
        placement = Placement(tuple(WorkerPlacement(name=w, shares=dict(self.placement[w]))
                                    for w in workers))
        planned = self.planned_gpus
        if planned is None:
            planned = sum(1 for w in placement.workers if w.shares)
        return InitialPlan(placement=placement, engines=tuple(engines), planned_gpus=planned)


class StateStore(Protocol):
    """Where the state lives."""

    def load(self) -> GatewayState | None: ...

    def save(self, state: GatewayState) -> None: ...


class FileStateStore:
    """One JSON file, replaced atomically on every save."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> GatewayState | None:
        """The saved state; None when there is no file."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError("state_file", f"cannot read {self.path}: {exc.strerror}") from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError("state_file", f"{self.path} is not JSON: {exc}") from None
        return GatewayState.from_json(data)

    def save(self, state: GatewayState) -> None:
        folder = self.path.parent
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=folder)
        replaced = False
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(state.to_json(), f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
            replaced = True
        finally:
            if not replaced:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)


def snapshot(fleet: Fleet) -> GatewayState:
    """The fleet's plan and registry as a ``GatewayState``."""
    placement = {} if fleet.plan is None else {
        wp.name: dict(wp.shares) for wp in fleet.plan.workers}
    engines = {w.endpoint.name: w.engine for w in fleet.workers if w.engine is not None}
    return GatewayState(placement=placement, adapters=tuple(fleet.adapters.values()),
                        planned_gpus=fleet.planned_gpus, engines=engines)


def restore(cfg: GatewayConfig, plan: InitialPlan | None,
            state: GatewayState | None) -> tuple[GatewayConfig, InitialPlan | None]:
    """``cfg`` with the saved registry (its rank-0 entries kept: they are the base model's
    load) and the saved placement as the plan; unchanged without a state. The placement is
    dropped, with a warning, when it names other workers than ``cfg``: the gateway then
    plans afresh over the saved registry."""
    if state is None:
        return cfg, plan
    base = tuple(a for a in cfg.adapters if a.demand.rank == 0)
    cfg = dataclasses.replace(cfg, adapters=base + state.adapters)
    names = [w.name for w in cfg.workers]
    restored = state.plan(names, None if plan is None else plan.engines)
    if restored is None:
        logger.warning("the state file's placement (workers %s) does not fit workers %s; "
                       "planning afresh", sorted(state.placement), names)
        return cfg, plan
    logger.info("restored %d adapters and the placement from the state file",
                len(state.adapters))
    return cfg, restored


class StateKeeper:
    """Saves the fleet's state, one write at a time, off the event loop."""

    def __init__(self, store: StateStore, fleet: Fleet) -> None:
        self.store = store
        self.fleet = fleet
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.saves = 0

    async def save(self) -> None:
        async with self._lock:
            if self.fleet.plan is None:  # nothing planned yet: keep what the file holds
                return
            state = snapshot(self.fleet)  # taken under the lock: the newest state wins
            await asyncio.get_running_loop().run_in_executor(None, self.store.save, state)
            self.saves += 1

    def schedule(self) -> None:
        """Save soon (the fleet's change listener: it cannot await)."""
        task = asyncio.get_running_loop().create_task(self._save_logged())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _save_logged(self) -> None:
        try:
            await self.save()
        except OSError as exc:
            logger.error("cannot write the state file: %s", exc)

    async def flush(self) -> None:
        """Wait for scheduled saves."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


async def persist(app: web.Application) -> None:
    """Write the app's state now (no-op without ``state_file``)."""
    keeper = app.get(STATE_KEEPER)
    if keeper is not None:
        await keeper.save()


async def keep_state(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: save on every change of plan or registry, and once at shutdown (after
    in-flight requests finished: aiohttp runs cleanup after its graceful shutdown)."""
    keeper = app.get(STATE_KEEPER)
    if keeper is None:
        yield
        return
    app[FLEET].on_change(keeper.schedule)
    try:
        yield
    finally:
        await keeper.flush()
        try:
            await keeper.save()
        except OSError as exc:
            logger.error("cannot write the state file at shutdown: %s", exc)
