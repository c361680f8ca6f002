"""The fleet's series: one state per worker that only pages for a worker the gateway expects to
serve, GPUs running against the baselines, the GPU-seconds saved as an integral that holds for
any tick interval, and latency buckets from 50 ms to 60 s."""

from __future__ import annotations

import itertools

import pytest
from prometheus_client import CollectorRegistry

from gateway.config import AdapterEntry, WorkerEndpoint
from gateway.fleet.fleet_metrics import FleetCollector, SavingsMeter
from gateway.fleet.metrics import LATENCY_BUCKETS, GatewayMetrics
from gateway.fleet.registry import Fleet, WorkerStatus
from planner.demand import AdapterDemand
from twin.routing import Placement, RoutingPolicy, WorkerPlacement

STATES = ("up", "draining", "retired", "down")


def fleet_of(n: int, *, tp: int = 1) -> Fleet:
    fleet = Fleet("base", [WorkerEndpoint(f"w{i}", f"http://127.0.0.1:{i + 1}") for i in range(n)],
                  {}, RoutingPolicy.PLACEMENT, tensor_parallel_size=tp)
    plan(fleet, *([f"a{i}"] for i in range(n)))
    return fleet


def plan(fleet: Fleet, *held: list[str]) -> None:
    """Install a plan: worker ``i`` routed ``held[i]`` (a re-plan's migration does this)."""
    fleet.set_plan(Placement(tuple(WorkerPlacement(name=f"w{i}", shares=dict.fromkeys(h, 1.0))
                                   for i, h in enumerate(held))))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def scrape(registry: CollectorRegistry) -> dict[str, dict[tuple[str, ...], float]]:
    """Series by name, keyed by their label values (in label-name order)."""
    out: dict[str, dict[tuple[str, ...], float]] = {}
    for family in registry.collect():
        for sample in family.samples:
            labels = tuple(v for _, v in sorted(sample.labels.items()))
            out.setdefault(sample.name, {})[labels] = sample.value
    return out


def states(registry: CollectorRegistry) -> dict[str, str]:
    """Worker -> its state; asserts kube-state-metrics style: every state present, one at 1."""
    series = scrape(registry).get("lorafleet_worker_state", {})
    out: dict[str, str] = {}
    for worker in sorted({w for _, w in series}):
        values = {state: series[(state, worker)] for state in STATES}
        assert sorted(values.values()) == [0, 0, 0, 1], (worker, values)
        out[worker] = next(s for s, v in values.items() if v == 1)
    return out


def registry_of(fleet: Fleet, clock: Clock | None = None) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(FleetCollector(fleet, clock or Clock()))
    return registry


def test_a_drained_worker_is_draining_never_down() -> None:
    fleet = fleet_of(3)
    registry = registry_of(fleet)
    assert states(registry) == {"w0": "up", "w1": "up", "w2": "up"}
    fleet.draining.add(0)  # `lorafleet admin drain w0`: routed as before until moved
    assert states(registry)["w0"] == "draining"
    plan(fleet, [], ["a0", "a1"], ["a2"])  # the drain's re-plan moves its adapter
    fleet.set_status(0, WorkerStatus.DRAINING)
    assert states(registry)["w0"] == "draining"
    fleet.set_status(0, WorkerStatus.DOWN)  # the operator stops it: still not down
    assert states(registry) == {"w0": "draining", "w1": "up", "w2": "up"}
    fleet.undrain(0)  # back in service, empty until a plan places on it: retired
    fleet.set_status(0, WorkerStatus.UP)
    assert states(registry)["w0"] == "retired"
    plan(fleet, ["a0"], ["a1"], ["a2"])
    assert states(registry)["w0"] == "up"


def test_a_retired_worker_stopped_by_a_scale_down_is_retired_then_has_no_series() -> None:
    fleet = fleet_of(3)
    registry = registry_of(fleet)
    plan(fleet, ["a0", "a2"], ["a1"], [])  # consolidation empties w2 while it is healthy
    assert states(registry) == {"w0": "up", "w1": "up", "w2": "retired"}
    fleet.set_status(2, WorkerStatus.DOWN)  # the StatefulSet scale-down stops its pod
    assert states(registry)["w2"] == "retired"
    fleet.set_gone(2)  # discovery lists it no more: it left the fleet
    assert states(registry) == {"w0": "up", "w1": "up"}
    series = scrape(registry)
    assert all("w2" not in labels for labels in series["lorafleet_worker_outstanding"])
    fleet.rejoin(2, WorkerEndpoint("w2", "http://127.0.0.1:9"))  # listed again: back
    assert "w2" in states(registry)


def test_a_crashed_worker_is_down_until_it_returns() -> None:
    fleet = fleet_of(2)
    registry = registry_of(fleet)
    fleet.set_status(1, WorkerStatus.DOWN)  # crashed while serving
    assert states(registry) == {"w0": "up", "w1": "down"}
    plan(fleet, ["a0", "a1"], [])  # the worker_down re-plan moves its adapter away: still down
    assert states(registry)["w1"] == "down"
    fleet.set_status(1, WorkerStatus.UP)
    assert states(registry)["w1"] == "up"


