"""Placer quality and speed: GPUs used vs the baselines, the lower bound and the exact optimum.

For 8 (exact optimum by subset DP), 50, 200 and 1000 adapters with Zipf-skewed rates on
A100-80GB + Llama-3.1-8B: GPUs from the placer, from each baseline (each confirmed in the
cluster twin, GPUs added until it accepts), the lower bound; whether the twin confirms the
placer's plan (before and after repair); plan, validation and baseline times. Prints a
table and writes ``bench/results/placement.json``.
Run: ``.venv/bin/python bench/placement.py [--sizes 8 50 200]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from gateway.pretrained import default_surrogate
from planner import (
    AdapterDemand,
    PlannerConfig,
    Target,
    baselines_in_twin,
    exact_min_gpus,
    lower_bound,
    lower_bound_simple,
    place_with,
    plan_checked,
)

ROOT = Path(__file__).resolve().parent.parent


def adapters(n: int, total_rate: float, seed: int = 0) -> list[AdapterDemand]:
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n + 1) ** 1.0
    rates = weights / weights.sum() * total_rate
    return [AdapterDemand(name=f"a{i:04d}", rank=int(rng.choice([8, 16, 32])),
                          rate=float(r), input_tokens=float(rng.integers(128, 1536)),
                          output_tokens=float(rng.integers(32, 384)))
            for i, r in enumerate(rates)]


def run(n: int, validate_plan: bool, baselines_twin: bool, pool: ProcessPoolExecutor,
        rate_per_adapter: float | None = None, search_seconds: float = 1.0,
        baselines: bool = True) -> dict[str, object]:
    target = Target.resolve()  # Llama-3.1-8B on A100-80GB, the roofline profile
    surrogate = default_surrogate()
    predictor = target.predictor(surrogate, PlannerConfig(search_seconds=search_seconds))
    per = rate_per_adapter if rate_per_adapter is not None else (0.6 if n > 8 else 0.5)
    demand = adapters(n, total_rate=per * n)
    started = time.perf_counter()
    greedy = place_with(demand, target.predictor(
        surrogate, PlannerConfig(search_seconds=0.0))).num_gpus
    greedy_s = time.perf_counter() - started
    started = time.perf_counter()
    plan = place_with(demand, predictor)
    plan_s = time.perf_counter() - started
    row: dict[str, object] = {"adapters": n, "placer": plan.num_gpus, "plan_s": plan_s,
                              "greedy": greedy, "greedy_s": greedy_s,
                              "search_seconds": search_seconds,
                              "total_rate": sum(a.rate for a in demand)}
    bound = lower_bound(demand, predictor)
    row["lower_bound"] = bound.gpus
    row["bound_proved"] = bound.optimal
    row["bound_relaxed"] = round(bound.relaxed, 3)
    row["bound_s"] = bound.seconds
    row["placer_over_bound"] = round(plan.num_gpus / bound.gpus, 3)
    if n <= 1000:
        row["lower_bound_simple"] = lower_bound_simple(demand, predictor)
    if baselines:
        started = time.perf_counter()
        counts, confirmed = baselines_in_twin(demand, predictor, 180.0,
                                              twin=validate_plan and baselines_twin,
                                              map_fn=pool.map)
        row["baselines_s"] = time.perf_counter() - started
        row.update(counts)
        row["baselines_confirmed"] = confirmed
    row["exact"] = exact_min_gpus(demand, predictor) if n <= 12 else None
    if validate_plan:
        checked = plan_checked(demand, predictor, make=lambda _: plan, duration_s=180,
                               map_fn=pool.map)
        assert checked.validation is not None
        v = checked.validation
        row["twin_ok_first"] = checked.repairs == 0
        row["validate_s"] = checked.validate_seconds
        row["twin_ok"] = v.ok
        row["placer_after_repair"] = checked.plan.num_gpus
        pred, meas = np.array(v.predicted_tps), np.array(v.measured_tps)
        row["predicted_vs_measured_tps_mape"] = float(np.mean(np.abs(pred - meas)
                                                              / np.maximum(meas, 1)))
    return row


def _cell(row: dict[str, object], col: str) -> str:
    value = row.get(col, "-")
    confirmed = row.get("baselines_confirmed")
    if isinstance(confirmed, dict) and confirmed.get(col) is False:
        return f"none <= {value}"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="*", default=[8, 50, 200, 1000])
    parser.add_argument("--no-validate", action="store_true",
                        help="skip the cluster twin (placer plan and baselines)")
    parser.add_argument("--rate-per-adapter", type=float, default=None,
                        help="mean req/s per adapter (default 0.5 up to 8 adapters, else 0.6)")
    parser.add_argument("--out", default="placement.json", help="file under bench/results")
    parser.add_argument("--baselines-twin-max", type=int, default=1000,
                        help="confirm baselines in the twin up to this many adapters")
    parser.add_argument("--search-seconds", type=float, default=1.0,
                        help="the placer's improvement search budget (PlannerConfig)")
    parser.add_argument("--baselines-max", type=int, default=1000,
                        help="compute the baselines up to this many adapters")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes for the twin (default: one per core)")
    args = parser.parse_args()
    # Independent groups of GPUs are simulated in parallel, one process per core.
    with ProcessPoolExecutor(args.workers) as pool:
        rows = [run(n, not args.no_validate, n <= args.baselines_twin_max, pool,
                    args.rate_per_adapter, args.search_seconds, n <= args.baselines_max)
                for n in args.sizes]
    table = Table(title="placer vs baselines (A100-80GB, Llama-3.1-8B, Zipf rates)")
    cols = ["adapters", "total_rate", "greedy", "placer", "placer_after_repair", "exact",
            "lower_bound", "placer_over_bound", "lower_bound_simple", "one_per_adapter",
            "round_robin", "first_fit", "twin_ok_first", "twin_ok",
            "plan_s", "bound_s", "validate_s", "baselines_s"]
    for c in cols:
        table.add_column(c.replace("_", " "), justify="right")
    for r in rows:
        table.add_row(*[_cell(r, c) for c in cols])
    Console(width=200).print(table)
    print("none <= N: the twin starved the baseline at every GPU count up to N (round robin and "
          "first fit never replicate an adapter that one GPU cannot carry)")
    out = ROOT / "bench/results"
    out.mkdir(exist_ok=True)
    (out / args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
