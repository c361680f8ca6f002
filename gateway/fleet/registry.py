"""The fleet: workers, their health, adapter residency, and the router over them.

Residency (which adapters each worker holds) comes from the gateway's own load calls,
reconciled with each worker's ``/v1/models``; never from ``vllm:lora_requests_info``. The
router's placement is the plan restricted to where the adapters are resident, so a request is
never routed to a worker that was not asked to load its adapter. Routing itself is
``twin.routing.Router``, the one the cluster twin validates plans with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from http import HTTPStatus

from gateway.config import AdapterEntry, WorkerEndpoint
from gateway.errors import ApiError, AuthError
from gateway.fleet.worker_state import WorkerPhase, WorkerState, WorkerStatus
from twin.routing import BASE_MODEL, Placement, Router, RoutingPolicy, WorkerPlacement
from twin.specs import EngineConfig

__all__ = ["Fleet", "WorkerPhase", "WorkerState", "WorkerStatus"]

logger = logging.getLogger(__name__)


class Fleet:
    """Workers, registered adapters, the plan and the router.

    Parameters
    ----------
    base_model
        The name workers serve the base model under.
    workers
        The workers, in placement order.
    adapters
        Registered adapters by name (rank-0 entries stand for the base model).
    policy
        The router's policy.
    retry_after_s
        ``Retry-After`` of a 503.
    """

    def __init__(self, base_model: str, workers: Sequence[WorkerEndpoint],
                 adapters: Mapping[str, AdapterEntry], policy: RoutingPolicy,
                 retry_after_s: int = 1, tensor_parallel_size: int = 1) -> None:
        self.base_model = base_model
        self.tensor_parallel_size = tensor_parallel_size  # GPUs of each worker
        self.workers = [WorkerState(w) for w in workers]
        self.adapters = {n: a for n, a in adapters.items() if not a.demand.is_base}
        self.policy = policy
        self.retry_after_s = retry_after_s
        self.plan: Placement | None = None
        self.router: Router | None = None
        self.synced = False  # start-up reconciliation done (residency known)
        self._placed: frozenset[str] = frozenset()  # what the plan names, for ``placed``
        self.inflight: Counter[tuple[int, str | None]] = Counter()  # (worker, adapter) -> n
        self.changed = asyncio.Event()  # set whenever a request finishes (drain waits on it)
        self.shutting_down = False  # SIGTERM: /ready answers 503 while requests finish
        self.planned_gpus: int | None = None  # GPUs the plan asked for, when known
        # GPUs of each naive placement (``planner.baselines``) the planning process measured
        # for the demands of the last plan; until then one GPU per registered LoRA adapter
        self.baselines: dict[str, int] = {}
        self.draining: set[int] = set()  # workers an operator drains: planned around
        self.removing: set[str] = set()  # adapters being removed (admin API)
        # From the state file at start-up (gateway/control/restore.py): adapters whose path or
        # rank the config changed (a worker's copy is unloaded, then loaded from the new path)
        # and those it no longer lists (unloaded where held).
        self.stale: frozenset[str] = frozenset()
        self.dropped: frozenset[str] = frozenset()
        self._listeners: list[Callable[[], None]] = []
        self._joiners: list[Callable[[int], None]] = []

    # -- state -----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """A placement is installed, residency is known, and at least one worker is up."""
        return (self.synced and not self.shutting_down and self.router is not None
                and any(w.up for w in self.workers))

    @property
    def workers_active(self) -> int:
        """Workers with something routed to them."""
        if self.router is None:
            return 0
        return sum(1 for w in self.router.placement.workers if w.shares)

    @property
    def gpus_active(self) -> int:
        """The GPUs of the workers with something routed to them."""
        return self.workers_active * self.tensor_parallel_size

    @property
    def gpus_running(self) -> int:
        """The GPUs of the workers that answer health checks, planned on or not (a retired
        worker's GPUs run until the actuator removes it)."""
        return sum(1 for w in self.workers if w.alive) * self.tensor_parallel_size

    def gpus_baseline(self) -> dict[str, int]:
        """GPUs by naive policy: as measured (``baselines``), else one per registered LoRA
        adapter (``one_per_adapter`` before the planning process has measured it)."""
        fallback = {"one_per_adapter": len(self.adapters) * self.tensor_parallel_size}
        return {**fallback, **self.baselines}

    def phase(self, index: int) -> WorkerPhase | None:
        """Worker ``index``'s exported state (``WorkerState.phase``)."""
        return self.workers[index].phase(index in self.draining)

    def outstanding(self, index: int) -> int:
        return 0 if self.router is None else self.router.outstanding[index]

    def set_plan(self, plan: Placement) -> None:
        """Adopt ``plan`` (worker names must match) and route by it as far as resident; a
        healthy worker it leaves empty is retired (``WorkerState.retired``)."""
        names = [w.name for w in plan.workers]
        expected = [w.endpoint.name for w in self.workers]
        if names != expected:
            raise ValueError(f"plan workers {names} differ from the fleet's {expected}")
        self.plan = plan
        for worker, wp in zip(self.workers, plan.workers, strict=True):
            if wp.shares:
                worker.retired = False
            elif worker.status is WorkerStatus.UP:
                worker.retired = True  # a worker down stays down: it was not taken out
        self._install()
        self._changed()

    def set_engines(self, engines: Sequence[EngineConfig]) -> None:
        """The engine options each worker runs with (in worker order)."""
        for worker, engine in zip(self.workers, engines, strict=True):
            worker.engine = engine

    def set_status(self, index: int, status: WorkerStatus) -> None:
        worker = self.workers[index]
        if worker.status is WorkerStatus.GONE or (
                worker.status is WorkerStatus.DRAINING and status is WorkerStatus.UP):
            return  # health checks undo neither an operator's drain nor discovery's verdict
        if worker.status is not status:
            logger.warning("worker %s (%s) is %s", worker.endpoint.name, worker.endpoint.url,
                           status.value)
            worker.status = status

    def set_resident(self, index: int, names: set[str]) -> None:
        """What worker ``index`` holds, as it reported it (replicas publish it)."""
        self.workers[index].resident = set(names)
        self._install()
        self._changed()

    def undrain(self, index: int) -> None:
        """Put a drained worker back into service (it is placed again at the next re-plan)."""
        self.draining.discard(index)
        if self.workers[index].status is WorkerStatus.DRAINING:
            self.workers[index].status = WorkerStatus.UP

    def holding(self) -> dict[str, frozenset[str]]:
        """Worker name -> the LoRA adapters routed to it now (the migration diff's input)."""
        if self.plan is None:
            return {w.endpoint.name: frozenset() for w in self.workers}
        return {wp.name: frozenset(k for k in wp.shares if k != BASE_MODEL)
                for wp in self.plan.workers}

    def placed(self, adapter: str) -> bool:
        """The plan routes ``adapter`` to some worker."""
        return adapter in self._placed

    def busy(self, index: int, adapters: Collection[str | None]) -> int:
        """Requests in flight on worker ``index`` for any of ``adapters``."""
        return sum(self.inflight[(index, a)] for a in adapters)

    async def drained(self, index: int, adapters: Collection[str | None],
                      timeout: float) -> bool:
        """Wait until worker ``index`` has no request in flight for ``adapters``; False if
        ``timeout`` seconds pass first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.busy(index, adapters):
            left = deadline - loop.time()
            if left <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 0.5))
        return True

    # -- the adapter registry (admin API) and change listeners (the state file) -----------

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever the plan, the registered adapters or a worker's
        reported residency change."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def register(self, entry: AdapterEntry) -> None:
        """Add a LoRA adapter: listed and resolvable at once, routed once a plan places it
        and a worker loads it. ``ValueError`` if the name is taken."""
        name = entry.demand.name
        if name in self.adapters or name in self.removing or name == self.base_model:
            raise ValueError(f"the adapter {name!r} exists")
        self.adapters[name] = entry
        self._changed()

    def retire(self, name: str) -> AdapterEntry:
        """Stop routing ``name``: unregistered (new requests for it are 404) and dropped from
        the plan, while requests in flight go on; ``KeyError`` if unknown. The caller waits
        for them (``drained``), unloads it, then calls ``retired``."""
        entry = self.adapters.pop(name)
        self.removing.add(name)
        if self.plan is not None:
            self.plan = Placement(tuple(
                WorkerPlacement(name=wp.name, shares={k: v for k, v in wp.shares.items()
                                                      if k != name})
                for wp in self.plan.workers))
            self._install()
        self._changed()
        return entry

    def retired(self, name: str) -> None:
        """``name`` is unloaded everywhere: the name may be registered again."""
        self.removing.discard(name)

    def forget(self, index: int, adapter: str) -> None:
        """The worker no longer holds ``adapter`` (it answered 404 for it)."""
        self.workers[index].resident.discard(adapter)
        self._install()

    # -- workers found at run time (gateway/control/discovery.py) -----------------------------

    def on_join(self, listener: Callable[[int], None]) -> None:
        """Call ``listener(index)`` when a worker is added at run time (metrics bind it)."""
        self._joiners.append(listener)

    def add_worker(self, endpoint: WorkerEndpoint, engine: EngineConfig | None = None) -> int:
        """Append a worker (routed nothing until a plan places adapters on it and it loads
        them); returns its index. ``ValueError`` if the name is taken."""
        if any(w.endpoint.name == endpoint.name for w in self.workers):
            raise ValueError(f"the worker {endpoint.name!r} exists")
        self.workers.append(WorkerState(endpoint, engine=engine))
        if self.plan is not None:
            self.plan = Placement((*self.plan.workers,
                                   WorkerPlacement(name=endpoint.name, shares={})))
            self._install()
        index = len(self.workers) - 1
        for listener in self._joiners:
            listener(index)
        return index

    def set_gone(self, index: int) -> None:
        """Discovery lists the worker no more: route nothing to it (re-planned away); only
        ``rejoin`` undoes it."""
        worker = self.workers[index]
        if worker.status is not WorkerStatus.GONE:
            logger.warning("worker %s (%s) is gone", worker.endpoint.name, worker.endpoint.url)
            worker.status = WorkerStatus.GONE

    def rejoin(self, index: int, endpoint: WorkerEndpoint) -> None:
        """A gone (or down) worker is listed again, perhaps at a new address: DOWN until
        reconciled (``lifecycle.sync_worker`` marks it up)."""
        worker = self.workers[index]
        if endpoint.url != worker.endpoint.url:
            worker.endpoint = endpoint
            worker.resident = set()  # a new pod: nothing loaded
            self._install()
        if worker.status is WorkerStatus.GONE:
            worker.status = WorkerStatus.DOWN

    def _install(self) -> None:
        if self.plan is None:
            return
        self._placed = frozenset(k for wp in self.plan.workers for k in wp.shares)
        routed = tuple(WorkerPlacement(name=wp.name, shares={
            k: s for k, s in wp.shares.items()
            if k == BASE_MODEL or k in self.workers[i].resident})
            for i, wp in enumerate(self.plan.workers))
        old = self.router
        self.router = Router(Placement(routed), self.policy)
        if old is not None:  # requests in flight keep their counts (a new worker: none)
            grown = len(routed) - len(old.outstanding)
            self.router.outstanding = list(old.outstanding) + [0] * grown

    # -- routing ---------------------------------------------------------------------------

    def resolve(self, model: str) -> str | None:
        """The adapter a request for ``model`` runs (None: the base model); 404 otherwise."""
        if model == self.base_model:
            return None
        if model in self.adapters:
            return model
        raise ApiError.model_not_found(model)

    def pick(self, adapter: str | None, exclude: int | None = None, *,
             prefix_key: int | None = None, limit: int = 0) -> int:
        """A healthy worker for ``adapter``, counted as outstanding until ``done``.

        The router chooses (``prefix_key``: see ``Router.route``); when its choice is down,
        excluded (a retry) or already has ``limit`` requests outstanding (0: no limit), the
        least loaded other healthy holder below the limit takes the request. Raises a 503
        ``ApiError`` when no healthy holder is left, a 429 when all of them are full.
        """
        router = self.router
        if router is None:
            raise self._unavailable("the gateway has no placement yet")
        holders = router.holders(adapter)
        if not holders:
            raise self._unavailable(f"the adapter `{adapter}` is not loaded on any worker")
        if exclude is None:
            index = router.route(adapter, prefix_key)  # counted: full past the limit
            if self.workers[index].up and not (limit and router.outstanding[index] > limit):
                self.inflight[(index, adapter)] += 1
                return index
            router.done(index)
        others = [i for i, _ in holders if self.workers[i].up and i != exclude]
        if not others:
            raise self._unavailable("no healthy worker holds the requested model")
        room = [i for i in others if not self._full(i, limit)]
        if not room:
            raise self._overloaded(len(others), limit)
        index = router.route_among(room)
        self.inflight[(index, adapter)] += 1
        return index

    def has_healthy_holder(self, adapter: str) -> bool:
        if self.router is None:
            return False
        return any(self.workers[i].up for i, _ in self.router.holders(adapter))

    def done(self, index: int, adapter: str | None = None) -> None:
        """A request picked for worker ``index`` (and ``adapter``) finished or failed."""
        if self.router is not None:
            self.router.done(index)
        key = (index, adapter)
        if self.inflight[key] > 1:
            self.inflight[key] -= 1
        else:
            self.inflight.pop(key, None)
        self.changed.set()

    def _unavailable(self, message: str) -> ApiError:
        return ApiError.unavailable(message, self.retry_after_s)

    def _full(self, index: int, limit: int) -> bool:
        return limit > 0 and self.outstanding(index) >= limit

    def _overloaded(self, holders: int, limit: int) -> ApiError:
        """Every healthy holder is at ``max_outstanding_per_worker``: OpenAI's 429 shape
        (the plan needs more GPUs than run, or a burst), instead of queueing without bound."""
        return AuthError(HTTPStatus.TOO_MANY_REQUESTS, "requests",
                         f"The workers serving this model are at capacity ({holders} with "
                         f"{limit} requests each in flight). Please try again in "
                         f"{self.retry_after_s}s.", "rate_limit_exceeded",
                         retry_after=self.retry_after_s)
