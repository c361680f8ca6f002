"""The replanner: every ``replan_interval_s``, on ``POST /admin/replan``, on a drain, when a
worker holding adapters goes down and (with periodic re-planning on and ``surge_replan``) as
soon as an adapter's recent traffic is well above the rate the placement was planned for, it
plans again from what the observer saw and migrates.

The snapshot (observed demands, the workers' fixed engine options and holdings) goes to a
process of its own (``replan_job.run_job``: surrogate, placer, cluster twin), never the
serving event loop; the migration it returns is carried out by ``migrate.execute`` under one
lock, so re-plans never overlap. ``dry_run`` returns the plan and the diff without acting.
After a migration the actuator is asked for more workers (the plan added some) or fewer (the
highest-numbered were retired) by ``scaling.Scaler``; the result's ``actuator`` is its last
action.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from gateway.config.engine import fallback_engine
from gateway.control import planning_process
from gateway.control.learning import Learner
from gateway.control.migrate import execute
from gateway.control.replan_job import (
    ReplanJob,
    ReplanResult,
    run_job,
)
from gateway.control.scaling import ScaleDirection, ScaleOutcome, Scaler, present
from gateway.control.target_training import TargetSurrogate
from gateway.errors import ApiError
from gateway.fleet.kube import actuator_for
from gateway.fleet.metrics import MigrationOutcome, ReplanTrigger
from gateway.fleet.registry import WorkerStatus
from planner import AdapterDemand, RunningWorker, Stability

if TYPE_CHECKING:
    from gateway.control.plane import ControlPlane

__all__ = ["Replanner"]

logger = logging.getLogger(__name__)

DOWN_CHECK_S = 1.0
# Re-plans the fleet needs now: their adapters are unserved (a worker down, an adapter not
# placed) or an operator waits (a drain). One that fails is retried after RETRY_FIRST_S,
# doubling up to RETRY_MAX_S, until one succeeds.
FORCED = frozenset({ReplanTrigger.WORKER_DOWN, ReplanTrigger.DRAIN, ReplanTrigger.ON_DEMAND})
RETRY_FIRST_S = 2.0
RETRY_MAX_S = 16.0


class Replanner:
    """Re-plans the plane's fleet; ``history`` keeps the last re-plans for views and the API."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.lock = asyncio.Lock()
        self.history: deque[dict[str, Any]] = deque(maxlen=100)
        self.migrations = 0
        self.learner = Learner(plane)
        self.gateway_id = uuid.uuid4().hex  # its live windows train the planning process
        self.scaler = Scaler(actuator_for(plane.cfg.actuator), plane.metrics)
        self._handled_down: set[str] = set()
        self._placing: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._asked: dict[str, float] = {}  # ``triggers.unplaced_wanted``
        # Requests per wall second each adapter was planned for: the registered rates until
        # the first re-plan, then those of the last one computed that was not a dry run (its
        # migration may still roll back). None before the loop starts. Surges are measured
        # against these.
        self.planned: dict[str, float] | None = None
        # A forced re-plan that failed, retried by the loop (``replan``).
        self.owed: ReplanTrigger | None = None
        self._retry_in = RETRY_FIRST_S
        self._retry_at = 0.0
        self.measuring: Future[dict[str, int]] | None = None  # the baselines at start-up

    @property
    def draining(self) -> set[int]:
        """Workers being drained: planned around (the fleet's, which exports them)."""
        return self.plane.fleet.draining

    # -- the snapshot ----------------------------------------------------------------------

    def registered(self) -> list[AdapterDemand]:
        """Registered adapters (and the base model's rank-0 entry) with their given rates."""
        cfg, fleet = self.plane.cfg, self.plane.fleet
        registered = [a.demand for a in cfg.adapters if a.demand.is_base]
        registered += [a.demand for a in fleet.adapters.values()]
        return [replace(d, name=cfg.base_model) if d.is_base else d for d in registered]

    def demands(self) -> list[AdapterDemand]:
        """``registered`` with observed load."""
        return self.plane.observer.demands(self.registered(), now=time.monotonic(),
                                          time_scale=self.plane.cfg.time_scale)

    def snapshot(self, *, fresh: bool = False) -> ReplanJob:
        cfg, fleet = self.plane.cfg, self.plane.fleet
        surrogate = self.plane.surrogate or TargetSurrogate()  # none: the shipped one
        demands = self.demands()
        holding = fleet.holding()
        default = fallback_engine(demands, cfg.gpu, cfg.max_model_len, cfg.tensor_parallel_size)
        workers = tuple(RunningWorker(
            name=w.endpoint.name, engine=w.engine or default,
            adapters=holding[w.endpoint.name],
            up=w.status is WorkerStatus.UP and i not in self.draining,
            speed=self.speed(w.endpoint.name))
            for i, w in enumerate(fleet.workers))
        return ReplanJob(demands=tuple(demands), workers=workers, gpu=cfg.gpu, model=cfg.model,
                         profile=cfg.profile, max_model_len=cfg.max_model_len,
                         stability=Stability(move_budget=cfg.move_budget,
                                             retire_margin=cfg.retire_margin,
                                             rate_window_s=self.plane.observer.counted_s(
                                                 now=time.monotonic(),
                                                 time_scale=cfg.time_scale)),
                         fresh=fresh, validate=cfg.validate_replans,
                         capacity_scale=self.learner.capacity_scale, headroom=cfg.headroom,
                         search_seconds=cfg.search_seconds,
                         tensor_parallel_size=cfg.tensor_parallel_size,
                         windows=self.learner.take(), gateway_id=self.gateway_id,
                         surrogate_path=surrogate.path,
                         shares={} if fleet.plan is None else {
                             wp.name: dict(wp.shares) for wp in fleet.plan.workers})

    def planned_speed(self, worker: str) -> float:
        """``speed``, the fleet's learned figure when the worker has none of its own."""
        speed = self.speed(worker)
        return self.learner.capacity_scale if speed is None else speed

    def speed(self, worker: str) -> float | None:
        """The speed the plan assumes for ``worker``: learned (None: the fleet's), times the
        starvation guard's penalty on it."""
        own = self.learner.speed(worker)
        factor = self.plane.guard.factor(worker, now=time.monotonic())
        if factor >= 1.0:
            return own
        return (self.learner.capacity_scale if own is None else own) * factor

    # -- planning off the loop ---------------------------------------------------------------

    async def compute(self, job: ReplanJob) -> ReplanResult:
        loop = asyncio.get_running_loop()
        try:
            return await asyncio.wrap_future(planning_process.submit(run_job, job), loop=loop)
        except BrokenProcessPool:  # the planning process died (killed, out of memory)
            planning_process.reset()  # the next re-plan starts a new one
            raise

    # -- one re-plan -------------------------------------------------------------------------

    async def replan(self, trigger: ReplanTrigger, *, dry_run: bool = False,
                     fresh: bool = False) -> dict[str, Any]:
        """Plan again and (unless ``dry_run``) migrate; returns what happened. A forced
        re-plan that fails (a worker down, a drain, an adapter to place) is owed: the loop
        tries again within ``RETRY_FIRST_S``, backing off to ``RETRY_MAX_S``, until one
        succeeds, instead of leaving the adapters unserved until the next period."""
        if not self.plane.role.leading:  # admin calls go to the leader (replicas.py)
            raise ApiError.unavailable("this replica does not lead the fleet; retry", 1)
        try:
            body = await self._replan(trigger, dry_run=dry_run, fresh=fresh)
        except Exception:
            if trigger in FORCED and not dry_run:
                self._owe(trigger)
            raise
        if not dry_run:
            self._paid()
        return body

    def _owe(self, trigger: ReplanTrigger) -> None:
        loop = asyncio.get_running_loop()
        self._retry_in = RETRY_FIRST_S if self.owed is None else min(RETRY_MAX_S,
                                                                      self._retry_in * 2)
        self.owed = trigger
        self._retry_at = loop.time() + self._retry_in
        logger.warning("re-plan (%s) failed: retrying in %.0f s", trigger.value,
                       self._retry_in)

    def _paid(self) -> None:
        """A re-plan went through: nothing is owed, and drained workers left empty are
        reported drained (also after a drain's re-plan that succeeded on a retry)."""
        self.owed = None
        fleet = self.plane.fleet
        holding = fleet.holding()
        for i in sorted(self.draining):
            worker = fleet.workers[i] if i < len(fleet.workers) else None
            if worker is not None and worker.up and not holding[worker.endpoint.name]:
                fleet.set_status(i, WorkerStatus.DRAINING)

    async def _replan(self, trigger: ReplanTrigger, *, dry_run: bool,
                      fresh: bool) -> dict[str, Any]:
        metrics = self.plane.metrics
        async with self.lock:
            started = time.perf_counter()
            job = self.snapshot(fresh=fresh)
            result = await self.compute(job)
            if not dry_run:
                self.planned = self._wall_rates(job.demands)
                self.plane.fleet.baselines = dict(result.baselines)
            metrics.replan_seconds.observe(time.perf_counter() - started)
            metrics.replans.labels(trigger.value).inc()
            m = result.migration
            body: dict[str, Any] = {
                "trigger": trigger.value, "replica": self.plane.role.name,
                "dry_run": dry_run, "fresh": fresh,
                "planned_gpus": result.planned_gpus, "gpus": list(result.gpus),
                "validated": result.validated, "starved": list(result.starved),
                "repairs": result.repairs, "learned_windows": result.learned,
                "baselines": dict(result.baselines),
                "plan_seconds": round(result.plan_seconds, 3),
                "validate_seconds": round(result.validate_seconds, 3),
                "diff": {"moved": list(m.moved), "retired": list(m.retired),
                         "added": list(m.added),
                         "steps": [{"kind": s.kind.value, "worker": s.worker,
                                    "adapter": s.adapter} for s in m.steps]},
                "capacity_scale": round(self.learner.capacity_scale, 3),
                "speeds": {w.name: round(w.speed, 3) for w in job.workers
                           if w.speed is not None},
                "at": time.time()}
            if m.added:
                logger.warning("the plan needs %d more worker(s) than run (%s); their adapters "
                               "are folded onto running workers", len(m.added),
                               ", ".join(m.added))
            if not dry_run and m.steps:
                draining = {self.plane.fleet.workers[i].endpoint.name for i in self.draining}
                report = await execute(self.plane, m, avoid=draining)
                body["migration"] = report.as_dict()
                if report.outcome is MigrationOutcome.OK:
                    self.migrations += len(report.moved)
                    self.plane.fleet.planned_gpus = result.planned_gpus
                    await _persist(self.plane)
            elif not dry_run:
                self.plane.fleet.planned_gpus = result.planned_gpus
            if not dry_run and body.get("migration", {}).get("outcome") != "rolled_back":
                await self._scale(len(m.added), bool(body.get("migration", {}).get("retired")))
            last = self.scaler.last
            body["actuator"] = None if last is None else last.as_dict()
            body["gpus_active"] = self.plane.fleet.gpus_active
            self.history.append(body)
            logger.info("re-plan (%s): %d GPUs planned, moved %d, retired %s%s", trigger.value,
                        result.planned_gpus, len(m.moved), list(m.retired),
                        " (dry run)" if dry_run else "")
            return body

    async def _scale_for_first_plan(self) -> None:
        fleet = self.plane.fleet
        # workers the first plan asked for and do not run (each tensor_parallel_size GPUs)
        missing = ((fleet.planned_gpus or 0) // fleet.tensor_parallel_size
                   - len(present(fleet)))
        if missing > 0:
            try:
                await self.scaler.after(fleet, missing)
            except Exception:
                logger.exception("asking the actuator for %d more workers failed", missing)

    async def _scale(self, added: int, retired: bool) -> None:
        """Ask for ``added`` more workers, or (workers retired, or the last scale-down
        failed) fewer when the highest-numbered hold nothing."""
        last = self.scaler.last
        retry = (last is not None and last.direction is ScaleDirection.DOWN
                 and last.outcome is ScaleOutcome.FAILED)
        if added or retired or retry:
            await self.scaler.after(self.plane.fleet, added)

    # -- triggers ------------------------------------------------------------------------------

    async def drain(self, index: int) -> dict[str, Any]:
        """An operator's drain of worker ``index``: route nothing new to it, re-plan its
        adapters elsewhere (its in-flight requests finish), report it retired."""
        self.draining.add(index)  # routed as before until the migration moves its adapters
        try:
            return await self.replan(ReplanTrigger.DRAIN)
        except Exception as exc:  # still draining: the loop retries the re-plan
            logger.exception("the drain's re-plan failed")
            raise ApiError.unavailable(
                f"the drain's re-plan failed ({type(exc).__name__}); it is retried within "
                f"{self._retry_in:.0f} s, and GET /admin/workers shows the worker drained "
                "once its adapters moved", max(1, round(self._retry_in))) from None
        except BaseException:  # cancelled: no drain
            self.draining.discard(index)
            raise

    async def ensure_placed(self, adapter: str, timeout: float) -> None:
        """Place a registered adapter that no worker holds (a re-plan puts it somewhere and
        loads it); requests for it wait here, one re-plan for all of them, at most
        ``timeout`` seconds (then 503 with ``Retry-After``)."""
        fleet = self.plane.fleet
        if not self.plane.role.leading:  # the leader places it (triggers.unplaced_wanted)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    while not fleet.placed(adapter):
                        await asyncio.sleep(0.1)
        if fleet.placed(adapter):
            return
        task = self._placing.get(adapter)
        if task is None:
            task = asyncio.ensure_future(self.replan(ReplanTrigger.ON_DEMAND))
            self._placing[adapter] = task
            task.add_done_callback(lambda _: self._placing.pop(adapter, None))
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            raise ApiError.unavailable(f"the adapter `{adapter}` is being loaded; retry",
                                       fleet.retry_after_s) from None
        except Exception:
            logger.exception("placing %s failed", adapter)
        if not fleet.placed(adapter):
            raise ApiError.unavailable(f"the adapter `{adapter}` could not be placed",
                                       fleet.retry_after_s)

    def undrain(self, index: int) -> None:
        """Give a drained worker back to the planner (placed on at the next re-plan)."""
        self.plane.fleet.undrain(index)

    def _wall_rates(self, demands: Iterable[AdapterDemand]) -> dict[str, float]:
        """Requests per wall second of ``demands`` (theirs are in the workers' time)."""
        scale = self.plane.cfg.time_scale
        return {d.name: d.rate * scale for d in demands}

async def _persist(plane: ControlPlane) -> None:
    """Write the state file, when the gateway keeps one."""
    from gateway.control.state import persist  # imported when first needed

    result = persist(plane)
    if asyncio.iscoroutine(result):
        await result
