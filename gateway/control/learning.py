"""Learning from live traffic, once per window: each worker's observed inter-token latency
against the profile's step time (``planner.online_latency.OnlineLatency``) sets the capacity
scale the next plan assumes, and the windows go to the planning process to train the
surrogate's ``LatencyModel`` there (never on the serving loop).

Below saturation throughput equals the offered load whatever a GPU's capacity, so it teaches
nothing; latency shows how fast the workers really are at any load (PAPER.md, the planner
issue). The running batch and the engine's inter-token latency come from scraping each
worker's ``/metrics`` (``scrape.WorkerGauges``; the gateway's own timings of streamed requests
stand in when a worker's histogram has too few tokens); lengths and rates from the gateway's
own accounting (``observer.Observer``).

``lorafleet_surrogate_error`` is prequential, as River evaluates a model learning online: each
window's inter-token latency is first predicted at the speed the plan assumed for its worker
(the profile's step time over that speed), then learned from; the gauge is the median
relative error over the window's workers. On a fleet that differs from the profile it starts
at the difference and falls as the speeds are learned.
"""

from __future__ import annotations

import asyncio
import logging
import math
import statistics
import time
from collections import deque
from dataclasses import replace
from typing import TYPE_CHECKING

import aiohttp

from gateway.fleet.scrape import WorkerGauges, read_gauges
from planner import OnlineLatency, Target, WindowObservation, WorkerWindow

if TYPE_CHECKING:
    from gateway.control.plane import ControlPlane

__all__ = ["Learner"]

logger = logging.getLogger(__name__)

SCRAPE_INTERVAL_S = 2.0


class Learner:
    """Scrapes the workers and turns each window into ``WorkerWindow`` observations."""

    def __init__(self, plane: ControlPlane) -> None:
        cfg = plane.cfg
        self.plane = plane
        self.gauges = WorkerGauges()
        target = Target.resolve(cfg.model, cfg.gpu, cfg.profile)
        self.online = OnlineLatency(target.model, target.gpu, target.profile)
        self.pending: list[WorkerWindow] = []  # for the planning process's LatencyModel
        self.observed: deque[WindowObservation] = deque(maxlen=1000)  # newest last
        # (time, the window's relative error of the inter-token latency predicted at the
        # speeds the plan assumed before it): ``lorafleet_surrogate_error``, prequential
        self.errors: deque[tuple[float, float]] = deque(maxlen=1000)
        self.last_window = time.monotonic()
        # Speeds given instead of learned (the fleet bench's oracle: each emulated worker's
        # true 1 / slowdown), by worker name.
        self.known: dict[str, float] = {}

    @property
    def capacity_scale(self) -> float:
        """The fleet's: every worker's windows pooled (the prior of a worker without its
        own), or the mean of the known speeds."""
        if self.known:
            return sum(self.known.values()) / len(self.known)
        return self.online.capacity_scale()

    def speed(self, worker: str) -> float | None:
        """``worker``'s own capacity scale, once it has enough windows (else None)."""
        if self.known:
            return self.known.get(worker)
        return self.online.speed(worker)

    async def scrape(self) -> None:
        """One scrape of every healthy worker's gauges."""
        fleet, session = self.plane.fleet, self.plane.session
        timeout = aiohttp.ClientTimeout(total=SCRAPE_INTERVAL_S)

        async def one(name: str, url: str) -> None:
            try:
                async with session.get(f"{url}/metrics", timeout=timeout) as resp:
                    if resp.status == 200:
                        self.gauges.add(name, read_gauges(await resp.text()))
            except (aiohttp.ClientError, TimeoutError):
                pass  # health checks judge the worker; a missed scrape is just a gap

        await asyncio.gather(*(one(w.endpoint.name, w.endpoint.url)
                               for w in fleet.workers if w.up))

    def window(self) -> list[WorkerWindow]:
        """Close a window: observe each worker that served streamed requests in it."""
        cfg, fleet, observer = self.plane.cfg, self.plane.fleet, self.plane.observer
        now = time.monotonic()
        since, self.last_window = self.last_window, now
        ranks = {n: a.demand.rank for n, a in fleet.adapters.items()}
        windows: list[WorkerWindow] = []
        errors: list[float] = []
        if observer.span(now) < cfg.observe_window_s:
            return windows  # warming up: the first burst's prefills are not steady state
        for w in fleet.workers:
            name = w.endpoint.name
            seen = observer.worker_window(name, now=now, since=since, time_scale=cfg.time_scale)
            running = self.gauges.mean(name, "running", since)
            if seen is None or running is None or w.engine is None:
                continue
            itl, intervals = seen.itl_s, seen.intervals
            engine_itl = self.gauges.itl(name, since)
            if engine_itl is not None and engine_itl[1] >= self.online.min_tokens:
                # the engine's own figure: free of the gateway's and the network's lag
                itl, intervals = engine_itl[0] * cfg.time_scale, engine_itl[1]
            demands = [replace(d, rank=ranks.get(d.name, 0)) for d in seen.demands]
            window = WorkerWindow(worker=name, engine=w.engine, adapters=tuple(demands),
                                  itl_s=itl, ttft_p50_s=seen.ttft_p50_s, running=running,
                                  tokens=intervals,
                                  waiting=self.gauges.mean(name, "waiting", since) or 0.0,
                                  dispatched=seen.dispatched, completed=seen.completed,
                                  speed=self.speed(name))
            assumed = window.speed or self.capacity_scale  # before this window
            observation = self.online.observe(window)
            self.observed.append(observation)
            windows.append(window)
            if observation.ratio is not None:  # the prediction's error, then the learning
                errors.append(abs(math.log(observation.ratio * assumed)))
        self.pending += windows
        if errors:
            error = math.expm1(statistics.median(errors))
            self.errors.append((now, error))
            self.plane.metrics.surrogate_error.set(error)
        return windows

    def take(self) -> tuple[WorkerWindow, ...]:
        """The windows not yet sent to the planning process."""
        out, self.pending = tuple(self.pending), []
        return out
