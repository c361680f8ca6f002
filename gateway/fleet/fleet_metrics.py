"""The fleet's series, read from the fleet at scrape time: worker states, GPUs running, planned
and of each baseline, and the GPU-seconds saved against each baseline.

- ``lorafleet_worker_state{worker, state}``: kube-state-metrics style, every state of
  ``WorkerPhase`` is present for each worker and exactly one is 1. A worker that leaves the
  fleet (discovery lists it no more) has no series: a scale-down leaves nothing at 0 or 1
  behind for an alert to read.
- ``lorafleet_gpu_seconds_saved_total{policy}``: ``SavingsMeter``, the integral over time of
  ``baseline - running`` GPUs, clamped at 0 (a fleet that runs more GPUs than a baseline
  saves nothing against it, and a counter never decreases).

Examples
--------
>>> meter = SavingsMeter(("one_per_adapter",))
>>> meter.tick(0.0, running=2, baselines={"one_per_adapter": 8})
>>> meter.tick(1.5, running=5, baselines={"one_per_adapter": 8})  # 6 GPUs saved for 1.5 s
>>> meter.tick(4.0, running=5, baselines={"one_per_adapter": 4})  # 3 GPUs for 2.5 s
>>> meter.tick(9.0, running=5, baselines={"one_per_adapter": 4})  # 5 > 4: nothing saved
>>> meter.saved()
{'one_per_adapter': 16.5}
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from gateway.fleet.registry import Fleet
from gateway.fleet.worker_state import WorkerPhase

__all__ = ["FleetCollector", "SavingsMeter"]

# the naive placements the fleet's GPUs are compared with (``lorafleet_gpus_baseline``)
BASELINE_POLICIES = ("one_per_adapter", "round_robin")


class SavingsMeter:
    """GPU-seconds saved against each baseline policy: between two ticks, the GPUs of the
    earlier tick (running and each baseline) held over the time between them, so ticks at
    any interval, regular or not, add up to the same integral of a fleet that changes only
    at ticks. A policy without a baseline yet saves nothing; a clock that goes back adds
    nothing."""

    def __init__(self, policies: Sequence[str]) -> None:
        self.policies = tuple(policies)
        self._saved = dict.fromkeys(self.policies, 0.0)
        self._last: tuple[float, int, dict[str, int]] | None = None

    def tick(self, now: float, *, running: int, baselines: Mapping[str, int]) -> None:
        """Add the time since the last tick, then hold these GPU counts until the next."""
        if self._last is not None:
            then, held_running, held = self._last
            if now < then:
                return  # keep the later point: the interval is counted once it is passed
            for policy, gpus in held.items():
                self._saved[policy] += max(0, gpus - held_running) * (now - then)
        self._last = (now, running, {p: baselines[p] for p in self.policies if p in baselines})

    def saved(self) -> dict[str, float]:
        """GPU-seconds saved so far, by policy."""
        return dict(self._saved)


class FleetCollector(Collector):
    """The fleet's series at scrape time; ``clock`` is the meter's (monotonic seconds)."""

    def __init__(self, fleet: Fleet, clock: Callable[[], float] = time.monotonic) -> None:
        self.fleet = fleet
        self.clock = clock
        self.meter = SavingsMeter(BASELINE_POLICIES)
        self.tick()

    def tick(self) -> None:
        """Sample the fleet's GPUs into the meter (every scrape, and the replanner's loop
        each second, so the integral does not depend on how often Prometheus scrapes)."""
        self.meter.tick(self.clock(), running=self.fleet.gpus_running,
                        baselines=self.fleet.gpus_baseline())

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        fleet = self.fleet
        self.tick()
        state = GaugeMetricFamily(
            "lorafleet_worker_state", "The worker's state: 1 for its current one, 0 for the "
            "others. down: fails its health checks while the gateway expects it to serve; a "
            "worker drained by an operator, or retired (a plan left it empty while healthy), "
            "is never down. Workers that left the fleet have no series.",
            labels=["worker", "state"])
        outstanding = GaugeMetricFamily(
            "lorafleet_worker_outstanding", "Requests the gateway has in flight on the worker.",
            labels=["worker"])
        for i, worker in enumerate(fleet.workers):
            phase = fleet.phase(i)
            if phase is None:
                continue  # gone: it has left the fleet
            name = worker.endpoint.name
            for p in WorkerPhase:
                state.add_metric([name, p.value], 1.0 if p is phase else 0.0)
            outstanding.add_metric([name], fleet.outstanding(i))
        yield state
        yield outstanding
        yield GaugeMetricFamily(
            "lorafleet_gpus_running", "GPUs of the workers that answer health checks, planned "
            "on or not (workers times tensor_parallel_size): what the fleet costs now.",
            value=fleet.gpus_running)
        yield GaugeMetricFamily(
            "lorafleet_gpus_planned", "GPUs the last plan asked for (workers times "
            "tensor_parallel_size; more than run while the actuator adds workers).",
            value=fleet.planned_gpus or 0)
        baseline = GaugeMetricFamily(
            "lorafleet_gpus_baseline", "GPUs a naive placement of the last plan's demands "
            "needs: one_per_adapter (each adapter alone, replicas where its load needs them; "
            "one GPU per registered adapter until the planner has measured it) and "
            "round_robin (at the fewest GPUs the planner's check accepts; present once "
            "measured, absent while an adapter needs more than a GPU, which round-robin "
            "cannot give it).", labels=["policy"])
        for policy, gpus in sorted(fleet.gpus_baseline().items()):
            baseline.add_metric([policy], gpus)
        yield baseline
        saved = CounterMetricFamily(
            "lorafleet_gpu_seconds_saved", "GPU-seconds saved against each baseline: the "
            "integral over time of baseline minus running GPUs, where a negative difference "
            "(more GPUs running than the baseline) counts as 0.", labels=["policy"])
        for policy, seconds in self.meter.saved().items():
            saved.add_metric([policy], seconds)
        yield saved
