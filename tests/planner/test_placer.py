"""Placer invariants for any input, replicas of hot adapters, inputs and the plan CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.cli import main
from planner.demand import AdapterDemand
from planner.inputs import parse_adapters
from planner.placer import PlannerConfig, Predictor, place
from twin import ConfigError, plan_memory

demand_st = st.builds(
    AdapterDemand, name=st.just("x"), rank=st.sampled_from([0, 8, 16, 32]),
    rate=st.floats(0.0, 8.0), input_tokens=st.floats(32, 2048),
    output_tokens=st.floats(8, 512))


def named(items: list[AdapterDemand]) -> list[AdapterDemand]:
    return [AdapterDemand(name=f"a{i}", rank=a.rank, rate=a.rate, input_tokens=a.input_tokens,
                          output_tokens=a.output_tokens) for i, a in enumerate(items)]


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(items=st.lists(demand_st, min_size=1, max_size=30))
def test_every_adapter_placed_rates_conserved_memory_respected(
        items: list[AdapterDemand], surrogate, specs) -> None:
    model, gpu, profile = specs
    adapters = named(items)
    plan = place(adapters, model, gpu, profile, surrogate)
    again = place(adapters, model, gpu, profile, surrogate)
    assert [g.rates for g in plan.gpus] == [g.rates for g in again.gpus]  # deterministic
    placed: dict[str, float] = {}
    for g in plan.gpus:
        plan_memory(model, gpu, g.engine, profile.memory)  # raises if vLLM would refuse
        assert g.rates
        assert len([n for n in g.rates if next(a for a in adapters if a.name == n).rank]) \
            <= g.engine.cpu_loras
        for name, rate in g.rates.items():
            placed[name] = placed.get(name, 0.0) + rate
    assert set(placed) == {a.name for a in adapters}
    for a in adapters:
        assert placed[a.name] == pytest.approx(a.rate, rel=1e-9, abs=1e-12)
    predictor = Predictor(surrogate, model, gpu, profile, PlannerConfig())
    for g in plan.gpus:  # no GPU predicted starving, unless a lone adapter cannot be helped
        demands = [a for a in adapters if a.name in g.rates]
        if len(g.rates) > 1:
            assert predictor.check(
                [AdapterDemand(name=a.name, rank=a.rank, rate=g.rates[a.name],
                               input_tokens=a.input_tokens, output_tokens=a.output_tokens)
                 for a in demands], g.engine).feasible


def test_hot_adapter_is_replicated_with_its_rate_split(surrogate, specs) -> None:
    model, gpu, profile = specs
    hot = AdapterDemand(name="hot", rank=16, rate=60.0, input_tokens=1024, output_tokens=256)
    plan = place([hot], model, gpu, profile, surrogate)
    assert plan.num_gpus >= 2
    assert all(set(g.rates) == {"hot"} for g in plan.gpus)
    assert sum(g.rates["hot"] for g in plan.gpus) == pytest.approx(60.0)
    shares = plan.shares()["hot"]
    assert sum(shares.values()) == pytest.approx(1.0)


def test_light_adapters_share_a_gpu(surrogate, specs) -> None:
    model, gpu, profile = specs
    light = [AdapterDemand(name=f"a{i}", rank=8, rate=0.05) for i in range(8)]
    assert place(light, model, gpu, profile, surrogate).num_gpus < 4


@pytest.mark.parametrize(("data", "field"), [
    ({}, "adapters"),
    ({"adapters": []}, "adapters"),
    ({"adapters": [{"name": "a", "rank": 8, "rate": -1}]}, "adapters[0].rate"),
    ({"adapters": [{"name": "a", "rank": 12, "rate": 1}]}, "adapters[0].rank"),
    ({"adapters": [{"name": "a", "rank": 8}]}, "adapters[0].rate"),
    ({"adapters": [{"name": "a", "rank": 8, "rate": 1, "colour": 1}]}, "adapters[0].colour"),
    ({"adapters": [{"name": "a", "rank": 8, "rate": 1}, {"name": "a", "rank": 8, "rate": 1}]},
     "adapters[1].name"),
])
def test_bad_input_names_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_adapters(data)
    assert info.value.field == field


def test_plan_cli_json(tmp_path: Path, capsys: pytest.CaptureFixture[str], surrogate) -> None:
    model_file = tmp_path / "s.pkl"
    surrogate.save(model_file)
    adapters = tmp_path / "a.yaml"
    adapters.write_text("adapters:\n" + "".join(
        f"  - {{name: a{i}, rank: 8, rate: 0.2, input_tokens: 300, output_tokens: 100}}\n"
        for i in range(6)))
    assert main(["plan", str(adapters), "--surrogate", str(model_file), "--json",
                 "--duration", "60"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["gpus"] == len(out["placement"]) >= 1
    assert {"one_per_adapter", "round_robin", "first_fit"} <= set(out["baselines"])
    assert out["validated"] in (True, False)
    assert 1 <= out["lower_bound"] <= out["gpus"] and out["lower_bound_simple"] >= 1
    names = sorted(n for row in out["placement"] for n in row["adapters"])
    assert names == sorted(f"a{i}" for i in range(6))


@pytest.mark.parametrize("value", ["-1", "nan", "soon"])
def test_plan_cli_bad_search_seconds(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     value: str) -> None:
    adapters = tmp_path / "a.yaml"
    adapters.write_text("adapters: [{name: a, rank: 8, rate: 1}]\n")
    assert main(["plan", str(adapters), "--search-seconds", value]) == 2
    err = capsys.readouterr().err
    assert "--search-seconds" in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_plan_cli_unknown_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    adapters = tmp_path / "a.yaml"
    adapters.write_text("adapters: [{name: a, rank: 8, rate: 1}]\n")
    assert main(["plan", str(adapters), "--gpu", "tpu"]) == 2
    assert "gpu" in capsys.readouterr().err


def test_validation_routes_base_model_load_as_the_gateway_does(surrogate, specs) -> None:
    from planner.placer import GpuPlan, Plan
    from planner.validation import validate
    from twin import EngineConfig

    model, gpu, profile = specs
    base = AdapterDemand(name="base", rank=0, rate=1.0)
    lora = AdapterDemand(name="sql", rank=8, rate=1.0)
    engine = EngineConfig(max_loras=1, max_lora_rank=8, max_model_len=8192)
    plan = Plan(gpus=[GpuPlan(index=0, engine=engine, rates={"base": 1.0}, predicted_tps=0,
                              offered_tps=0, starvation_proba=0),
                      GpuPlan(index=1, engine=engine, rates={"sql": 1.0}, predicted_tps=0,
                              offered_tps=0, starvation_proba=0)], adapters=[base, lora])
    v = validate(plan, Predictor(surrogate, model, gpu, profile, PlannerConfig()),
                 duration_s=60)
    by_worker = [{a.name for a in w.adapters} for w in v.result.workers]
    assert by_worker == [{"<base>"}, {"sql"}]


def test_validation_by_groups_equals_one_cluster_run(surrogate, specs) -> None:
    from planner.placer import GpuPlan, Plan
    from planner.validation import validate, workload_for
    from twin import EngineConfig, Placement, RoutingPolicy, WorkerPlacement, simulate_cluster

    model, gpu, profile = specs
    demand = [AdapterDemand(name=n, rank=8, rate=r) for n, r in
              (("a", 1.0), ("b", 2.0), ("c", 0.5), ("d", 1.5))]
    engine = EngineConfig(max_loras=2, max_lora_rank=8, max_model_len=8192)
    rates = [{"a": 1.0, "b": 1.0}, {"b": 1.0}, {"c": 0.5, "d": 1.5}]  # groups: {0, 1}, {2}
    plan = Plan(gpus=[GpuPlan(index=i, engine=engine, rates=r, predicted_tps=0, offered_tps=0,
                              starvation_proba=0) for i, r in enumerate(rates)], adapters=demand)
    split = validate(plan, Predictor(surrogate, model, gpu, profile, PlannerConfig()),
                     duration_s=60)
    shares = plan.shares()
    joint = simulate_cluster(
        model, gpu, profile, [engine] * 3,
        Placement(tuple(WorkerPlacement(name=f"gpu-{i}", shares={n: shares[n][i] for n in r})
                        for i, r in enumerate(rates))),
        workload_for(demand, 60, 0), RoutingPolicy.PLACEMENT)
    assert [w.to_dict() | {"wall_seconds": 0} for w in split.result.workers] == \
        [w.to_dict() | {"wall_seconds": 0} for w in joint.workers]


def test_the_prefix_fills_nearly_empty_last_gpu_is_emptied_into_the_others(
        surrogate, specs) -> None:
    # Ranks 32, 16 and 8 are filled group by group, so each group's last GPU may hold a
    # sliver; the improvement search moves it where the surrogate says it still fits.
    from gateway.demo.workload import demo_adapters
    from planner.placer import _fill, _zigzag, merged, replicate

    model, gpu, profile = specs
    adapters = demo_adapters(10, total_rate=20.0, seed=1)  # a mix where consolidation pays
    predictor = Predictor(surrogate, model, gpu, profile, PlannerConfig())
    plan = place(adapters, model, gpu, profile, surrogate)
    every = [n for g in plan.gpus for n in g.rates]
    assert sorted(set(every)) == sorted(a.name for a in adapters)
    assert all(predictor.best(merged([AdapterDemand(
        name=n, rank=next(a.rank for a in adapters if a.name == n), rate=r,
        input_tokens=1024, output_tokens=256) for n, r in g.rates.items()])).feasible
        for g in plan.gpus)
    # without the search the same fill needs a GPU more
    items = replicate(adapters, predictor)
    queue = [a for rank in (32, 16, 8) for a in _zigzag([a for a in items if a.rank == rank])]
    prefix = 0
    while queue:
        take, _ = _fill(queue, predictor)
        queue, prefix = queue[take:], prefix + 1
    assert plan.num_gpus < prefix


@pytest.mark.parametrize(("args", "words"), [
    (["--tensor-parallel-size", "0"], "--tensor-parallel-size: must be a whole number"),
    (["-tp", "two"], "--tensor-parallel-size: must be a whole number"),
    (["--model", "llama-3.1-70b", "-tp", "3"],
     "--tensor-parallel-size: Total number of attention heads (64) must be divisible"),
    (["--model", "llama-3.1-70b"], "The smallest tensor_parallel_size that fits is 2."),
    (["--model", "llama-3.1-70b", "--gpu", "l4", "-tp", "4"],
     "The smallest tensor_parallel_size that fits is 8."),
])
def test_plan_cli_refuses_a_split_vllm_would_refuse(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
        words: str) -> None:
    """Before any surrogate loads: one line, exit 2, the smallest size that fits named."""
    adapters = tmp_path / "a.yaml"
    adapters.write_text("adapters: [{name: a, rank: 8, rate: 1}]\n")
    assert main(["plan", str(adapters), *args]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_plan_cli_takes_a_config_json_and_a_custom_gpu(
        surrogate, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = Path(__file__).resolve().parents[1] / "data" / "models"
    model_file = tmp_path / "s.pkl"
    surrogate.save(model_file)
    adapters = tmp_path / "a.yaml"
    adapters.write_text("adapters: [{name: a, rank: 8, rate: 0.5}, {name: b, rank: 8, "
                        "rate: 0.5}]\n")
    gpu = '{"name": "mine", "memory_gib": 48, "tflops": 400, "bandwidth_gbps": 1000}'
    assert main(["plan", str(adapters), "--surrogate", str(model_file), "--json",
                 "--model", str(models / "Qwen2.5-7B-Instruct"), "--gpu", gpu, "-tp", "2",
                 "--no-validate", "--no-baselines"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["tensor_parallel_size"] == 2 and out["gpus"] == 2 * out["workers"] >= 2
