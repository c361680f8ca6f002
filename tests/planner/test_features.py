"""The frozen feature schema and the analytic capacity estimate."""

from __future__ import annotations

import math

import pytest

from planner.demand import AdapterDemand
from planner.features import FEATURES, expected_distinct, worker_features
from twin import EngineConfig, InsufficientMemoryError


def demand(n: int, rate: float = 1.0, rank: int = 16) -> list[AdapterDemand]:
    return [AdapterDemand(name=f"a{i}", rank=rank, rate=rate) for i in range(n)]


def test_schema_is_the_papers_features_then_ours() -> None:
    assert FEATURES[:7] == ("sum_rate", "std_rate", "max_size", "mean_size", "std_size",
                            "served_adapters", "adapter_slots")
    assert len(set(FEATURES)) == len(FEATURES)


def test_features_are_complete_and_finite(specs) -> None:
    model, gpu, profile = specs
    engine = EngineConfig(max_loras=4, max_cpu_loras=8, max_lora_rank=16, max_model_len=8192)
    x = worker_features([*demand(8), AdapterDemand(name="base", rank=0, rate=2.0)], engine,
                        model, gpu, profile.step_model(model, gpu, engine), profile.memory)
    assert set(x) == set(FEATURES)
    assert all(math.isfinite(v) for v in x.values())
    assert x["served_adapters"] == 8 and x["base_rate"] == 2.0 and x["sum_rate"] == 10.0
    assert x["offered_tps"] == pytest.approx(10 * (512 + 128))
    assert x["load_ratio"] == pytest.approx(x["offered_tps"] / x["est_capacity_tps"])


def test_capacity_falls_when_slots_thrash(specs) -> None:
    model, gpu, profile = specs

    def capacity(n: int, slots: int) -> float:
        engine = EngineConfig(max_loras=slots, max_cpu_loras=max(n, slots), max_lora_rank=16,
                              max_model_len=8192)
        return worker_features(demand(n), engine, model, gpu,
                               profile.step_model(model, gpu, engine),
                               profile.memory)["est_capacity_tps"]

    assert capacity(64, 8) < 0.7 * capacity(8, 8)
    assert capacity(8, 8) == pytest.approx(capacity(8, 8))


def test_memory_infeasible_config_raises(specs) -> None:
    model, gpu, profile = specs
    engine = EngineConfig(max_loras=512, max_lora_rank=64, max_model_len=8192)
    with pytest.raises(InsufficientMemoryError):
        worker_features(demand(2, rank=64), engine, model, gpu,
                        profile.step_model(model, gpu, engine), profile.memory)


def test_expected_distinct() -> None:
    assert expected_distinct([1.0], 10) == pytest.approx(1.0)
    assert expected_distinct([1.0] * 4, 1) == pytest.approx(1.0)
    assert expected_distinct([1.0] * 100, 1000) == pytest.approx(100.0, rel=1e-3)
    assert expected_distinct([], 5) == 0.0


@pytest.mark.parametrize(("field", "kwargs"), [
    ("rate", {"rate": -1.0}), ("rate", {"rate": float("nan")}), ("rank", {"rank": -8}),
    ("name", {"name": ""}),
])
def test_bad_demand_names_the_field(field: str, kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"name": "x", "rank": 8, "rate": 1.0}
    args.update(kwargs)
    with pytest.raises(ValueError, match=field):
        AdapterDemand(**args)  # type: ignore[arg-type]
