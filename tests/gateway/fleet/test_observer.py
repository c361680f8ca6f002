"""The observer's view of one worker over the latency learner's interval: rates from the
requests sent to it, lengths from those it finished, and both counts (a filling or draining
worker shows them apart)."""

from __future__ import annotations

import random

import pytest

from gateway.fleet.observer import Observer


def _serve(obs: Observer, adapter: str, worker: str, sent: float, done: float,
           completion: int = 11) -> None:
    obs.arrival(adapter, now=sent)
    obs.dispatched(adapter, worker, now=sent)
    obs.finished(adapter, worker, prompt_tokens=100, completion_tokens=completion,
                 e2e_s=done - sent, ttft_s=0.5, now=done)


def test_worker_window_counts_what_was_sent_and_finished_in_the_interval() -> None:
    obs = Observer(window_s=60.0)
    for t in range(40):  # one request a second to w0, each served in 2 s
        _serve(obs, "a", "w0", float(t), t + 2.0)
    for t in range(0, 40, 4):  # w1: a second adapter, every 4 s
        _serve(obs, "b", "w1", float(t), t + 1.0)
    seen = obs.worker_window("w0", now=42.0, since=22.0)
    assert seen is not None
    assert (seen.dispatched, seen.completed) == (18, 20)  # sent at 22..39, done at 24..41
    (a,) = seen.demands
    assert a.name == "a" and a.rate == pytest.approx(18 / 20)
    assert a.input_tokens == 100 and a.output_tokens == 11  # lengths over the whole window
    assert seen.intervals == 20 * 10
    assert seen.itl_s == pytest.approx(1.5 / 10)  # (e2e - ttft) / (tokens - 1)
    assert seen.ttft_p50_s == 0.5
    whole = obs.worker_window("w0", now=42.0)
    assert whole is not None and (whole.dispatched, whole.completed) == (40, 40)


def test_a_draining_worker_has_rates_from_what_it_is_sent_now() -> None:
    """The adapter moved away at t=30: the worker still finishes its requests, but the
    window's rate is that of what it was sent (nothing), not of what it finished."""
    obs = Observer(window_s=60.0)
    for t in range(30):
        _serve(obs, "a", "w0", float(t), t + 5.0)
    seen = obs.worker_window("w0", now=40.0, since=30.0, time_scale=2.0)
    assert seen is not None
    assert (seen.dispatched, seen.completed) == (0, 5)
    assert seen.demands[0].rate == 0.0
    assert seen.itl_s == pytest.approx(4.5 / 10 * 2.0)  # in the workers' time


def test_worker_window_is_none_without_timed_requests() -> None:
    obs = Observer(window_s=60.0)
    assert obs.worker_window("w0", now=1.0) is None
    _serve(obs, "a", "w0", 0.0, 1.0, completion=1)  # one token: no inter-token interval
    assert obs.worker_window("w0", now=2.0) is None
    _serve(obs, "a", "w0", 1.0, 2.0)
    assert obs.worker_window("w0", now=3.0, since=2.5) is None  # finished before the interval
    assert obs.worker_window("w0", now=3.0) is not None


def _poisson(obs: Observer, adapter: str, rate: float, start: float, end: float,
             rng: random.Random) -> None:
    t = start + rng.expovariate(rate)
    while t < end:
        obs.arrival(adapter, now=t)
        t += rng.expovariate(rate)


def test_tracked_rates_follow_a_rotated_hot_set_within_the_recent_part() -> None:
    obs, rng = Observer(window_s=30.0), random.Random(3)
    _poisson(obs, "was-hot", 6.0, 0.0, 60.0, rng)
    _poisson(obs, "was-cold", 0.2, 0.0, 60.0, rng)
    rotated = Observer(window_s=30.0)  # the same until 50 s, then the two swap rates
    rng = random.Random(3)
    _poisson(rotated, "was-hot", 6.0, 0.0, 50.0, rng)
    _poisson(rotated, "was-cold", 0.2, 0.0, 50.0, rng)
    _poisson(rotated, "was-hot", 0.2, 50.0, 60.0, rng)
    _poisson(rotated, "was-cold", 6.0, 50.0, 60.0, rng)
    window = rotated.rates(now=60.0)  # 2/3 of the window still from before the swap
    tracked = rotated.tracked_rates(now=60.0)
    assert window["was-hot"] > 3.5 and window["was-cold"] < 2.5
    assert tracked["was-hot"] < 1.0 and tracked["was-cold"] > 4.0
    assert obs.tracked_rates(now=60.0) == obs.rates(now=60.0)  # no swap: the window stands


def test_steady_poisson_traffic_keeps_the_window_rates() -> None:
    obs, rng = Observer(window_s=15.0), random.Random(0)
    for now in range(5, 301, 5):
        for name, rate in (("a", 7.0), ("b", 1.0), ("c", 0.1)):
            _poisson(obs, name, rate, now - 5.0, float(now), rng)
        assert obs.tracked_rates(now=float(now)) == obs.rates(now=float(now)), now


def test_surging_names_adapters_well_above_their_planned_rate() -> None:
    obs, rng = Observer(window_s=15.0), random.Random(1)
    _poisson(obs, "steady", 3.0, 0.0, 30.0, rng)
    _poisson(obs, "jumped", 0.2, 0.0, 25.0, rng)
    _poisson(obs, "jumped", 5.0, 25.0, 30.0, rng)
    _poisson(obs, "unplanned", 2.0, 20.0, 30.0, rng)
    planned = {"steady": 3.0, "jumped": 0.2}
    assert obs.surging(planned, now=30.0) == ["jumped", "unplanned"]
    assert obs.surging({**planned, "jumped": 5.0, "unplanned": 2.0}, now=30.0) == []
    assert obs.surging({"steady": 30.0, "jumped": 50.0, "unplanned": 20.0}, now=30.0) == []
    assert Observer(window_s=15.0).surging(planned, now=1.0) == []  # nothing seen yet
