"""`lorafleet demo`: a short run at high time scale re-plans, ends by itself with zero failed
requests and fewer GPUs than one per adapter; the workload is seeded and skewed."""

from __future__ import annotations

import json

import pytest

from gateway.cli import main
from gateway.demo import Arrivals, demo_adapters


def test_short_demo_run_reports_its_summary_as_the_last_json_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--seconds", "10", "--workers", "3", "--adapters", "8", "--rate", "6",
                 "--time-scale", "4", "--drain-seconds", "10", "--replan-every", "2",
                 "--observe-window", "3", "--json"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    data = json.loads(out[-1])
    for key in ("requests", "failed", "gpus_active", "baselines", "ttft_p50_s", "ttft_p99_s",
                "migrations"):
        assert key in data
    assert data["requests"] > 0 and data["failed"] == 0 and data["abandoned"] == 0
    assert data["baselines"]["one_per_adapter"] == 8
    assert 1 <= data["gpus_active"] < data["baselines"]["one_per_adapter"]
    assert data["replans"] >= 1  # the periodic re-plan ran (and moved data["migrations"])
    assert set(data["replan_outcomes"]) <= {"ok", "unchanged"}
    assert data["ttft_p50_s"] is not None and data["ttft_p50_s"] <= data["ttft_p99_s"]
    assert any(line.startswith("demo t=") for line in out)  # plain progress on a pipe


def test_invalid_option_exits_2_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--time-scale", "0"]) == 2
    assert "--time-scale" in capsys.readouterr().err


def test_adapters_are_seeded_and_zipf_skewed() -> None:
    a, b = demo_adapters(40, total_rate=30.0, seed=3), demo_adapters(40, total_rate=30.0, seed=3)
    assert a == b
    assert {x.rank for x in a} <= {8, 16, 32}
    assert sum(x.rate for x in a) == pytest.approx(30.0)
    assert a[0].rate == pytest.approx(2 * a[1].rate)


def test_arrivals_follow_the_rates_and_shift() -> None:
    ads = demo_adapters(5, total_rate=10.0)
    arrivals = Arrivals(ads, seed=1, shift_every_s=100.0, shift_by=1)
    counts = [0] * 5
    late = [0] * 5
    t = 0.0
    while t < 200.0:
        t, i = arrivals.next()
        (counts if t < 100.0 else late)[i] += 1
    assert counts.index(max(counts)) == 0  # the hottest first
    assert late.index(max(late)) == 4  # then the rates rotated by one
    assert arrivals.rate_of(4, 150.0) == ads[0].rate


def test_a_fleet_spec_takes_one_slowdown_or_one_per_worker() -> None:
    from gateway.demo.fleet import FleetSpec

    assert [FleetSpec(slowdown=1.2).slowdown_of(i) for i in range(3)] == [1.2] * 3
    mixed = FleetSpec(slowdown=(0.8, 1.0, 1.3))
    assert [mixed.slowdown_of(i) for i in range(5)] == [0.8, 1.0, 1.3, 0.8, 1.0]
    for bad in ((), (1.0, 0.0), -1.0):
        with pytest.raises(ValueError, match="slowdown"):
            FleetSpec(slowdown=bad)  # type: ignore[arg-type]
