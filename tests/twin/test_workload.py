"""Workloads: seeded arrival processes, length distributions, clipping and JSONL traces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from twin.errors import ConfigError
from twin.workload import AdapterLoad, Arrival, ArrivalSpec, LengthDist, Workload, load_trace

BIG = 10**9  # a max_model_len that clips nothing


def workload(*adapters: AdapterLoad, duration_s: float = 60.0, seed: int = 0,
             **kwargs: object) -> Workload:
    return Workload(adapters=adapters, duration_s=duration_s, seed=seed, **kwargs)  # type: ignore[arg-type]


def times_s(arrivals: list[Arrival]) -> np.ndarray:
    return np.array([a.time_ns for a in arrivals], dtype=float) / 1e9


A = AdapterLoad(name="a", rank=8, rate=5.0)
B = AdapterLoad(name="b", rank=16, rate=3.0)


# -- determinism -----------------------------------------------------------------------------------

def test_same_seed_gives_the_same_arrivals() -> None:
    first, _ = workload(A, B, seed=7).generate(BIG)
    second, _ = workload(A, B, seed=7).generate(BIG)
    assert len(first) > 100
    assert first == second


def test_different_seed_gives_different_arrivals() -> None:
    first, _ = workload(A, B, seed=7).generate(BIG)
    other, _ = workload(A, B, seed=8).generate(BIG)
    assert [a.time_ns for a in first] != [a.time_ns for a in other]


def test_arrivals_are_sorted_inside_the_duration_and_named() -> None:
    base = AdapterLoad(name="base", rank=0, rate=2.0)
    arrivals, _ = workload(A, base, duration_s=30.0).generate(BIG)
    t = [a.time_ns for a in arrivals]
    assert t == sorted(t)
    assert t[0] >= 0 and t[-1] < 30 * 10**9
    assert {a.adapter for a in arrivals} == {"a", None}  # rank 0 is the base model


def test_adding_an_adapter_leaves_the_first_adapters_requests_unchanged() -> None:
    alone, _ = workload(A, seed=3).generate(BIG)
    together, _ = workload(A, B, seed=3).generate(BIG)
    assert [a for a in together if a.adapter == "a"] == alone
    assert any(a.adapter == "b" for a in together)


# -- arrival processes -----------------------------------------------------------------------------

def test_poisson_mean_rate_within_10_percent() -> None:
    arrivals, _ = workload(AdapterLoad(name="a", rank=8, rate=5.0), duration_s=2000.0,
                           seed=11).generate(BIG)
    rate = len(arrivals) / 2000.0
    assert abs(rate / 5.0 - 1) < 0.10, f"rate {rate:.3f} req/s"
    gaps = np.diff(times_s(arrivals))
    cv = gaps.std() / gaps.mean()
    assert abs(cv - 1.0) < 0.1, f"Poisson inter-arrival CV {cv:.3f}"


def test_gamma_arrivals_have_the_requested_cv() -> None:
    spec = ArrivalSpec(process="gamma", cv=3.0)
    arrivals, _ = workload(AdapterLoad(name="a", rank=8, rate=5.0), duration_s=10000.0,
                           seed=5, arrivals=spec).generate(BIG)
    gaps = np.diff(times_s(arrivals))
    cv = gaps.std() / gaps.mean()
    assert abs(cv / 3.0 - 1) < 0.20, f"inter-arrival CV {cv:.3f}, wanted 3"
    assert abs(len(arrivals) / 10000.0 / 5.0 - 1) < 0.15


def test_piecewise_zero_then_double_rate() -> None:
    spec = ArrivalSpec(piecewise=((0.0, 0.0), (100.0, 2.0)))
    arrivals, _ = workload(AdapterLoad(name="a", rank=8, rate=1.0), duration_s=600.0,
                           seed=2, arrivals=spec).generate(BIG)
    t = times_s(arrivals)
    assert t.min() >= 100.0, "arrivals before the rate switched on"
    rate = len(t) / 500.0
    assert abs(rate / 2.0 - 1) < 0.10, f"rate after the switch {rate:.3f} req/s, wanted 2"


def test_zero_rate_adapter_has_no_arrivals() -> None:
    arrivals, _ = workload(AdapterLoad(name="z", rank=8, rate=0.0), A).generate(BIG)
    assert arrivals and all(a.adapter == "a" for a in arrivals)


# -- lengths -------------------------------------------------------------------------------------

def test_lengths_are_clipped_to_max_model_len_and_counted() -> None:
    w = workload(A, seed=4, input=LengthDist(dist="uniform", low=1, high=3000),
                 output=LengthDist(dist="uniform", low=1, high=2000))
    raw, none_clipped = w.generate(BIG)
    clipped, count = w.generate(2048)
    assert none_clipped == 0
    over = [a.prompt_tokens > 2047 or a.prompt_tokens + a.max_tokens > 2048 for a in raw]
    assert 0 < count == sum(over) < len(raw)
    for before, after, was_over in zip(raw, clipped, over, strict=True):
        assert after.time_ns == before.time_ns and after.adapter == before.adapter
        assert after.prompt_tokens <= 2047
        assert after.prompt_tokens + after.max_tokens <= 2048
        if not was_over:
            assert after == before
        else:
            assert after.prompt_tokens == min(before.prompt_tokens, 2047)
            assert after.max_tokens >= 1


def test_prompt_longer_than_the_model_keeps_one_output_token() -> None:
    arrivals, count = workload(A, input=LengthDist(dist="fixed", value=5000)).generate(4096)
    assert count == len(arrivals) > 0
    assert {(a.prompt_tokens, a.max_tokens) for a in arrivals} == {(4095, 1)}


def test_lognormal_mean_within_5_percent() -> None:
    dist = LengthDist(dist="lognormal", mean=300.0, std=150.0)
    x = dist.sample(np.random.default_rng(0), 200_000)
    assert x.dtype == np.int64 and x.min() >= 1
    assert abs(x.mean() / 300.0 - 1) < 0.05, f"mean {x.mean():.1f}"
    assert abs(x.std() / 150.0 - 1) < 0.10, f"std {x.std():.1f}"


def test_uniform_and_empirical_stay_in_range() -> None:
    rng = np.random.default_rng(1)
    u = LengthDist(dist="uniform", low=10, high=20).sample(rng, 5000)
    assert u.min() == 10 and u.max() == 20
    e = LengthDist(dist="empirical", values=(3, 7, 11)).sample(rng, 5000)
    assert set(e.tolist()) == {3, 7, 11}


def test_per_adapter_length_overrides_the_workload_default() -> None:
    short = AdapterLoad(name="s", rank=8, rate=2.0, input=LengthDist(dist="fixed", value=16))
    arrivals, _ = workload(short, A, input=LengthDist(dist="fixed", value=512)).generate(BIG)
    assert {a.prompt_tokens for a in arrivals if a.adapter == "s"} == {16}
    assert {a.prompt_tokens for a in arrivals if a.adapter == "a"} == {512}


# -- traces --------------------------------------------------------------------------------------

def write_lines(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_trace_reads_jsonl_sorted_by_time(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "trace.jsonl",
        json.dumps({"timestamp": 2.5, "adapter": "x", "input_tokens": 100, "output_tokens": 20}),
        "",
        json.dumps({"timestamp": 0.000000001, "input_tokens": 7, "output_tokens": 3}),
        json.dumps({"timestamp": 1, "adapter": None, "input_tokens": 9000, "output_tokens": 5}),
    )
    trace = load_trace(path)
    assert trace == (Arrival(1, None, 7, 3), Arrival(10**9, None, 9000, 5),
                     Arrival(2_500_000_000, "x", 100, 20))
    arrivals, clipped = workload(A, trace=trace).generate(4096)
    assert clipped == 1
    assert arrivals[1] == Arrival(10**9, None, 4095, 1)
    assert all(a.adapter != "a" for a in arrivals)  # a trace replaces the generated arrivals


BAD_ROWS = {
    "not json": "{timestamp: 1",
    "missing output_tokens": '{"timestamp": 1, "input_tokens": 5}',
    "non-numeric tokens": '{"timestamp": 1, "input_tokens": "many", "output_tokens": 5}',
    "zero tokens": '{"timestamp": 1, "input_tokens": 0, "output_tokens": 5}',
    "negative time": '{"timestamp": -1, "input_tokens": 5, "output_tokens": 5}',
    "not an object": "[1, 5, 5]",
}


@pytest.mark.parametrize("row", list(BAD_ROWS.values()), ids=list(BAD_ROWS))
def test_bad_trace_row_raises_config_error_naming_the_field(tmp_path: Path, row: str) -> None:
    good = '{"timestamp": 0, "input_tokens": 5, "output_tokens": 5}'
    path = write_lines(tmp_path / "bad.jsonl", good, row)
    with pytest.raises(ConfigError) as info:
        load_trace(path)
    assert info.value.field == "arrivals.trace"
    assert str(info.value).startswith("arrivals.trace: ")
    assert f"{path}:2:" in info.value.message


def test_missing_trace_file_raises_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_trace(tmp_path / "absent.jsonl")
    assert info.value.field == "arrivals.trace"


def test_infinite_timestamp_raises_config_error(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "inf.jsonl",
                       '{"timestamp": 1e400, "input_tokens": 5, "output_tokens": 5}')
    with pytest.raises(ConfigError) as info:
        load_trace(path)
    assert info.value.field == "arrivals.trace"
