"""Pieces of the emulator: histograms, perturbed step times, the driver, metric families."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.emulator.errors import StartupError
from gateway.emulator.metrics import ITL_BUCKETS, WeightedHistogram
from gateway.emulator.noise import PerturbedStepTime
from gateway.emulator.service import EmulatedWorker
from tests.gateway.emulator.factories import make_config
from twin.events import EventKind
from twin.specs import EngineConfig
from twin.step_time import LinearCoefficients, LinearStepTime

ROOT = Path(__file__).resolve().parents[3]
VLLM_NAMES = ROOT / "tests/integration/vllm_metric_names.txt"


def test_weighted_histogram_vectorised_equals_one_by_one() -> None:
    values = np.array([0.005, 0.01, 0.3, 100.0])
    weights = np.array([3, 1, 2, 5])
    a, b = WeightedHistogram(ITL_BUCKETS), WeightedHistogram(ITL_BUCKETS)
    a.observe_many(values, weights)
    for v, w in zip(values, weights, strict=True):
        b.observe(float(v), int(w))
    assert a.cumulative() == b.cumulative() and a.sum == pytest.approx(b.sum)
    assert a.cumulative()[0] == 4 and a.cumulative()[-1] == 11  # 0.01 falls in le=0.01


def test_perturbed_step_time_is_seeded_and_mean_one() -> None:
    base = LinearStepTime(LinearCoefficients(base_s=0.02, per_token_s=0.0), EngineConfig())
    zeros = np.zeros(20000)

    def draw(seed: int) -> np.ndarray:
        m = PerturbedStepTime(base, slowdown=2.0, jitter=0.2, seed=seed)
        return m.predict(zeros, zeros + 1, zeros, zeros)

    assert np.array_equal(draw(1), draw(1)) and not np.array_equal(draw(1), draw(2))
    assert draw(1).mean() == pytest.approx(0.04, rel=0.01)


def test_worker_config_refuses_bad_scale() -> None:
    with pytest.raises(StartupError):
        make_config(time_scale=0)


async def test_idle_request_starts_at_arrival_and_finishes() -> None:
    worker = EmulatedWorker(make_config(time_scale=100.0))
    await worker.start()
    try:
        await asyncio.sleep(0.01)
        handle = worker.driver.submit(adapter=None, prompt_tokens=100, max_tokens=4,
                                      stream=True)
        kinds = [await handle.next_event() for _ in range(5)]
        request = handle.request
        assert kinds == [EventKind.FIRST_TOKEN, *[EventKind.TOKEN] * 3, EventKind.FINISHED]
        # Idle: scheduled as soon as it reaches the engine, after the per-request overhead.
        assert request.arrival_ns > 0
        assert request.first_scheduled_ns == request.arrival_ns + worker.driver.request_overhead_ns
        assert worker.driver.stats().num_running == 0
        assert request.request_id not in worker.engine.requests  # memory stays flat
    finally:
        await worker.stop()


async def test_abort_finishes_a_running_request() -> None:
    worker = EmulatedWorker(make_config(time_scale=1.0))
    await worker.start()
    try:
        handle = worker.driver.submit(adapter=None, prompt_tokens=10, max_tokens=1000,
                                      stream=False)
        await asyncio.sleep(0.05)
        assert worker.driver.stats().num_running == 1
        worker.driver.abort(handle.request.request_id)
        request = await asyncio.wait_for(handle.finished(), 5)
        assert str(request.finish_reason) == "abort"
        assert worker.driver.stats().num_running == 0
        # vLLM 0.32 counts no finished-request stats for a client's abort (checked against
        # a live server by tests/contract/test_metrics.py through tests/integration).
        assert worker.metrics.success.get("abort", 0) == 0
    finally:
        await worker.stop()


def test_metric_families_exist_in_a_real_vllm_scrape() -> None:
    """Every family the emulator exports is in a recorded vLLM 0.32 scrape, same type and
    label names."""
    real: dict[str, tuple[str, set[str]]] = {}
    for line in VLLM_NAMES.read_text().splitlines():
        if line and not line.startswith("#"):
            name, kind, labels = line.split()
            real[name] = (kind, set() if labels == "-" else set(labels.split(",")))
    worker = EmulatedWorker(make_config())
    idle = {f.name: f for f in text_string_to_metric_families(
        generate_latest(worker.registry).decode())}
    # As vLLM: no lora_requests_info series before the engine has run a request.
    assert idle["vllm:lora_requests_info"].samples == []
    worker.metrics.lora_state((), ())  # what the driver does after a step
    text = generate_latest(worker.registry).decode()
    families = list(text_string_to_metric_families(text))
    assert len(families) >= 14
    for family in families:
        name = family.name + ("_total" if family.type == "counter" else "")
        assert name in real, name
        kind, names = real[name]
        assert family.type == kind, name
        sample_labels = {k for s in family.samples for k in s.labels if k != "le"}
        assert sample_labels == names, name


def test_public_surface_is_sorted_and_resolves() -> None:
    import gateway.emulator as pkg

    names = pkg.__all__
    assert names == sorted(names, key=lambda n: (not n.isupper(), n))
    assert all(hasattr(pkg, n) for n in names)
