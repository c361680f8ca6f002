"""The surrogate learns live windows (``planner.online_surrogate``): windows drawn from a
twin worker 1.3x slower than its profile, at 0.9 of the profile's capacity (1.17 of its own:
it queues), while the plan assumes the profile's speed. Before learning the surrogate says
the worker keeps up; after learning half the windows (15) it predicts the other half's served
tokens with about half the error (0.15 -> 0.08 in log terms when written) and calls most of
them starved; one window changes no verdict."""

from __future__ import annotations

import dataclasses
import math
import pickle
import statistics

import pytest

from planner.demand import AdapterDemand
from planner.features import worker_features
from planner.online_latency import WorkerWindow
from planner.online_surrogate import learn_live, live_row
from planner.surrogate import Surrogate
from planner.validation import workload_for
from tests.planner.latency_windows import gateway_windows, perturbed
from twin import Scenario, simulate
from twin.specs import EngineConfig

ENGINE = EngineConfig(max_loras=8, max_cpu_loras=8, max_lora_rank=16)
SLOWDOWN = 1.3


def _adapters(total_rate: float, n: int = 8) -> list[AdapterDemand]:
    return [AdapterDemand(name=f"a{i}", rank=16 if i % 2 else 8, rate=total_rate / n,
                          input_tokens=512, output_tokens=128, input_std=256, output_std=64)
            for i in range(n)]


@pytest.fixture(scope="module")
def windows(specs) -> list[WorkerWindow]:
    """30 s windows of a twin worker 1.3x slower than the profile at 0.9 of the profile's
    capacity, tagged with the speed the plan assumed: the profile's."""
    model, gpu, profile = specs
    step = profile.step_model(model, gpu, ENGINE)
    f = worker_features(_adapters(1.0), ENGINE, model, gpu, step, profile.memory)
    adapters = _adapters(0.9 * f["est_capacity_tps"] / (512 + 128))
    scenario = Scenario(name="slow", model=model, gpu=gpu, engine=ENGINE,
                        profile=perturbed(profile, slowdown=SLOWDOWN, jitter=0.05, seed=3),
                        workload=workload_for(adapters, 900.0, 1))
    result, engine = simulate(scenario, record_steps=True)
    assert result.starved  # the slow worker cannot keep up
    out = gateway_windows(engine, {a.name: a.rank for a in adapters}, worker="w0",
                          window_s=30.0, warmup_s=30.0)
    return [dataclasses.replace(w, speed=1.0) for w in out]


def _error(surrogate: Surrogate, rows) -> float:  # type: ignore[no-untyped-def]
    """Median |log(predicted / observed)| of the served tokens/s."""
    return statistics.median(abs(math.log(surrogate.throughput.predict_one(r.x) / r.served_tps))
                             for r in rows)


def test_learning_live_windows_reduces_the_surrogates_error(specs, surrogate, windows) -> None:
    rows = [r for w in windows if (r := live_row(w, *specs)) is not None]
    assert len(rows) >= 20
    assert sum(r.starved for r in rows) >= 0.8 * len(rows)  # the windows show it queueing
    train, test = rows[::2], rows[1::2]
    live = pickle.loads(pickle.dumps(surrogate))
    before = _error(live, test)
    starved_before = sum(live.starvation.predict_one(r.x) for r in test)
    assert before > 0.15  # the prior expects the profile's capacity
    assert learn_live(live, train) == len(train)
    after = _error(live, test)
    starved_after = sum(live.starvation.predict_one(r.x) for r in test)
    assert after < 0.6 * before
    assert starved_before <= 0.2 * len(test) and starved_after >= 0.7 * len(test)
    assert _error(surrogate, test) == pytest.approx(before)  # a copy learned, not the prior


def test_one_window_cannot_undo_the_prior(specs, surrogate, windows) -> None:
    rows = [r for w in windows if (r := live_row(w, *specs)) is not None]
    one = pickle.loads(pickle.dumps(surrogate))
    learn_live(one, rows[:1])
    assert sum(one.starvation.predict_one(r.x) for r in rows[1:]) <= 0.2 * len(rows[1:])


def test_windows_without_a_speed_of_their_own_teach_nothing(specs, windows) -> None:
    unknown = dataclasses.replace(windows[0], speed=None)
    assert live_row(unknown, *specs) is None
    # at the right speed the slow worker looks like the profile's, nowhere near starving
    at_truth = live_row(dataclasses.replace(windows[0], speed=1 / SLOWDOWN), *specs)
    assert at_truth is not None
    assert at_truth.x["offered_tps"] == pytest.approx(
        live_row(windows[0], *specs).x["offered_tps"] * SLOWDOWN)  # type: ignore[union-attr]
