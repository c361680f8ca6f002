"""The evidence that starts a re-plan before its period: a worker down that held adapters, an
adapter's load well above its plan (a surge), a worker starving requests (the guard). The
replanner's loop asks these once a second; each reads the control plane's state and says whether to
re-plan now.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from gateway.fleet.registry import WorkerStatus
from gateway.fleet.scrape import WorkerGauges

if TYPE_CHECKING:
    from gateway.control.plane import ControlPlane

__all__ = ["down_holders", "export_rates", "starving", "surging", "unplaced_wanted"]

logger = logging.getLogger("gateway.control.replanner")

_LOST = (WorkerStatus.DOWN, WorkerStatus.GONE)  # their adapters are re-planned elsewhere


def surging(plane: ControlPlane, planned: Mapping[str, float] | None) -> bool:
    """An adapter's recent traffic is well above its ``planned`` rate (``Observer.surging``),
    with ``surge_replan`` on."""
    if not plane.cfg.surge_replan or planned is None:
        return False
    names = plane.observer.surging(planned, now=time.monotonic())
    if names:
        logger.info("load above the plan for %s: re-planning now", ", ".join(names[:5]))
    return bool(names)


def starving(plane: ControlPlane, gauges: WorkerGauges) -> bool:
    """The guard found healthy workers starving requests (``guard.StarvationGuard``, the
    queues from ``gauges``): their speeds are lowered for the re-plan that follows."""
    guard, now = plane.guard, time.monotonic()
    if not guard.due(now=now):
        return False
    up = {w.endpoint.name for w in plane.fleet.workers if w.up}
    queues = gauges.series("waiting", since=now - guard.config.window_s)
    findings = [f for f in guard.check(now=now, queues=queues) if f.worker in up]
    if not findings:
        return False
    guard.fired(findings, now=now)
    for f in findings:
        plane.metrics.starvation_findings.labels(f.evidence.value).inc()
        logger.warning("starvation on %s (%s): re-planning with its speed at %.2f of the "
                       "learned", f.worker, f.detail, guard.factor(f.worker, now=now))
    return True


def export_rates(plane: ControlPlane) -> None:
    """``lorafleet_adapter_rate``: each adapter's observed rate, in the workers' time."""
    cfg, metrics = plane.cfg, plane.metrics
    rates = plane.observer.rates(now=time.monotonic())
    for name in plane.fleet.adapters:
        metrics.adapter_rate.labels(name).set(rates.get(name, 0.0) / cfg.time_scale)


def down_holders(plane: ControlPlane, handled: set[str]) -> bool:
    """A worker went down while the plan routes adapters to it (once per outage: ``handled``
    keeps the workers already re-planned for)."""
    fleet = plane.fleet
    if not fleet.synced or fleet.plan is None:
        return False
    fresh = False
    for w, wp in zip(fleet.workers, fleet.plan.workers, strict=True):
        name = w.endpoint.name
        if w.status in _LOST and wp.shares:
            fresh |= name not in handled
            handled.add(name)
        elif w.status not in _LOST:
            handled.discard(name)
    return fresh


ASK_AGAIN_S = 30.0  # an adapter placed on demand and still unplaced is asked for again after


def unplaced_wanted(plane: ControlPlane, asked: dict[str, float]) -> bool:
    """With replicas, requests for a registered adapter no plan places (a follower received
    them: it waits for the leader's placement); ``asked`` holds when each was last
    re-planned for. Alone, a request places its adapter itself (``ensure_placed``)."""
    fleet = plane.fleet
    if not plane.role.shared or not fleet.synced or fleet.plan is None:
        return False
    now = time.monotonic()
    rates = plane.observer.rates(now=now)
    wanted = [n for n in fleet.adapters if rates.get(n) and not fleet.placed(n)
              and now - asked.get(n, -ASK_AGAIN_S) >= ASK_AGAIN_S]
    for name in wanted:
        asked[name] = now
    return bool(wanted)
