"""The packing lower bound: never above the exact optimum of the placer's model, tighter than
the simple bound where slots and ranks cost, and the engine-time costs it rests on."""

from __future__ import annotations

import pytest

from bench.placement_bound import mix  # 9 adapters of ranks 0-64, mixed lengths
from planner.bound import configurations, lower_bound, lower_bound_simple
from planner.demand import AdapterDemand
from planner.engine_time import CEILING, engine_load, request_seconds
from planner.optimum import exact_min_gpus
from planner.placer import PlannerConfig, Predictor, place
from twin import get_gpu, get_model, load_profile, plan_memory
from twin.specs import EngineConfig


@pytest.mark.parametrize(("seed", "mean_rate"), [(0, 1.0), (1, 2.0), (2, 2.5), (3, 3.5),
                                                 (4, 1.5), (5, 3.0)])
def test_bound_never_exceeds_the_exact_optimum(surrogate, specs, seed: int,
                                               mean_rate: float) -> None:
    model, gpu, profile = specs
    adapters = mix(9, mean_rate, seed)
    predictor = Predictor(surrogate, model, gpu, profile, PlannerConfig())
    exact = exact_min_gpus(adapters, predictor)
    assert exact is not None  # no adapter here needs replicas
    bound = lower_bound(adapters, predictor)
    assert bound.optimal
    assert bound.relaxed <= bound.gpus <= exact
    assert bound.gpus <= place(adapters, model, gpu, profile, surrogate).num_gpus
    # within one GPU of the optimum on every one of these
    assert exact - bound.gpus <= 1


def test_bound_pays_for_slots_the_simple_one_ignores(surrogate, specs) -> None:
    # Many light rank-64 adapters: alone, each costs a sliver of a GPU; together they need
    # dozens of slots at rank 64, whose overhead slows every step (planner.engine_time).
    model, gpu, profile = specs
    adapters = [AdapterDemand(name=f"a{i}", rank=64, rate=0.1, input_tokens=1024,
                              output_tokens=256) for i in range(200)]
    predictor = Predictor(surrogate, model, gpu, profile, PlannerConfig())
    simple = lower_bound_simple(adapters, predictor)
    bound = lower_bound(adapters, predictor)
    placed = place(adapters, model, gpu, profile, surrogate).num_gpus
    assert simple < bound.gpus <= placed


def test_configurations_are_the_engines_the_placer_picks(surrogate, specs) -> None:
    model, gpu, profile = specs
    adapters = mix(12, 2.0, 7)
    predictor = Predictor(surrogate, model, gpu, profile, PlannerConfig())
    configs = {(c.max_loras, c.max_lora_rank): c for c in configurations(adapters, predictor)}
    plan = place(adapters, model, gpu, profile, surrogate)
    by_name = {a.name: a for a in adapters}
    for g in plan.gpus:
        c = configs[(g.engine.max_loras, g.engine.max_lora_rank)]
        loras = sum(1 for n in g.rates if by_name[n].rank > 0)
        assert loras >= c.min_distinct or loras == 0
        assert loras <= c.max_loras or not c.slot_per_lora
        assert c.kv_tokens == plan_memory(model, gpu, g.engine, profile.memory).kv_cache_tokens


@pytest.mark.parametrize(("model_name", "gpu_name", "profile_name"), [
    ("llama-3.1-8b", "a100-80gb", "roofline-default"),
    ("llama-3.1-8b", "h100-64gb", "h100-64gb-llama-3.1-8b"),
    ("tiny-llama", "a100-80gb", "cpu-tiny-llama")])
def test_request_cost_grows_with_slots_rank_and_distinct_adapters(
        model_name: str, gpu_name: str, profile_name: str) -> None:
    # What the bound relies on: the cheapest worker of a configuration is the one with the
    # fewest distinct adapters, and more slots or a higher rank never make a request cheaper.
    model, gpu, profile = get_model(model_name), get_gpu(gpu_name), load_profile(profile_name)
    adapters = [AdapterDemand(name=f"a{i}", rank=16, rate=1.0, input_tokens=i_, output_tokens=o)
                for i, (i_, o) in enumerate([(64, 16), (512, 128), (1536, 384)])]
    costs = {}
    for slots in (1, 4, 16):
        for rank in (8, 16, 64):
            engine = EngineConfig(max_loras=slots, max_lora_rank=rank, max_cpu_loras=slots,
                                  max_model_len=2048)
            step = profile.step_model(model, gpu, engine)
            for distinct in (1.0, 2.0, 4.0):
                costs[slots, rank, distinct] = request_seconds(adapters, engine, step, 50_000,
                                                               distinct)
    for (slots, rank, distinct), c in costs.items():
        assert (c > 0).all()
        for key in ((slots * 4, rank, distinct), (slots, rank * 4 if rank < 64 else 0,
                                                  distinct), (slots, rank, distinct * 2)):
            if key in costs:
                assert (costs[key] >= c * (1 - 1e-12)).all(), key


def test_every_worker_the_placer_accepts_is_under_the_ceiling(surrogate, specs) -> None:
    model, gpu, profile = specs
    adapters = mix(40, 3.0, 11)
    plan = place(adapters, model, gpu, profile, surrogate)
    by_name = {a.name: a for a in adapters}
    for g in plan.gpus:
        members = [AdapterDemand(name=n, rank=by_name[n].rank, rate=r / 0.9,
                                 input_tokens=by_name[n].input_tokens,
                                 output_tokens=by_name[n].output_tokens)
                   for n, r in g.rates.items()]
        kv = plan_memory(model, gpu, g.engine, profile.memory).kv_cache_tokens
        load = engine_load(members, g.engine, profile.step_model(model, gpu, g.engine), kv)
        assert load <= CEILING * (1 + 1e-9)
