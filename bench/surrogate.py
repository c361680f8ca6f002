"""Choosing the surrogate's River models by measurement, and how well they place.

1. Every regressor x classifier pair on the held-out split of the training table: throughput
   SMAPE on saturated samples, starvation macro-F1 (all, near the boundary), latency SMAPE,
   training time and time per prediction.
2. The label noise floor: the same sampled workers run again with another workload seed; the
   macro-F1 between the two runs' labels bounds what any model can reach.
3. The placement metric: for populations of identical adapters, the largest number one GPU
   serves without starvation, found by bisection in the twin and with the surrogate; the mean
   relative error (the predecessor paper reports 7.2%).

Prints tables and writes ``bench/results/surrogate.json``. Run:
``.venv/bin/python bench/surrogate.py [--data planner/data/a100-80gb-llama-3.1-8b.csv]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from planner.dataset import run_sample, sample_specs
from planner.evaluate import evaluate, macro_f1, near_boundary, split
from planner.features import AdapterDemand
from planner.placer import PlannerConfig, Predictor
from planner.surrogate import CLASSIFIERS, REGRESSORS
from planner.table import load_table
from planner.training import train
from planner.validate import workload_for
from twin import Scenario, get_gpu, get_model, load_profile, simulate

ROOT = Path(__file__).resolve().parent.parent
MODEL, GPU, PROFILE = get_model("llama-3.1-8b"), get_gpu("a100-80gb"), \
    load_profile("roofline-default")


def compare(rows: list[dict[str, float]]) -> list[dict[str, object]]:
    train_rows, test_rows = split(rows)
    out = []
    for reg in REGRESSORS:
        for clf in CLASSIFIERS:
            started = time.perf_counter()
            s = train(train_rows, regressor=reg, classifier=clf)
            row: dict[str, object] = {"regressor": reg, "classifier": clf,
                                      "train_s": time.perf_counter() - started}
            row.update(evaluate(s, test_rows).to_dict())
            out.append(row)
    return out


def noise_floor(n: int) -> dict[str, float]:
    specs = list(sample_specs(n, 12345, MODEL, GPU, PROFILE))
    a, b, near = [], [], []
    for spec in specs:
        r1 = run_sample(spec, MODEL, GPU, PROFILE)
        r2 = run_sample(dataclasses.replace(spec, seed=spec.seed + 1), MODEL, GPU, PROFILE)
        a.append(bool(r1["starved"] or r1["any_adapter_starved"]))
        b.append(bool(r2["starved"] or r2["any_adapter_starved"]))
        near.append(near_boundary(r1))
    pick = [i for i, x in enumerate(near) if x]
    return {"samples": n, "label_f1_between_seeds": macro_f1(a, b),
            "label_f1_between_seeds_near_boundary": macro_f1([a[i] for i in pick],
                                                             [b[i] for i in pick])}


def population(n: int, rate: float, rank: int, tokens: tuple[float, float]) -> list[AdapterDemand]:
    return [AdapterDemand(name=f"p{i:03d}", rank=rank, rate=rate, input_tokens=tokens[0],
                          output_tokens=tokens[1], input_std=tokens[0] / 2,
                          output_std=tokens[1] / 2) for i in range(n)]


def twin_ok(adapters: list[AdapterDemand], predictor: Predictor, slots: int) -> bool:
    engine = predictor.engine_for(adapters, min(slots, len(adapters)))
    scenario = Scenario(name="pop", model=MODEL, gpu=GPU, profile=PROFILE, engine=engine,
                        workload=workload_for(adapters, 240.0, 1))
    result, _ = simulate(scenario)
    return not (result.starved or result.starved_adapters)


def surrogate_ok(adapters: list[AdapterDemand], predictor: Predictor, slots: int) -> bool:
    return predictor.check(adapters, predictor.engine_for(adapters, min(slots,
                                                                        len(adapters)))).feasible


def largest(ok, hi: int = 256) -> int:
    if not ok(1):
        return 0
    lo = 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def max_adapters_error(rows: list[dict[str, float]]) -> list[dict[str, object]]:
    s = train(split(rows)[0])
    # Bisection with the check itself (no extra headroom): the surrogate's own boundary.
    predictor = Predictor(s, MODEL, GPU, PROFILE, PlannerConfig(headroom=1.0))
    out = []
    for rate, rank, tokens, slots in [(0.5, 8, (512, 128), 16), (0.2, 16, (512, 128), 16),
                                      (1.0, 8, (256, 64), 32), (0.1, 32, (1024, 256), 8),
                                      (0.3, 16, (2048, 64), 32), (0.05, 8, (512, 256), 64)]:
        def pop(n: int, rate: float = rate, rank: int = rank,
                tokens: tuple[float, float] = tokens) -> list[AdapterDemand]:
            return population(n, rate, rank, tokens)

        truth = largest(lambda n, s=slots: twin_ok(pop(n), predictor, s))  # type: ignore[misc]
        guess = largest(lambda n, s=slots: surrogate_ok(pop(n), predictor, s))  # type: ignore[misc]
        out.append({"rate": rate, "rank": rank, "tokens": tokens, "max_loras": slots,
                    "twin_max_adapters": truth, "surrogate_max_adapters": guess,
                    "relative_error": abs(guess - truth) / max(truth, 1)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path,
                        default=ROOT / "planner/data/a100-80gb-llama-3.1-8b.csv")
    parser.add_argument("--noise-samples", type=int, default=200)
    args = parser.parse_args()
    rows = load_table(args.data)
    console = Console(width=200)
    comparison = compare(rows)
    table = Table(title=f"River models on {len(split(rows)[1])} held-out samples")
    cols = ["regressor", "classifier", "throughput_smape_saturated", "starvation_f1",
            "starvation_f1_near_boundary", "ttft_smape", "itl_smape", "predict_us", "train_s"]
    for c in cols:
        table.add_column(c.replace("_", " "), justify="right")
    for r in comparison:
        table.add_row(*[f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols])
    console.print(table)
    floor = noise_floor(args.noise_samples)
    console.print(f"label noise floor: {floor}")
    placement = max_adapters_error(rows)
    t2 = Table(title="largest number of adapters one GPU serves without starvation")
    for c in ("rate", "rank", "tokens", "max_loras", "twin_max_adapters",
              "surrogate_max_adapters", "relative_error"):
        t2.add_column(c.replace("_", " "), justify="right")
    for r in placement:
        t2.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()])
    console.print(t2)
    mean_err = sum(float(r["relative_error"]) for r in placement) / len(placement)  # type: ignore[arg-type]
    console.print(f"mean relative error in the max adapters per GPU: {mean_err:.1%}")
    out = ROOT / "bench/results"
    out.mkdir(exist_ok=True)
    (out / "surrogate.json").write_text(json.dumps(
        {"comparison": comparison, "noise_floor": floor, "max_adapters": placement,
         "max_adapters_mean_relative_error": mean_err}, indent=1, default=list) + "\n")


if __name__ == "__main__":
    main()
