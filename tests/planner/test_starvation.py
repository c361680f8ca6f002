"""The starvation model on a learned capacity (``capacity-*``) and its fallback classifier."""

from __future__ import annotations

import math

import numpy as np
import pytest

from planner.demand import AdapterDemand
from planner.features import worker_features
from planner.surrogate import (
    STARVATION_MODELS,
    NearestRegressor,
    StarvationModel,
    Surrogate,
    transform,
)
from twin.specs import EngineConfig


def _rows(specs, slots: int, n: int, seed: int = 0) -> list[dict[str, float]]:
    """Workers of 8 adapters whose true capacity is 0.8 of the analytic estimate: they serve
    ``min(offered, 0.8 x estimate)`` and starve above 0.9 of the offered tokens."""
    model, gpu, profile = specs
    rng = np.random.default_rng(seed)
    engine = EngineConfig(max_loras=slots, max_cpu_loras=8, max_lora_rank=16)
    step = profile.step_model(model, gpu, engine)
    rows = []
    for _ in range(n):
        rate, tokens = float(rng.uniform(0.5, 6.0)), float(rng.uniform(200, 1200))
        adapters = [AdapterDemand(name=f"a{i}", rank=16, rate=rate, input_tokens=tokens,
                                  output_tokens=tokens / 4) for i in range(8)]
        x = worker_features(adapters, engine, model, gpu, step, profile.memory)
        served = min(x["offered_tps"], 0.8 * x["est_capacity_tps"])
        rows.append({**x, "throughput_tps": served, "ideal_tps": x["offered_tps"],
                     "starved": float(served < 0.9 * x["offered_tps"]),
                     "any_adapter_starved": 0.0})
    return rows


def test_the_capacity_model_learns_the_boundary_from_saturated_rows(specs) -> None:
    model = StarvationModel("capacity-linear")
    for _ in range(3):
        for row in _rows(specs, slots=8, n=300):
            model.learn_one(row, bool(row["starved"]), row["throughput_tps"], row["ideal_tps"])
    test = _rows(specs, slots=8, n=200, seed=1)
    # Starved when 0.9 x offered > 0.8 x estimate: load ratio above 0.889.
    wrong = [r for r in test if model.predict_one(r) != bool(r["starved"])
             and abs(r["load_ratio"] - 0.8 / 0.9) > 0.02]
    assert not wrong
    assert model.predict_proba_one({**test[0], "load_ratio": 0.6}) < 0.01


def test_workers_whose_slots_thrash_get_the_classifier(specs) -> None:
    model = StarvationModel("capacity-linear")
    rows = _rows(specs, slots=2, n=50)
    assert all(r["active_ratio"] > 1 for r in rows)
    for row in rows:  # no capacity is learned from thrashing workers
        model.learn_one(row, bool(row["starved"]), row["throughput_tps"], row["ideal_tps"])
    assert model._capacity is not None and model._capacity["LinearRegression"].weights == {}


def test_models_are_named_and_unknown_ones_rejected() -> None:
    assert {"capacity-arf", "capacity-nearest", "arf"} <= set(STARVATION_MODELS)
    with pytest.raises(ValueError, match="model"):
        StarvationModel("capacity-nope")
    assert Surrogate.create().starvation.model == "capacity-nearest"


def test_an_unsaturated_worker_raises_a_capacity_below_what_it_served(specs) -> None:
    model = StarvationModel("capacity-nearest")
    row = _rows(specs, slots=8, n=1)[0]
    capacity = model._capacity
    assert capacity is not None
    est = row["est_capacity_tps"]
    # Served all it was offered, half the estimate: no news to a model at the estimate.
    model.learn_one(row, False, 0.5 * est, 0.5 * est)
    assert capacity.predict_one(transform(row)) == 0.0
    # Served all of 1.2 x the estimate: the capacity is at least that.
    model.learn_one(row, False, 1.2 * est, 1.2 * est)
    assert capacity.predict_one(transform(row)) == pytest.approx(math.log(1.2))


def test_the_nearest_regressor_uses_its_features_and_window() -> None:
    knn = NearestRegressor(n_neighbors=1, features=("a",), window=2)
    for a, y in [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)]:
        knn.learn_one({"a": a, "ignored": -a}, y)
    assert knn.predict_one({"a": 0.0, "ignored": 5.0}) == 2.0  # (0, 1) left the window
    assert NearestRegressor().predict_one({"a": 1.0}) == 0.0
    with pytest.raises(ValueError):
        NearestRegressor(n_neighbors=0)


def test_capacity_rows_teach_the_capacity_and_nothing_else(specs) -> None:
    """``train(capacity_rows=...)``: those rows reach only the starvation model's capacity
    (the forests and the fallback classifier never see them)."""
    from planner.training import train

    rows = _rows(specs, slots=8, n=60)
    more = _rows(specs, slots=8, n=60, seed=1)
    plain = train(rows)
    extra = train(rows, capacity_rows=more)
    assert plain.samples_seen == extra.samples_seen == len(rows)
    cap_plain, cap_extra = plain.starvation._capacity, extra.starvation._capacity
    assert isinstance(cap_plain, NearestRegressor) and isinstance(cap_extra, NearestRegressor)
    assert len(cap_extra._rows) > len(cap_plain._rows)
    probe = transform(more[0])
    assert plain.throughput.predict_one(more[0]) == extra.throughput.predict_one(more[0])
    assert plain.starvation._est.predict_proba_one(probe) == \
        extra.starvation._est.predict_proba_one(probe)
    # A thrashing worker's row teaches the capacity nothing.
    thrash = _rows(specs, slots=2, n=1)[0]
    before = len(cap_extra._rows)
    extra.learn_capacity_row(thrash)
    assert len(cap_extra._rows) == before
