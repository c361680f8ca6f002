"""The planner's public API and its one planning path: place, check, repair, assign."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pytest

import planner
from planner import (
    AdapterDemand,
    PlannerConfig,
    Repair,
    Target,
    place_with,
    plan_checked,
)
from twin import ConfigError
from twin.routing import BASE_MODEL

ROOT = Path(__file__).resolve().parents[2]


def test_every_exported_name_resolves() -> None:
    for name in planner.__all__:
        assert getattr(planner, name) is not None, name
    assert sorted(dir(planner)) == sorted(planner.__all__)
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = planner.no_such_thing  # type: ignore[attr-defined]


def test_nothing_outside_the_planner_imports_its_modules() -> None:
    # The gateway, the CLI and the benchmarks use the planner through ``planner`` only, so
    # its modules can move without touching them.
    offenders = []
    for folder in ("gateway", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module
                         else [a.name for a in node.names] if isinstance(node, ast.Import)
                         else [])
                offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names
                              if n.startswith("planner.")]
    assert offenders == []


def test_base_model_rule_is_one_property() -> None:
    assert AdapterDemand(name="base", rank=0, rate=1.0).is_base
    assert not AdapterDemand(name="sql", rank=8, rate=1.0).is_base


def test_target_resolves_once_and_names_a_bad_field() -> None:
    t = Target.resolve("llama-3.1-8b", "h100-80gb")
    assert (t.model.name, t.gpu.name, t.profile_name) == ("llama-3.1-8b", "h100-80gb",
                                                          "roofline-default")
    for kwargs, field in (({"gpu": "tpu"}, "gpu"), ({"model": "gpt-9"}, "model")):
        with pytest.raises(ConfigError) as info:
            Target.resolve(**kwargs)
        assert info.value.field == field


def test_assign_folds_gpus_onto_workers_and_keys_the_base_model(surrogate) -> None:
    target = Target.resolve()
    demands = [AdapterDemand(name="base", rank=0, rate=40.0, input_tokens=512,
                             output_tokens=256),
               *[AdapterDemand(name=f"a{i}", rank=16, rate=8.0, input_tokens=1024,
                               output_tokens=256) for i in range(6)]]
    plan = place_with(demands, target.predictor(surrogate))
    assert plan.num_gpus >= 3
    one = plan.assign(["w0"])
    assert one.planned_gpus == plan.num_gpus and len(one.engines) == 1
    (worker,) = one.placement.workers
    assert set(worker.shares) == {BASE_MODEL, *(f"a{i}" for i in range(6))}
    assert worker.shares[BASE_MODEL] == pytest.approx(1.0)  # every GPU's share folded in
    assert one.engines[0].max_loras == max(g.engine.max_loras for g in plan.gpus)
    assert one.engines[0].cpu_loras >= 6
    spread = plan.assign([f"w{i}" for i in range(plan.num_gpus + 2)], cpu_lora_room=2.0)
    assert spread.gpus_active == plan.num_gpus
    for g, w, e in zip(plan.gpus, spread.placement.workers, spread.engines, strict=False):
        loras = sum(1 for n in g.rates if n != "base")
        assert e.cpu_loras >= 2 * loras and e.max_loras == g.engine.max_loras
        assert set(w.shares) == {BASE_MODEL if n == "base" else n for n in g.rates}
    with pytest.raises(ValueError, match="workers"):
        plan.assign([])


def _hot(n: int, rate: float) -> list[AdapterDemand]:
    return [AdapterDemand(name=f"a{i}", rank=16, rate=rate, input_tokens=1024,
                          output_tokens=256) for i in range(n)]


def test_a_plan_the_twin_rejects_is_repaired(surrogate) -> None:
    # Planned with no margin at all and a capacity 1.6x what the workers have, the plan
    # starves in the twin; the repair rounds plan its starving GPUs' load again, tighter.
    target = Target.resolve()
    loose = target.predictor(surrogate, PlannerConfig(headroom=1.0), capacity_scale=1.6)
    demands = _hot(6, 6.0)
    checked = plan_checked(demands, loose, duration_s=60, rounds=6)
    assert checked.validation is not None
    assert checked.repairs >= 1
    assert checked.ok
    assert checked.plan.num_gpus > place_with(demands, loose).num_gpus
    unchecked = plan_checked(demands, loose, check=False)
    assert unchecked.validation is None and unchecked.ok is None and unchecked.repairs == 0


def test_replan_repair_makes_the_whole_plan_again_tighter(surrogate) -> None:
    target = Target.resolve()
    loose = target.predictor(surrogate, PlannerConfig(headroom=1.0), capacity_scale=1.6)
    demands = _hot(6, 6.0)
    margins: list[float] = []

    def make(p):
        margins.append(p.config.headroom)
        return place_with(demands, p)

    checked = plan_checked(demands, loose, make=make, how=Repair.REPLAN, duration_s=60,
                           rounds=6)
    assert checked.repairs == len(margins) - 1 >= 1
    assert margins == sorted(margins, reverse=True)  # each round stricter
    assert checked.predictor.config.headroom == margins[-1]
    assert checked.ok is True or checked.repairs == 6
    assert replace(loose.config, headroom=margins[-1]) == checked.predictor.config