def test_gpus_running_count_every_healthy_worker_planned_or_not() -> None:
    fleet = fleet_of(4, tp=2)
    fleet.planned_gpus = 4
    registry = registry_of(fleet)
    plan(fleet, ["a0", "a1", "a2", "a3"], [], [], [])  # three retired, not yet scaled away
    fleet.set_status(3, WorkerStatus.DOWN)
    fleet.draining.add(2)
    fleet.set_status(2, WorkerStatus.DRAINING)
    series = scrape(registry)
    assert series["lorafleet_gpus_running"][()] == 3 * 2  # w0, w1 (retired), w2 (draining)
    assert series["lorafleet_gpus_planned"][()] == 4


def test_gpu_seconds_saved_integrate_baseline_minus_running_at_any_interval() -> None:
    clock = Clock()
    fleet = fleet_of(4)
    fleet.baselines = {"one_per_adapter": 10, "round_robin": 3}
    collector = FleetCollector(fleet, clock)
    registry = CollectorRegistry()
    registry.register(collector)

    def saved() -> dict[str, float]:
        series = scrape(registry)["lorafleet_gpu_seconds_saved_total"]
        return {policy: v for (policy,), v in series.items()}

    assert saved() == {"one_per_adapter": 0.0, "round_robin": 0.0}
    clock.now = 2.5  # an irregular scrape: 4 running for 2.5 s
    assert saved() == {"one_per_adapter": 6 * 2.5, "round_robin": 0.0}  # 3 - 4 < 0: nothing
    fleet.set_status(3, WorkerStatus.DOWN)
    fleet.set_status(2, WorkerStatus.DOWN)  # 2 running from here on
    clock.now = 3.0
    collector.tick()  # the replanner's loop samples between scrapes
    clock.now = 10.0
    # each tick holds what it saw until the next: 4 running until 3.0, then 2
    assert saved() == pytest.approx({"one_per_adapter": 15 + 6 * 0.5 + 8 * 7,
                                     "round_robin": 0 + 1 * 7})
    before = saved()
    fleet.baselines = {"one_per_adapter": 1, "round_robin": 1}  # now below running
    clock.now = 11.0
    collector.tick()
    clock.now = 50.0
    after = saved()
    assert after["one_per_adapter"] >= before["one_per_adapter"]  # never decreases
    assert after["round_robin"] == pytest.approx(before["round_robin"] + 1.0)  # 3 - 2, 1 s
    clock.now = 40.0  # a clock that goes back adds nothing, takes nothing
    assert saved() == after


@pytest.mark.parametrize("ticks", [(10.0,), (1.0, 2.0, 2.5, 7.0, 10.0), (0.1, 9.9, 10.0)])
def test_the_integral_does_not_depend_on_how_often_it_is_sampled(
        ticks: tuple[float, ...]) -> None:
    meter = SavingsMeter(("one_per_adapter",))
    meter.tick(0.0, running=3, baselines={"one_per_adapter": 8})
    for t in ticks:
        meter.tick(t, running=3, baselines={"one_per_adapter": 8})
    assert meter.saved() == {"one_per_adapter": pytest.approx(50.0)}


def test_a_policy_without_a_baseline_yet_saves_nothing() -> None:
    meter = SavingsMeter(("one_per_adapter", "round_robin"))
    meter.tick(0.0, running=1, baselines={"one_per_adapter": 4})
    meter.tick(5.0, running=1, baselines={"one_per_adapter": 4, "round_robin": 2})
    meter.tick(6.0, running=1, baselines={"one_per_adapter": 4, "round_robin": 2})
    assert meter.saved() == {"one_per_adapter": 18.0, "round_robin": 1.0}


def test_the_baselines_are_one_per_registered_adapter_until_measured() -> None:
    adapters = {n: AdapterEntry(demand=AdapterDemand(name=n, rank=8, rate=1.0), path=f"/{n}")
                for n in ("a", "b", "c")}
    fleet = Fleet("base", [WorkerEndpoint("w0", "http://127.0.0.1:1")], adapters,
                  RoutingPolicy.PLACEMENT, tensor_parallel_size=2)
    registry = registry_of(fleet)
    assert scrape(registry)["lorafleet_gpus_baseline"] == {("one_per_adapter",): 6}
    fleet.baselines = {"one_per_adapter": 8, "round_robin": 4}  # the planning process's
    assert scrape(registry)["lorafleet_gpus_baseline"] == {("one_per_adapter",): 8,
                                                           ("round_robin",): 4}


def test_latency_buckets_resolve_50_ms_to_60_s() -> None:
    assert LATENCY_BUCKETS[0] == 0.05 and LATENCY_BUCKETS[-1] == 60.0
    assert 10.0 in LATENCY_BUCKETS  # the starvation alert's bound is a bucket edge
    for low, high in itertools.pairwise(LATENCY_BUCKETS):
        assert high / low <= (2.5 if low < 0.5 else 1.7), (low, high)  # within a step
    metrics = GatewayMetrics()
    for seconds in (0.07, 0.6, 4.0, 12.0, 42.0):
        metrics.first_token("a", seconds)
        metrics.observe("a", 200, seconds)
    for name in ("lorafleet_ttft_seconds_bucket", "lorafleet_e2e_seconds_bucket"):
        buckets = {le: v for (_, le), v in scrape(metrics.registry)[name].items()}
        counts = [buckets[le] for le in ("0.05", "0.1", "0.75", "5.0", "15.0", "45.0", "60.0")]
        assert counts == [0, 1, 2, 3, 4, 5, 5], name  # each value in a bucket of its own
