"""Whole runs: golden summaries of the example scenarios and known vLLM behaviour."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from twin.scenario import load_scenario, parse_scenario
from twin.simulation import simulate

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
EXAMPLES = sorted((ROOT / "examples/scenarios").glob("*.yaml"))


def _rounded(value: object) -> object:
    if isinstance(value, float):
        return None if math.isnan(value) else float(f"{value:.9g}")
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_golden_summary(path: Path) -> None:
    result, _ = simulate(load_scenario(path))
    summary = _rounded({k: v for k, v in result.to_dict().items() if k != "wall_seconds"})
    golden = GOLDEN / f"{path.stem}.json"
    if os.environ.get("LORAFLEET_UPDATE_GOLDEN") or not golden.exists():
        golden.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    assert summary == json.loads(golden.read_text())


def run(rate: float, count: int = 16, max_loras: int = 8, duration: float = 120) -> dict:
    sc = parse_scenario({
        "model": "llama-3.1-8b", "gpu": "a100-80gb",
        "engine": {"max_num_seqs": 256, "max_loras": max_loras, "max_cpu_loras": 64,
                   "max_lora_rank": 16, "max_model_len": 8192},
        "adapters": {"count": count, "ranks": [8, 16], "rate_total": rate},
        "lengths": {"input": {"dist": "lognormal", "mean": 512, "std": 256},
                    "output": {"dist": "lognormal", "mean": 160, "std": 80}},
        "duration_s": duration, "seed": 7})
    return simulate(sc)[0].to_dict()


def test_throughput_rises_with_load_then_flattens_and_starvation_appears() -> None:
    rates = [1, 4, 8, 32, 64]
    results = [run(r) for r in rates]
    served = [r["throughput_tps"] for r in results]
    assert served[0] < served[1] < served[2]  # below saturation: serves what arrives
    assert not any(r["starved"] for r in results[:2])
    assert results[-1]["starved"] and results[-2]["starved"]
    assert abs(served[-1] - served[-2]) / served[-2] < 0.15  # saturated: flat


def test_more_busy_adapters_than_max_loras_costs_throughput() -> None:
    few = run(64, count=4, max_loras=4)
    many = run(64, count=64, max_loras=4)
    assert many["throughput_tps"] < 0.9 * few["throughput_tps"]
    assert many["lora_loads"] > few["lora_loads"]


def test_requests_in_flight_count_the_tokens_they_produced() -> None:
    # Long outputs: many requests are still decoding when the run ends.
    sc = parse_scenario({
        "model": "llama-3.1-8b", "gpu": "a100-80gb",
        "engine": {"max_num_seqs": 256, "max_loras": 4, "max_model_len": 8192},
        "adapters": {"count": 4, "ranks": [8], "rate_total": 4.0},
        "lengths": {"input": {"dist": "fixed", "value": 256},
                    "output": {"dist": "fixed", "value": 2000}},
        "duration_s": 30, "seed": 1})
    result, engine = simulate(sc)
    assert result.output_tps * result.sim_seconds == engine.generation_tokens
