"""The improvement search: fewer GPUs than the greedy fill, every GPU still feasible, every
adapter's rate still placed, and nothing done without a budget."""

from __future__ import annotations

import time

import pytest

from bench.placement import adapters as zipf  # Zipf rates, ranks 8-32, mixed lengths
from planner.demand import AdapterDemand
from planner.improve import improve
from planner.placer import GpuPlan, PlannerConfig, Predictor, merged, place


def feasible(plan, adapters, predictor) -> bool:
    by_name = {a.name: a for a in adapters}
    return all(predictor.best(merged([
        AdapterDemand(name=n, rank=by_name[n].rank, rate=r,
                      input_tokens=by_name[n].input_tokens,
                      output_tokens=by_name[n].output_tokens)
        for n, r in g.rates.items()])).feasible for g in plan.gpus)


def test_search_empties_gpus_the_greedy_fill_left_part_full(surrogate, specs) -> None:
    model, gpu, profile = specs
    adapters = zipf(150, 90.0)
    predictor = Predictor(surrogate, model, gpu, profile, PlannerConfig())
    greedy = place(adapters, model, gpu, profile, surrogate, PlannerConfig(search_seconds=0))
    # a generous budget: the search ends when a pass empties nothing, long before it
    searched = place(adapters, model, gpu, profile, surrogate,
                     PlannerConfig(search_seconds=120))
    assert searched.num_gpus < greedy.num_gpus
    assert feasible(searched, adapters, predictor)
    assert [g.index for g in searched.gpus] == list(range(searched.num_gpus))
    placed: dict[str, float] = {}
    for g in searched.gpus:
        for name, rate in g.rates.items():
            placed[name] = placed.get(name, 0.0) + rate
    assert placed == pytest.approx({a.name: a.rate for a in adapters}, rel=1e-9)


def test_an_adapter_no_gpu_takes_whole_is_split_over_two(surrogate, specs) -> None:
    # Three GPUs each hold a replica of one hot adapter at half to 0.55 of what a GPU serves
    # of it: neither of the fuller two takes the emptiest one's whole, both take half of it.
    model, gpu, profile = specs
    predictor = Predictor(surrogate, model, gpu, profile, PlannerConfig())
    hot = AdapterDemand(name="hot", rank=16, rate=1.0, input_tokens=512, output_tokens=128)
    cap = predictor.alone_capacity(hot)
    gpus = []
    for i, share in enumerate((0.5, 0.55, 0.55)):
        verdict = predictor.best([AdapterDemand(name="hot", rank=16, rate=share * cap,
                                                input_tokens=512, output_tokens=128)])
        assert verdict.feasible and verdict.engine is not None
        gpus.append(GpuPlan.judged(i, verdict.engine, {"hot": share * cap}, verdict))
    out = improve(gpus, {"hot": hot}, predictor, time.perf_counter() + 60)
    assert len(out) == 2
    assert sum(g.rates["hot"] for g in out) == pytest.approx(1.6 * cap, rel=1e-9)
    assert all(g.rates["hot"] <= cap for g in out)


def test_no_budget_no_search(surrogate, specs) -> None:
    model, gpu, profile = specs
    adapters = zipf(60, 36.0, seed=3)
    greedy = place(adapters, model, gpu, profile, surrogate, PlannerConfig(search_seconds=0))
    predictor = Predictor(surrogate, model, gpu, profile, PlannerConfig())
    by_name = {a.name: a for a in adapters}
    assert improve(list(greedy.gpus), by_name, predictor, time.perf_counter() - 1) == \
        greedy.gpus
    assert improve([], by_name, predictor, time.perf_counter() + 10) == []


def test_search_budget_is_checked(surrogate, specs) -> None:
    with pytest.raises(ValueError, match="search_seconds"):
        PlannerConfig(search_seconds=float("nan"))
    with pytest.raises(ValueError, match="search_seconds"):
        PlannerConfig(search_seconds=-1)
