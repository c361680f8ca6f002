"""Routing policies (shared by the gateway) and the cluster twin."""

from __future__ import annotations

from collections import Counter

import pytest

from twin import AdapterLoad, EngineConfig, Workload, get_gpu, get_model, load_profile
from twin.cluster import simulate_cluster
from twin.routing import Placement, Router, RoutingPolicy, WorkerPlacement


def plan(*shares: dict[str, float]) -> Placement:
    return Placement(tuple(WorkerPlacement(name=f"w{i}", shares=s)
                           for i, s in enumerate(shares)))


def test_placement_policy_follows_rate_shares_exactly() -> None:
    router = Router(plan({"a": 0.6}, {"a": 0.3}, {"a": 0.1}), RoutingPolicy.PLACEMENT)
    counts = Counter(router.route("a") for _ in range(1000))
    assert counts == {0: 600, 1: 300, 2: 100}


def test_least_outstanding_breaks_ties_and_done_releases() -> None:
    router = Router(plan({"a": 1.0}, {"a": 1.0}), RoutingPolicy.LEAST_OUTSTANDING)
    assert [router.route("a") for _ in range(4)] == [0, 1, 0, 1]
    router.done(1)
    router.done(1)
    assert router.route("a") == 1


def test_unplaced_adapter_is_a_key_error_except_for_prefer_loaded() -> None:
    with pytest.raises(KeyError, match="not placed"):
        Router(plan({"a": 1.0}), RoutingPolicy.PLACEMENT).route("zzz")
    router = Router(plan({"a": 1.0}, {}), RoutingPolicy.PREFER_LOADED)
    router.route("a")
    assert router.route("zzz") == 1  # nobody holds it: the least loaded worker


def test_round_robin_ignores_placement_and_base_goes_anywhere() -> None:
    router = Router(plan({"a": 1.0}, {"b": 1.0}), RoutingPolicy.ROUND_ROBIN)
    assert [router.route("a") for _ in range(4)] == [0, 1, 0, 1]
    base = Router(plan({"a": 1.0}, {"b": 1.0}), RoutingPolicy.PLACEMENT)
    assert sorted(base.route(None) for _ in range(2)) == [0, 1]


def run(workers: int, policy: RoutingPolicy, rate: float = 1.0):
    ads = tuple(AdapterLoad(name=f"a{i}", rank=8, rate=rate) for i in range(16))
    shares: list[dict[str, float]] = [{} for _ in range(workers)]
    for i, a in enumerate(ads):
        shares[i % workers][a.name] = 1.0
    engines = [EngineConfig(max_loras=8, max_cpu_loras=16, max_model_len=8192)] * workers
    return simulate_cluster(get_model("llama-3.1-8b"), get_gpu("a100-80gb"),
                            load_profile("roofline-default"), engines, plan(*shares),
                            Workload(adapters=ads, duration_s=90, seed=0), policy)


def test_one_gpu_starves_where_two_do_not() -> None:
    one, two = run(1, RoutingPolicy.PLACEMENT), run(2, RoutingPolicy.PLACEMENT)
    assert one.starved and not two.starved
    assert one.gpus == 1 and two.gpus == 2
    assert one.requests == two.requests  # same workload, routed differently
    assert two.throughput_tps > one.throughput_tps


def test_round_robin_thrashes_loras_where_placement_does_not() -> None:
    placed, rr = run(2, RoutingPolicy.PLACEMENT), run(2, RoutingPolicy.ROUND_ROBIN)
    loads = lambda r: sum(w.lora_loads for w in r.workers)  # noqa: E731
    assert loads(rr) > 3 * loads(placed)
    assert rr.ttft_p99_s > placed.ttft_p99_s


def test_engines_must_match_workers() -> None:
    with pytest.raises(ValueError, match="one engine config per placed worker"):
        simulate_cluster(get_model("llama-3.1-8b"), get_gpu("a100-80gb"),
                         load_profile("roofline-default"), [], plan({"a": 1.0}),
                         Workload(adapters=(), duration_s=1), RoutingPolicy.PLACEMENT)


def test_route_among_picks_the_least_loaded_candidate_and_counts_it() -> None:
    router = Router(plan({"a": 1.0}, {"a": 1.0}, {"a": 1.0}), RoutingPolicy.PLACEMENT)
    router.route("a")  # worker 0
    assert router.route_among([0, 1]) == 1
    assert router.outstanding == [1, 1, 0]
    assert [i for i, _ in router.holders(None)] == [0, 1, 2]  # base model: anywhere
