"""The replanner's loop: once a second it asks the triggers (``triggers.py``) whether to
re-plan now, re-plans every ``replan_interval_s``, feeds the latency learner its windows and
scrapes, and exports the fleet's gauges. A follower replica only exports (the leader
re-plans: ``replicas.py``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from gateway.control import planning_process, triggers
from gateway.control.learning import SCRAPE_INTERVAL_S
from gateway.control.lifecycle import background
from gateway.control.replan_job import measure_baselines
from gateway.control.replanner import DOWN_CHECK_S, Replanner
from gateway.fleet.metrics import ReplanTrigger

if TYPE_CHECKING:
    from gateway.control.plane import ControlPlane

__all__ = ["adopt_baselines", "replanning", "run"]

logger = logging.getLogger("gateway.control.replanner")


async def run(replanner: Replanner) -> None:
    """The periodic loop, and the down-worker watch."""
    cfg, fleet = replanner.plane.cfg, replanner.plane.fleet
    loop = asyncio.get_running_loop()
    next_at = loop.time() + cfg.replan_interval_s if cfg.replan_interval_s else None
    next_window = loop.time() + cfg.observe_window_s / 2
    next_scrape = loop.time()
    next_surge = loop.time()
    started = False
    while True:
        await asyncio.sleep(DOWN_CHECK_S)
        if not replanner.plane.fleet.synced:
            continue
        if not replanner.plane.role.leading:  # a follower: the leader re-plans
            triggers.export_rates(replanner.plane)
            replanner.plane.metrics.tick(fleet, replanner.planned_speed)
            continue
        if not started:  # the first plan may already want more workers than run
            started = True
            if replanner.planned is None:  # the first plan was made for the registered rates
                replanner.planned = replanner._wall_rates(replanner.registered())
            await replanner._scale_for_first_plan()
        triggers.export_rates(replanner.plane)
        if loop.time() >= next_scrape:
            next_scrape = loop.time() + SCRAPE_INTERVAL_S
            await replanner.learner.scrape()
        if loop.time() >= next_window:
            next_window = loop.time() + cfg.observe_window_s / 2
            replanner.learner.window()
        adopt_baselines(replanner)
        replanner.plane.metrics.tick(fleet, replanner.planned_speed)
        try:
            if triggers.down_holders(replanner.plane, replanner._handled_down):
                await replanner.replan(ReplanTrigger.WORKER_DOWN)
            elif replanner.owed is not None and loop.time() >= replanner._retry_at:
                await replanner.replan(replanner.owed)
            elif triggers.unplaced_wanted(replanner.plane, replanner._asked):
                await replanner.replan(ReplanTrigger.ON_DEMAND)
            elif next_at is not None and cfg.starvation_guard and triggers.starving(
                    replanner.plane, replanner.learner.gauges):
                await replanner.replan(ReplanTrigger.STARVATION)
            elif next_at is not None and loop.time() >= next_at and fleet.adapters:
                await replanner.replan(ReplanTrigger.PERIODIC)
                next_at = loop.time() + cfg.replan_interval_s
            elif next_at is not None and loop.time() >= next_surge and triggers.surging(
                    replanner.plane, replanner.planned):
                # The surge's evidence is the recent part of the window: wait that long
                # before another surge re-plan, so each one rests on fresh arrivals.
                next_surge = loop.time() + replanner.plane.observer.recent_s(time.monotonic())
                await replanner.replan(ReplanTrigger.SURGE)
        except Exception:
            logger.exception("re-plan failed; the placement is unchanged")
            if next_at is not None:
                next_at = loop.time() + cfg.replan_interval_s

def adopt_baselines(replanner: Replanner) -> None:
    """Install the start-up measurement of the baselines once done (unless a re-plan
    has measured them since); cancelled: the gateway stops."""
    job = replanner.measuring
    if job is None or not job.done() or job.cancelled():
        return
    replanner.measuring = None
    if job.exception() is not None:
        logger.warning("measuring the baselines failed: %r", job.exception())
    elif not replanner.plane.fleet.baselines:
        replanner.plane.fleet.baselines = job.result()


async def replanning(plane: ControlPlane) -> AsyncIterator[None]:
    """Background work (``running``): the replanner and its loop."""
    replanner = Replanner(plane)
    plane.replanner = replanner
    if plane.fleet.adapters and plane.role.leading:  # warms the planning process too
        replanner.measuring = planning_process.submit(measure_baselines, replanner.snapshot())
    try:
        async with background(run(replanner), "replanner"):
            yield
    finally:
        planning_process.stop_planning()
