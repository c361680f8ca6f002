"""The gateway's persisted state: the placement and the adapter registry.

``state_file:`` in the config turns it on. The file is JSON with a ``version``; it is written
atomically (a temporary file in the same directory, fsynced, then ``os.replace``, then the
directory fsynced), so a crash leaves the old state or the new one, never half of one.

- Written when the plan is installed or replaced and whenever the registry changes (the fleet
  tells ``StateKeeper``), by ``persist(plane)`` on demand (the migration executor calls it),
  and once more at shutdown after in-flight requests finished.
- Read by ``create_app``: when the file exists, the registry is merged with the config's and
  the placement it holds is restored instead of planning afresh (``gateway/control/restore.py``),
  and the usual start-up reconciliation with each worker's ``/v1/models`` loads what the
  placement wants and a worker lacks.

Examples
--------
>>> import tempfile
>>> from planner import AdapterDemand
>>> from gateway.config import AdapterEntry
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
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from gateway.config import AdapterEntry, AdapterOrigin
from gateway.control.planning import InitialPlan
from gateway.fleet.registry import Fleet
from planner import AdapterDemand, adapter_name_error, demand_error
from twin.errors import ConfigError
from twin.routing import Placement, WorkerPlacement
from twin.specs import EngineConfig

if TYPE_CHECKING:
    from gateway.control.plane import ControlPlane

__all__ = ["FileStateStore", "GatewayState", "StateKeeper", "StateStore", "keep_state",
           "persist", "snapshot"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayState:
    """What survives a restart: worker name -> {adapter: share} (``twin.routing.BASE_MODEL``
    for the base model), the registered adapters, the plan's GPU count if known, and the
    engine options each worker runs with (worker name -> ``EngineConfig``) if known."""

    VERSION: ClassVar[int] = 2  # 2: each adapter records its origin (config or admin API)

    placement: Mapping[str, Mapping[str, float]]
    adapters: tuple[AdapterEntry, ...]
    planned_gpus: int | None = None
    engines: Mapping[str, EngineConfig] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.VERSION, "planned_gpus": self.planned_gpus,
                "placement": {w: dict(s) for w, s in self.placement.items()},
                "adapters": [{**dataclasses.asdict(a.demand), "path": a.path,
                              "origin": a.origin.value} for a in self.adapters],
                "engines": {w: dataclasses.asdict(e) for w, e in self.engines.items()}}

    @classmethod
    def from_json(cls, data: Any) -> GatewayState:
        """Parse a saved state (version 1, without origins, reads as added through the admin
        API: kept unless the config lists it); ``ConfigError`` naming the field under
        ``state_file`` if it is not one, every number bounded as in the config."""
        if not isinstance(data, dict):
            raise ConfigError("state_file", "not a lorafleet state: not a JSON object")
        if data.get("version") not in (1, cls.VERSION):
            raise ConfigError("state_file.version", f"must be 1 or {cls.VERSION}, got "
                              f"{data.get('version')!r}")
        for key in ("placement", "adapters"):
            if key not in data:
                raise ConfigError(f"state_file.{key}", "is required")
        placement = _placement(data["placement"])
        items = data["adapters"]
        if not isinstance(items, list):
            raise ConfigError("state_file.adapters", "must be a list")
        adapters = tuple(_saved_adapter(a, f"state_file.adapters[{i}]")
                         for i, a in enumerate(items))
        planned = data.get("planned_gpus")
        if planned is not None and (isinstance(planned, bool) or not isinstance(planned, int)
                                    or not 0 <= planned <= MAX_WORKERS):
            raise ConfigError("state_file.planned_gpus", f"must be an integer in "
                              f"[0, {MAX_WORKERS}], got {planned!r}")
        engines = data.get("engines", {})
        if not isinstance(engines, dict):
            raise ConfigError("state_file.engines", "must be a mapping of worker names")
        return cls(placement=placement, adapters=adapters, planned_gpus=planned,
                   engines={str(w): _engine(e, f"state_file.engines.{w}")
                            for w, e in engines.items()})

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


MAX_WORKERS = 100_000  # bounds a saved GPU count


def _placement(data: Any) -> dict[str, dict[str, float]]:
    if not isinstance(data, dict):
        raise ConfigError("state_file.placement", "must be a mapping of worker names")
    out: dict[str, dict[str, float]] = {}
    for worker, shares in data.items():
        if not isinstance(shares, dict):
            raise ConfigError(f"state_file.placement.{worker}", "must be a mapping "
                              "{adapter: share}")
        for name, share in shares.items():
            if (isinstance(share, bool) or not isinstance(share, int | float)
                    or not 0 <= share <= 1):  # NaN fails too
                raise ConfigError(f"state_file.placement.{worker}.{name}",
                                  f"must be a share in [0, 1], got {share!r}")
        out[str(worker)] = {str(k): float(v) for k, v in shares.items()}
    return out


def _saved_adapter(item: Any, field: str) -> AdapterEntry:
    if not isinstance(item, dict):
        raise ConfigError(field, "must be a mapping")
    known = {f.name for f in dataclasses.fields(AdapterDemand)} | {"path", "origin"}
    unknown = sorted(set(item) - known)
    if unknown:
        raise ConfigError(f"{field}.{unknown[0]}", "unknown field")
    name = item.get("name")
    error = adapter_name_error(name)
    if error is not None:
        raise ConfigError(f"{field}.name", error)
    for key in ("rank", "rate"):
        if key not in item:
            raise ConfigError(f"{field}.{key}", "is required")
    for key, value in item.items():
        if key in ("name", "path", "origin"):
            continue
        error = demand_error(key, value)
        if error is not None:
            raise ConfigError(f"{field}.{key}", error)
    path = item.get("path")
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{field}.path", f"must be a non-empty string, got {path!r}")
    try:
        origin = AdapterOrigin(item.get("origin", AdapterOrigin.ADMIN.value))
    except ValueError:
        raise ConfigError(f"{field}.origin", f"must be one of "
                          f"{[o.value for o in AdapterOrigin]}, got {item['origin']!r}") from None
    demand = AdapterDemand(**{k: v for k, v in item.items() if k not in ("path", "origin")})
    return AdapterEntry(demand, path, origin)


def _engine(data: Any, field: str) -> EngineConfig:
    if not isinstance(data, dict):
        raise ConfigError(field, "must be a mapping of engine options")
    try:
        return EngineConfig(**data)
    except ConfigError as exc:
        raise exc.nested(field) from None
    except TypeError as exc:  # an unknown option
        raise ConfigError(field, str(exc)) from None


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


async def persist(plane: ControlPlane) -> None:
    """Write the plane's state now (no-op without ``state_file``)."""
    keeper = plane.keeper
    if keeper is not None:
        await keeper.save()


async def keep_state(plane: ControlPlane) -> AsyncIterator[None]:
    """Background work (``running``): save on every change of plan or registry, and once at
    shutdown (after in-flight requests finished: aiohttp runs cleanup after its graceful
    shutdown)."""
    keeper = plane.keeper
    if keeper is None:
        yield
        return
    plane.fleet.on_change(keeper.schedule)
    try:
        yield
    finally:
        await keeper.flush()
        try:
            await keeper.save()
        except OSError as exc:
            logger.error("cannot write the state file at shutdown: %s", exc)
