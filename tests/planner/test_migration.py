"""The migration diff: applies cleanly, ordered steps, fewest moves, retirement order."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planner.migration import ORDER, Migration, StepKind, apply, diff
from planner.placer import GpuPlan, Plan
from twin import ConfigError, EngineConfig
from twin.routing import BASE_MODEL

ENGINE = EngineConfig(max_loras=4, max_lora_rank=16)
NAMES = [f"a{i}" for i in range(8)]


def gpu(i: int, rates: dict[str, float], engine: EngineConfig = ENGINE) -> GpuPlan:
    return GpuPlan(index=i, engine=engine, rates=rates, predicted_tps=0.0, offered_tps=0.0,
                   starvation_proba=0.0)


def plan(groups: list[dict[str, float]], workers: tuple[str, ...] = ()) -> Plan:
    return Plan(gpus=[gpu(i, g) for i, g in enumerate(groups)], workers=workers)


def check_order(m: Migration, workers: list[str]) -> None:
    kinds = [s.kind for s in m.steps]
    assert kinds == sorted(kinds, key=ORDER.index)
    assert kinds.count(StepKind.ROUTE) == 1
    assert [s.worker for s in m.steps if s.kind is StepKind.ROUTE] == [""]
    retired = [s.worker for s in m.steps if s.kind is StepKind.RETIRE]
    assert retired == list(m.retired)
    assert [workers.index(w) for w in retired] == sorted(
        (workers.index(w) for w in retired), reverse=True)
    unloads = {s.worker for s in m.steps if s.kind is StepKind.UNLOAD}
    assert not unloads & set(m.retired)  # a retiring worker is not unloaded first
    assert [s.worker for s in m.steps if s.kind is StepKind.ADD] == list(m.added)
    assert all(s.adapter != BASE_MODEL for s in m.steps
               if s.kind in (StepKind.LOAD, StepKind.UNLOAD))


def target_holdings(target: Plan) -> list[frozenset[str]]:
    return sorted((frozenset(k for k in g.rates if not k.startswith("base")) for g in target.gpus
                   if g.rates), key=sorted)


def holders(h: dict[str, frozenset[str]] | dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for w, names in h.items():
        for n in names:
            out.setdefault(n, set()).add(w)
    return out


holdings_st = st.lists(st.sets(st.sampled_from(NAMES), max_size=5), min_size=0, max_size=6)
groups_st = st.lists(st.dictionaries(st.sampled_from(NAMES), st.floats(0.0, 3.0), max_size=5),
                     min_size=0, max_size=7)


@settings(max_examples=150, deadline=None)
@given(held=holdings_st, groups=groups_st, identity=st.booleans())
def test_diff_applies_cleanly_and_moves_what_changed(held: list[set[str]],
                                                     groups: list[dict[str, float]],
                                                     identity: bool) -> None:
    workers = [f"w{i}" for i in range(len(held))]
    current = dict(zip(workers, held, strict=True))
    if identity:  # as replan numbers them: the running workers first, empty or not
        groups = groups + [{}] * max(0, len(workers) - len(groups))
        target = plan(groups, tuple(workers))
    else:
        target = plan([g for g in groups if g])
    m = diff(current, target, workers)
    check_order(m, workers)
    after = apply(current, m)
    assert sorted(after.values(), key=sorted) == target_holdings(target)
    assert after == {w: frozenset(s) for w, s in m.shares.items()}
    if identity:
        for i, w in enumerate(workers):
            assert after.get(w, frozenset()) == frozenset(groups[i])
    before, now = holders(current), holders(after)
    assert set(m.moved) == {a for a in NAMES if before.get(a, set()) != now.get(a, set())}
    for a in holders(after):  # every adapter's shares sum to 1
        assert sum(s.get(a, 0.0) for s in m.shares.values()) == pytest.approx(1.0)
    assert diff(current, target, workers) == m  # deterministic


def test_fresh_plan_is_matched_to_keep_adapters_where_they_are() -> None:
    current = {"w0": {"a", "b"}, "w1": {"c"}, "w2": {"d", "e"}}
    target = plan([{"d": 1.0, "e": 1.0}, {"a": 1.0, "b": 1.0}, {"c": 1.0}])  # permuted
    m = diff(current, target, ["w0", "w1", "w2"])
    assert m.moved == () and m.retired == () and m.added == ()
    assert [s.kind for s in m.steps] == [StepKind.ROUTE]
    assert m.shares["w2"] == {"d": 1.0, "e": 1.0}


def test_fewer_gpus_retire_the_highest_numbered_first() -> None:
    current = {"w0": {"a"}, "w1": {"b"}, "w2": {"c"}, "w3": set()}
    target = plan([{"a": 1.0, "b": 1.0, "c": 1.0}])
    m = diff(current, target, ["w0", "w1", "w2", "w3"])
    assert m.retired == ("w3", "w2", "w1")
    assert m.moved == ("b", "c")
    assert apply(current, m) == {"w0": frozenset({"a", "b", "c"})}


def test_more_gpus_add_named_workers() -> None:
    current = {"w0": {"a", "b"}}
    target = plan([{"a": 1.0}, {"b": 0.5}, {"b": 0.5}])
    m = diff(current, target, ["w0"], new_names=lambda i: f"lora-{i}")
    assert m.added == ("lora-1", "lora-2")
    assert m.steps[:2] == tuple(m.steps[:2]) and [s.kind for s in m.steps[:2]] == [
        StepKind.ADD, StepKind.ADD]
    assert m.shares["lora-1"] == {"b": 0.5} and m.shares["lora-2"] == {"b": 0.5}
    assert apply(current, m) == {"w0": frozenset({"a"}), "lora-1": frozenset({"b"}),
                                 "lora-2": frozenset({"b"})}


def test_base_model_is_routing_only() -> None:
    current = {"w0": {"a", BASE_MODEL}, "w1": {"b"}}
    target = plan([{"a": 1.0}, {"b": 1.0, "base": 2.0}])
    m = diff(current, target, ["w0", "w1"], ranks={"a": 8, "b": 8, "base": 0})
    assert m.shares == {"w0": {"a": 1.0}, "w1": {"b": 1.0, BASE_MODEL: 1.0}}
    assert m.moved == ()
    assert [(s.kind, s.worker, s.adapter) for s in m.steps] == [
        (StepKind.ROUTE, "", None), (StepKind.DRAIN, "w0", BASE_MODEL)]
    assert apply(current, m) == {"w0": frozenset({"a"}), "w1": frozenset({"b"})}


def test_restarts_list_workers_whose_settings_change() -> None:
    bigger = EngineConfig(max_loras=8, max_lora_rank=32)
    target = Plan(gpus=[gpu(0, {"a": 1.0}), gpu(1, {"b": 1.0}, bigger)])
    m = diff({"w0": {"a"}, "w1": {"b"}}, target, ["w0", "w1"],
             engines={"w0": ENGINE, "w1": ENGINE})
    assert m.restarts == ("w1",)


def test_bad_input_names_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        diff({"w0": {"a"}}, plan([{"a": 1.0}], ("w0",)), ["x0"])
    assert info.value.field == "workers"
    with pytest.raises(ConfigError) as info:
        diff({"w0": {"a"}, "w1": set()}, plan([{"a": 1.0}, {}, {"b": 1.0}], ("w0", "w1")),
             ["w0", "w1"], new_names=lambda i: "w0")
    assert info.value.field == "new_names"
