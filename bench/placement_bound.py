"""How tight the packing lower bound is where the optimum is known.

Small instances (9 adapters of ranks 0-64 and mixed lengths, rates spread around a mean, as in
``tests/planner/test_bound.py``) over seeds and load levels: the exact optimum of the placer's
model (``planner.optimum``, every grouping), the lower bound (``planner.bound``), the simple
bound and the placer. Prints a table and writes ``bench/results/placement_bound.json``.
Run: ``.venv/bin/python -m bench.placement_bound [--seeds 10]``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from gateway.pretrained import default_surrogate
from planner import (
    AdapterDemand,
    Target,
    exact_min_gpus,
    lower_bound,
    lower_bound_simple,
    place_with,
)

ROOT = Path(__file__).resolve().parent.parent


def mix(n: int, mean_rate: float, seed: int) -> list[AdapterDemand]:
    rng = np.random.default_rng(seed)
    rates = rng.uniform(0.3, 1.7, n) * mean_rate
    return [AdapterDemand(name=f"a{i}", rank=int(rng.choice([0, 8, 16, 32, 64])),
                          rate=float(r), input_tokens=float(rng.integers(128, 1536)),
                          output_tokens=float(rng.integers(32, 384)))
            for i, r in enumerate(rates)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--adapters", type=int, default=9)
    parser.add_argument("--rates", type=float, nargs="*", default=[1.0, 2.0, 3.0, 4.0])
    parser.add_argument("--out", default="placement_bound.json", help="file under bench/results")
    args = parser.parse_args()
    surrogate = default_surrogate()
    predictor = Target.resolve().predictor(surrogate)
    rows = []
    for mean in args.rates:
        for seed in range(args.seeds):
            demand = mix(args.adapters, mean, seed)
            started = time.perf_counter()
            exact = exact_min_gpus(demand, predictor)
            exact_s = time.perf_counter() - started
            if exact is None:
                continue  # an adapter needs replicas: outside the exact DP's scope
            bound = lower_bound(demand, predictor)
            rows.append({"mean_rate": mean, "seed": seed, "exact": exact,
                         "lower_bound": bound.gpus, "bound_relaxed": round(bound.relaxed, 3),
                         "lower_bound_simple": lower_bound_simple(demand, predictor),
                         "placer": place_with(demand, predictor).num_gpus,
                         "exact_s": round(exact_s, 2), "bound_s": round(bound.seconds, 3)})
    table = Table(title=f"lower bound vs exact optimum ({args.adapters} adapters, A100-80GB, "
                        "Llama-3.1-8B)")
    for c in ("mean rate", "instances", "exact (mean)", "bound = exact", "bound = exact - 1",
              "simple = exact", "placer = exact", "bound > exact"):
        table.add_column(c, justify="right")
    summary = []
    for mean in args.rates:
        rs = [r for r in rows if r["mean_rate"] == mean]
        if not rs:
            continue
        s = {"mean_rate": mean, "instances": len(rs),
             "exact_mean": float(np.mean([r["exact"] for r in rs])),
             "bound_equal": sum(r["lower_bound"] == r["exact"] for r in rs),
             "bound_one_below": sum(r["lower_bound"] == r["exact"] - 1 for r in rs),
             "simple_equal": sum(r["lower_bound_simple"] == r["exact"] for r in rs),
             "placer_equal": sum(r["placer"] == r["exact"] for r in rs),
             "bound_above": sum(r["lower_bound"] > r["exact"] for r in rs)}
        summary.append(s)
        table.add_row(*[str(round(v, 2)) if isinstance(v, float) else str(v)
                        for v in s.values()])
    Console(width=160).print(table)
    print("bound > exact would mean the bound is wrong; it must read 0 everywhere")
    out = ROOT / "bench/results"
    out.mkdir(exist_ok=True)
    (out / args.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
