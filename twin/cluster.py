"""The cluster twin: N workers, a placement and a routing policy, to validate a whole plan.

Each worker runs its own ``EngineCore`` (with its own engine options) under one SimPy clock;
one arrival process routes every request at its arrival time with ``twin.routing.Router``,
the code the gateway routes with. The router only knows what a gateway knows: a request is
outstanding from dispatch until its response ends, so a worker's finished requests are
released to the router at their finish times, not when the worker's run computed them.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy

from twin.events import EngineEvent, EventKind
from twin.profile import CalibrationProfile
from twin.request import Request
from twin.results import SimulationResult, summarize
from twin.routing import Placement, Router, RoutingPolicy
from twin.simulation import ArrivalSource, Worker, build_engine
from twin.specs import EngineConfig, GpuSpec, ModelSpec
from twin.workload import Arrival, Workload

__all__ = ["ClusterResult", "simulate_cluster"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ClusterResult:
    """Per-worker results of one plan, and the verdict over all of them."""

    workers: list[SimulationResult]
    worker_names: list[str]
    starved: bool
    starved_workers: list[str]
    starved_adapters: list[str]
    throughput_tps: float
    ideal_tps: float
    requests: int
    finished: int
    ttft_p99_s: float
    wall_seconds: float

    @property
    def gpus(self) -> int:
        return len(self.workers)

    @classmethod
    def of_workers(cls, workers: list[SimulationResult], names: list[str], *,
                   ttft_p99_s: float, wall_seconds: float) -> ClusterResult:
        """The verdict over ``workers`` (named ``names``): starved if any worker or adapter
        is, the rates and counts summed."""
        return cls(
            workers=workers, worker_names=names,
            starved=any(r.starved or r.starved_adapters for r in workers),
            starved_workers=[n for n, r in zip(names, workers, strict=True) if r.starved],
            starved_adapters=sorted({a for r in workers for a in r.starved_adapters}),
            throughput_tps=sum(r.throughput_tps for r in workers),
            ideal_tps=sum(r.ideal_tps for r in workers),
            requests=sum(r.requests for r in workers),
            finished=sum(r.finished for r in workers),
            ttft_p99_s=ttft_p99_s, wall_seconds=wall_seconds)


class _ClusterWorker(Worker):
    """A worker that tells the router when its requests finish (at their finish times)."""

    def __init__(self, env: simpy.Environment, index: int, releases: list[tuple[int, int, int]],
                 **kwargs: Any) -> None:
        super().__init__(env, **kwargs)
        self.index = index
        self._releases = releases

    def handle_events(self, events: list[EngineEvent]) -> None:
        for event in events:
            if event.kind is EventKind.FINISHED:
                heapq.heappush(self._releases, (event.time_ns, self.index, 0))


def simulate_cluster(model: ModelSpec, gpu: GpuSpec, profile: CalibrationProfile,
                     engines: Sequence[EngineConfig], placement: Placement, workload: Workload,
                     policy: RoutingPolicy = RoutingPolicy.PLACEMENT,
                     arrivals: Sequence[Arrival] | None = None) -> ClusterResult:
    """Run ``workload`` on one worker per entry of ``placement`` for ``duration_s``; with
    ``arrivals`` given, those instead of the workload's own (for a part of a larger run)."""
    if len(engines) != len(placement.workers):
        raise ValueError("one engine config per placed worker")
    started = time.perf_counter()
    ranks = {a.name: a.rank for a in workload.adapters}
    max_len = min(e.max_model_len for e in engines)
    clipped = 0
    if arrivals is None:
        arrivals, clipped = workload.generate(max_len)
    end_ns = round(workload.duration_s * 1e9)
    env = simpy.Environment()
    router = Router(placement, policy)
    releases: list[tuple[int, int, int]] = []
    workers: list[_ClusterWorker] = []

    def dispatch(request: Request) -> None:
        while releases and releases[0][0] <= env.now:
            router.done(heapq.heappop(releases)[1])
        workers[router.route(request.adapter)].submit(request)

    source = ArrivalSource(env, arrivals, dispatch, round(profile.request_overhead_s * 1e9))
    plans = []
    for i, cfg in enumerate(engines):
        engine, plan = build_engine(model, gpu, cfg, profile, ranks)
        plans.append(plan)
        workers.append(_ClusterWorker(env, i, releases, engine=engine,
                                      next_arrival_ns=source.peek_ns, end_ns=end_ns))
    env.process(source.run())
    for w in workers:
        env.process(w.run())
    env.run(until=end_ns)
    wall = time.perf_counter() - started
    results = []
    for w, plan in zip(workers, plans, strict=True):
        e = w.engine
        e.settle()  # requests still decoding count the tokens they have produced
        itl, weight = e.itl_arrays()
        results.append(summarize(
            w.requests, duration_s=workload.duration_s, end_ns=max(end_ns, e.now_ns),
            itl_ns=itl, itl_weight=weight, preemptions=e.num_preemptions,
            lora_loads=e.lora_cache.num_loads, kv_blocks=plan.num_blocks,
            kv_cache_tokens=plan.kv_cache_tokens, steps=e.g, wall_seconds=wall,
            clipped_lengths=clipped))
    names = [w.name for w in placement.workers]
    every = [r for w in workers for r in w.requests]
    ttft = [((r.first_token_ns or end_ns) - r.arrival_ns) / 1e9 for r in every]
    return ClusterResult.of_workers(
        results, names, ttft_p99_s=float(np.percentile(ttft, 99)) if ttft else float("nan"),
        wall_seconds=wall)
