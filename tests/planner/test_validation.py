"""The cluster-twin check (planner/validation.py) and the baselines it and the surrogate
judge (planner/baselines.py)."""

from __future__ import annotations

import math
from concurrent.futures import ProcessPoolExecutor

import pytest

from planner.baselines import first_fit, one_per_adapter
from planner.demand import AdapterDemand
from planner.placer import place_with
from planner.predictor import PlannerConfig, Predictor
from planner.validation import (
    _pack,
    _unpack,
    baselines_in_twin,
    predicted_ok,
    validate,
    workload_for,
)
from twin import get_gpu, get_model, load_profile
from twin.cluster import simulate_cluster
from twin.routing import RoutingPolicy

ADAPTERS = [AdapterDemand(name=f"a{i}", rank=(8, 16, 32)[i % 3], rate=3 * r,
                          input_tokens=300 + 40 * i, output_tokens=80 + 10 * i)
            for i, r in enumerate((4.0, 3.0, 2.0, 1.5, 1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1))]


@pytest.fixture(scope="module")
def predictor(surrogate) -> Predictor:
    return Predictor(surrogate, get_model("llama-3.1-8b"), get_gpu("a100-80gb"),
                     load_profile("roofline-default"), PlannerConfig(search_seconds=0.1))


def test_arrivals_travel_packed_and_come_back_the_same() -> None:
    arrivals, _ = workload_for(ADAPTERS, 20.0, seed=3).generate(8192)
    assert _unpack(*_pack(arrivals)) == arrivals
    assert _unpack(*_pack([])) == []


def test_groups_in_a_pool_give_what_the_whole_plan_gives(predictor: Predictor) -> None:
    """Each group of GPUs simulated alone (in a process pool, with its own adapters and
    arrivals) measures what the plan simulated whole does."""
    plan = place_with(ADAPTERS, predictor)
    assert plan.num_workers >= 2
    with ProcessPoolExecutor(2) as pool:
        grouped = validate(plan, predictor, duration_s=60, map_fn=pool.map)
    workers = plan.assign([f"gpu-{g.index}" for g in plan.gpus]).placement
    whole = simulate_cluster(predictor.model, predictor.gpu, predictor.profile,
                             [g.engine for g in plan.gpus], workers,
                             workload_for(plan.adapters, 60, 0), RoutingPolicy.PLACEMENT)
    assert grouped.measured_tps == pytest.approx([w.throughput_tps for w in whole.workers],
                                                 rel=1e-9)
    assert grouped.ok == (not any(w.starved or w.starved_adapters for w in whole.workers))


def test_one_per_adapter_splits_only_what_one_gpu_cannot_serve(predictor: Predictor) -> None:
    heavy = AdapterDemand(name="heavy", rank=8, rate=200.0)
    light = AdapterDemand(name="light", rank=8, rate=0.5)
    cap = predictor.alone_capacity(heavy)
    plan = one_per_adapter([heavy, light], predictor)
    assert plan.num_workers == math.ceil(200.0 / cap) + 1 > 2
    assert next(g for g in plan.gpus if "light" in g.rates).rates == {"light": 0.5}


def test_baselines_by_the_surrogate_are_what_its_check_accepts(predictor: Predictor) -> None:
    counts, accepted = baselines_in_twin(ADAPTERS, predictor, 60, twin=False)
    assert accepted == {"one_per_adapter": True, "round_robin": True, "first_fit": True}
    assert counts["one_per_adapter"] == len(ADAPTERS)
    # first-fit by memory alone would put every adapter on one GPU; the check adds GPUs
    # until it accepts, and accepts none fewer.
    assert first_fit(ADAPTERS, predictor).num_workers == 1
    n = counts["first_fit"]
    assert predicted_ok(first_fit(ADAPTERS, predictor, gpus=n), predictor)
    assert n == 1 or not predicted_ok(first_fit(ADAPTERS, predictor, gpus=n - 1), predictor)
    assert place_with(ADAPTERS, predictor).num_gpus <= min(counts.values())


def test_an_adapter_too_big_for_a_gpu_fails_the_unsplit_baselines(predictor) -> None:
    adapters = [*ADAPTERS, AdapterDemand(name="heavy", rank=8, rate=200.0)]
    counts, accepted = baselines_in_twin(adapters, predictor, 60, twin=False)
    assert accepted == {"one_per_adapter": True, "round_robin": False, "first_fit": False}
    assert counts["round_robin"] == counts["first_fit"] == len(adapters)
    assert counts["one_per_adapter"] > len(adapters)
