"""``lorafleet plan``: place adapters on the fewest GPUs, compare with the baselines, and
confirm the plan in the cluster twin."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from planner.baselines import lower_bound
from planner.inputs import load_adapters
from planner.placer import Plan, PlannerConfig, Predictor, place
from planner.surrogate import Surrogate
from planner.training import (
    DEFAULT_CLASSIFIER,
    DEFAULT_LATENCY,
    DEFAULT_REGRESSOR,
    bundled_rows,
    train,
)
from planner.validate import baselines_in_twin, repair, validate
from twin.catalog import get_gpu, get_model
from twin.errors import ConfigError
from twin.profile import load_profile

__all__ = ["default_surrogate", "register"]


def register(sub: Any) -> None:
    p = sub.add_parser("plan", help="place adapters on the fewest GPUs without starvation")
    p.add_argument("adapters", type=Path, help="YAML with adapters: [{name, rank, rate, ...}]")
    p.add_argument("--gpu", default="a100-80gb")
    p.add_argument("--model", default="llama-3.1-8b")
    p.add_argument("--profile", default="roofline-default")
    p.add_argument("--surrogate", type=Path, help="model file from `lorafleet train` "
                   "(default: trained once on the bundled table and cached)")
    p.add_argument("--objective", default="min-gpus", choices=["min-gpus"])
    p.add_argument("--no-validate", action="store_true", help="skip the cluster-twin check")
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--duration", type=float, default=180.0, help="twin seconds to validate")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_plan)


def default_surrogate() -> Surrogate:
    """The surrogate trained on the bundled table, cached under ``$XDG_CACHE_HOME``."""
    table = resources.files("planner") / "data" / "a100-80gb-llama-3.1-8b.csv"
    key = hashlib.sha256(f"{DEFAULT_REGRESSOR}-{DEFAULT_CLASSIFIER}-{DEFAULT_LATENCY}".encode()
                         + table.read_bytes()).hexdigest()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lorafleet"
    path = cache / f"surrogate-{key[:12]}.pkl"
    if path.is_file():
        try:
            return Surrogate.load(path)
        except Exception:
            path.unlink(missing_ok=True)
    surrogate = train(bundled_rows())
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    surrogate.save(tmp)
    tmp.replace(path)
    return surrogate


def _plan_rows(plan: Plan) -> list[dict[str, Any]]:
    return [{"gpu": g.index, "max_loras": g.engine.max_loras,
             "max_cpu_loras": g.engine.cpu_loras, "max_lora_rank": g.engine.max_lora_rank,
             "adapters": sorted(g.rates), "rate_share": dict(sorted(g.rates.items())),
             "predicted_tps": round(g.predicted_tps, 1), "offered_tps": round(g.offered_tps, 1)}
            for g in plan.gpus]


def _plan(args: argparse.Namespace) -> int:
    model, gpu, profile = get_model(args.model), get_gpu(args.gpu), load_profile(args.profile)
    adapters = load_adapters(args.adapters)
    if args.surrogate:
        try:
            surrogate = Surrogate.load(args.surrogate)
        except (OSError, ValueError) as exc:
            raise ConfigError("--surrogate", str(exc)) from None
    else:
        surrogate = default_surrogate()
    predictor = Predictor(surrogate, model, gpu, profile, PlannerConfig())
    started = time.perf_counter()
    plan = place(adapters, model, gpu, profile, surrogate)
    plan_seconds = time.perf_counter() - started
    validated: bool | None = None
    validate_seconds = 0.0
    measured: list[float] = []
    baselines: dict[str, int] = {}
    confirmed: dict[str, bool] = {}
    bound = None
    # Groups of GPUs that share no adapter are simulated in parallel, one process per core.
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        if not args.no_validate:
            started = time.perf_counter()
            v = validate(plan, predictor, duration_s=args.duration, map_fn=pool.map)
            plan, v = repair(plan, predictor, v, duration_s=args.duration, map_fn=pool.map)
            validated, measured = v.ok, v.measured_tps
            validate_seconds = time.perf_counter() - started
        if not args.no_baselines:
            baselines, confirmed = baselines_in_twin(adapters, predictor, args.duration,
                                                     twin=not args.no_validate,
                                                     map_fn=pool.map)
            bound = lower_bound(adapters, predictor)
    out = {"gpus": plan.num_gpus, "placement": _plan_rows(plan), "baselines": baselines,
           "baselines_confirmed": confirmed,
           "lower_bound": bound, "validated": validated, "measured_tps": measured,
           "plan_seconds": plan_seconds, "validate_seconds": validate_seconds}
    if args.json:
        print(json.dumps(out))
    else:
        _print(out)
    return 0


def _print(out: dict[str, Any]) -> None:
    console = Console()
    table = Table(title=f"{out['gpus']} GPUs (validated in the twin: {out['validated']})")
    for col in ("gpu", "max_loras", "rank", "adapters", "req/s", "predicted tok/s",
                "measured tok/s"):
        table.add_column(col, justify="right")
    measured = out["measured_tps"] or [None] * len(out["placement"])
    for row, m in zip(out["placement"], measured, strict=False):
        names = row["adapters"]
        shown = ", ".join(names[:4]) + (f" +{len(names) - 4}" if len(names) > 4 else "")
        table.add_row(str(row["gpu"]), str(row["max_loras"]), str(row["max_lora_rank"]),
                      shown, f"{sum(row['rate_share'].values()):.2f}",
                      f"{row['predicted_tps']:,.0f}", "-" if m is None else f"{m:,.0f}")
    console.print(table)
    if out["baselines"]:
        confirmed = out["baselines_confirmed"]
        console.print("baselines (GPUs" + (", confirmed in the twin" if confirmed else "")
                      + "): " + ", ".join(
                          f"{k} {v}" + ("" if confirmed.get(k, True) else " (not accepted)")
                          for k, v in out["baselines"].items())
                      + f"; lower bound {out['lower_bound']}")
    console.print(f"planned in {out['plan_seconds']:.2f} s, validated in "
                  f"{out['validate_seconds']:.2f} s")
