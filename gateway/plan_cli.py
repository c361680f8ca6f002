"""``lorafleet plan``: place adapters on the fewest GPUs, compare with the baselines, and
confirm the plan in the cluster twin."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gateway.cli import add_command
from gateway.cli_help import GPU_HELP, MODEL_HELP, PROFILE_HELP
from gateway.names import choice_type, shown
from gateway.pretrained import surrogate_for
from planner import (
    DEFAULT_GPU,
    DEFAULT_MODEL,
    DEFAULT_PROFILE,
    AdapterDemand,
    LatencyEstimate,
    LatencyMetric,
    LatencyPredictor,
    MinLatency,
    ObjectiveName,
    Plan,
    PlannerConfig,
    Predictor,
    Surrogate,
    Target,
    Validation,
    baselines_in_twin,
    load_adapters,
    lower_bound,
    lower_bound_simple,
    place_with,
    plan_checked,
    plan_latency,
    repair_latency,
    validate,
)
from twin.errors import ConfigError

__all__ = ["register"]

# Adapters up to which the simple lower bound is reported: it bisects each adapter's capacity
# alone (about 8 ms apiece), 8 s of a 1000-adapter plan's 15 s budget; ``lower_bound`` is
# the tighter one and is always reported.
SIMPLE_BOUND_MAX = 200


EXAMPLES = """\
lorafleet plan examples/adapters-50.yaml
lorafleet plan examples/adapters-50.yaml --surrogate surrogate.bin --confirm-baselines --json
lorafleet plan examples/adapters-50.yaml --emit deploy/plan
lorafleet plan examples/adapters-50.yaml --objective min-latency --ttft-target 0.15
lorafleet plan examples/adapters-50.yaml --model llama-3.1-70b --gpu a100-80gb -tp 4
"""


def register(sub: Any) -> None:
    p = add_command(sub, "plan", examples=EXAMPLES)
    p.add_argument("adapters", type=Path, help="YAML with adapters: [{name, rank, rate, ...}]")
    p.add_argument("--gpu", default=DEFAULT_GPU, help=GPU_HELP)
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--profile", default=DEFAULT_PROFILE, help=PROFILE_HELP)
    p.add_argument("--surrogate", type=Path, help="model file from `lorafleet train` "
                   "(default: the target's own, else the shipped planner/data/surrogate.bin)")
    objectives = shown(ObjectiveName)
    p.add_argument("--objective", default=ObjectiveName.MIN_GPUS.value,
                   type=choice_type(objectives), choices=objectives,
                   help="min-gpus, or min-latency: meet --ttft-target/--e2e-target with the "
                   "fewest GPUs, or the best worst latency on --gpus N")
    p.add_argument("--ttft-target", metavar="S", help="with min-latency: median time to first "
                   "token, seconds")
    p.add_argument("--e2e-target", metavar="S", help="with min-latency: median end-to-end "
                   "latency, seconds")
    p.add_argument("--gpus", metavar="N", help="with min-latency: spread over exactly N GPUs")
    p.add_argument("--tensor-parallel-size", "-tp", default="1", metavar="N",
                   help="GPUs of each worker, as vLLM's flag: the plan, the baselines and the "
                   "lower bound count GPUs")
    p.add_argument("--search-seconds", default="1", metavar="S",
                   help="the improvement search's budget after the greedy fill")
    p.add_argument("--no-validate", action="store_true", help="skip the cluster-twin check")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the baselines (one GPU per adapter, round-robin) and the lower "
                   "bound")
    p.add_argument("--confirm-baselines", action="store_true",
                   help="add GPUs to each baseline until the cluster twin accepts it (a minute "
                   "or more at hundreds of adapters; default: the surrogate's counts)")
    p.add_argument("--duration", type=float, default=180.0, metavar="S",
                   help="twin seconds to validate")
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    p.add_argument("--emit", type=Path, metavar="DIR",
                   help="write the plan to deploy: serve-worker.sh (the `vllm serve` command "
                   "of every worker), gateway.yaml and plan.json")
    p.set_defaults(func=_plan)


def _finite(x: float, digits: int = 4) -> float | None:
    return round(x, digits) if math.isfinite(x) else None


def _plan_rows(plan: Plan, latency: list[LatencyEstimate],
               validation: Validation | None) -> list[dict[str, Any]]:
    workers = validation.result.workers if validation else [None] * len(plan.gpus)
    return [{"gpu": g.index, "max_loras": g.engine.max_loras,
             "max_cpu_loras": g.engine.cpu_loras, "max_lora_rank": g.engine.max_lora_rank,
             "adapters": sorted(g.rates), "rate_share": dict(sorted(g.rates.items())),
             "predicted_tps": round(g.predicted_tps, 1), "offered_tps": round(g.offered_tps, 1),
             "predicted_ttft_s": _finite(lat.ttft_s), "predicted_e2e_s": _finite(lat.e2e_s),
             "twin_ttft_p50_s": _finite(w.ttft_p50_s) if w else None,
             "twin_ttft_p99_s": _finite(w.ttft_p99_s) if w else None,
             "twin_e2e_p50_s": _finite(w.e2e_p50_s) if w else None}
            for g, lat, w in zip(plan.gpus, latency, workers, strict=True)]


def _seconds(flag: str, value: str | None, *, zero: bool = False) -> float | None:
    """``value`` as seconds: finite and > 0 (``zero``: >= 0); a ConfigError naming ``flag``."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and (seconds >= 0 if zero else seconds > 0)):
        raise ConfigError(flag, f"must be a number of seconds {'>=' if zero else '>'} 0, "
                                f"got {value!r}")
    return seconds


def _tensor_parallel(args: argparse.Namespace) -> int:
    value = args.tensor_parallel_size
    if not value.isdigit() or not 1 <= int(value) <= 64:
        raise ConfigError("--tensor-parallel-size", f"must be a whole number in [1, 64], "
                          f"got {value!r}")
    return int(value)


def _objective(args: argparse.Namespace) -> MinLatency | None:
    """The objective the flags ask for (None: min-gpus); a ConfigError naming a bad flag."""
    try:
        name = ObjectiveName(args.objective)
    except ValueError:
        raise ConfigError("--objective", f"must be min-gpus or min-latency, got "
                          f"{args.objective!r}") from None
    ttft = _seconds("--ttft-target", args.ttft_target)
    e2e = _seconds("--e2e-target", args.e2e_target)
    gpus = None
    if args.gpus is not None:
        gpus = int(args.gpus) if args.gpus.strip().isdigit() else 0
        if gpus < 1:
            raise ConfigError("--gpus", f"must be a whole number >= 1, got {args.gpus!r}")
    if name is ObjectiveName.MIN_GPUS:
        for flag, value in (("--ttft-target", ttft), ("--e2e-target", e2e), ("--gpus", gpus)):
            if value is not None:
                raise ConfigError(flag, "only with --objective min-latency")
        return None
    if ttft is not None and e2e is not None:
        raise ConfigError("--e2e-target", "give --ttft-target or --e2e-target, not both")
    if ttft is None and e2e is None and gpus is None:
        raise ConfigError("--objective", "min-latency needs --ttft-target, --e2e-target or "
                          "--gpus")
    metric = LatencyMetric.E2E if e2e is not None else LatencyMetric.TTFT
    return MinLatency(metric=metric, target_s=ttft if ttft is not None else e2e, gpus=gpus)


def _plan(args: argparse.Namespace) -> int:
    # Groups of GPUs that share no adapter are simulated in parallel, one process per core.
    # The processes fork here, before the status line's thread starts (a fork copies only
    # the forking thread, and no lock that thread might hold).
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        pool.submit(int).result()
        # What it is doing, on stderr while it runs (a terminal only; nothing is left).
        with Console(stderr=True).status("loading the surrogate") as status:
            return _plan_with(args, pool, status.update)


def _plan_with(args: argparse.Namespace, pool: ProcessPoolExecutor,
               stage: Callable[[str], None]) -> int:
    objective = _objective(args)
    search = _seconds("--search-seconds", args.search_seconds, zero=True)
    assert search is not None  # the flag has a default
    config = PlannerConfig(search_seconds=search, tensor_parallel_size=_tensor_parallel(args))
    target = Target.resolve(args.model, args.gpu, args.profile)
    target.check_fits(config, "--tensor-parallel-size")
    adapters = load_adapters(args.adapters)
    if args.surrogate:
        try:
            surrogate, source = Surrogate.load(args.surrogate), str(args.surrogate)
        except (OSError, ValueError) as exc:
            raise ConfigError("--surrogate", str(exc)) from None
    else:
        surrogate, source = surrogate_for(target, config.tensor_parallel_size)
    predictor = target.predictor(surrogate, config)
    n = len(adapters)
    stage(f"placing {n} adapters" + ("" if args.no_validate else
                                     f", then {args.duration:.0f} s of them in the twin"))
    baselines: dict[str, int] = {}
    accepted: dict[str, bool] = {}
    in_twin = False
    bound = simple = None
    if objective is None:
        checked = plan_checked(adapters, predictor, check=not args.no_validate,
                               duration_s=args.duration, map_fn=pool.map)
        plan, v, fewest = checked.plan, checked.validation, None
        plan_seconds, validate_seconds = checked.plan_seconds, checked.validate_seconds
    else:
        plan, v, plan_seconds, validate_seconds = _plan_latency(
            adapters, predictor, objective, args, pool)
        fewest = place_with(adapters, predictor).num_gpus
    if not args.no_baselines:
        stage("baselines" + (" in the twin" if args.confirm_baselines else "")
              + " and the lower bound")
        in_twin = args.confirm_baselines and not args.no_validate
        baselines, accepted = baselines_in_twin(adapters, predictor, args.duration,
                                                twin=in_twin, map_fn=pool.map)
        bound = lower_bound(adapters, predictor).gpus
        if len(adapters) <= SIMPLE_BOUND_MAX:
            simple = lower_bound_simple(adapters, predictor)
    rows = _plan_rows(plan, plan_latency(plan, predictor), v)
    out: dict[str, Any] = {
           "gpus": plan.num_gpus, "workers": plan.num_workers,
           "tensor_parallel_size": config.tensor_parallel_size, "placement": rows,
           "baselines": baselines, "baselines_accepted": accepted,
           "baselines_judge": "twin" if in_twin else "surrogate",
           "baselines_confirmed": accepted if in_twin else {},
           "lower_bound": bound, "lower_bound_simple": simple,
           "validated": None if v is None else v.ok,
           "measured_tps": [] if v is None else v.measured_tps,
           "plan_seconds": plan_seconds, "validate_seconds": validate_seconds, "surrogate": source}
    out.update(_latency_summary(objective, rows, v, fewest))
    if args.emit is not None:
        stage(f"writing {args.emit}")
        out["emit"] = _emit(args, plan, predictor, adapters, out, pool)
    if args.json:
        print(json.dumps(out))
    else:
        _print(out)
    if out["meets_target"] is False:
        flag = "--ttft-target" if out["latency_metric"] == "ttft" else "--e2e-target"
        print(f"lorafleet: cannot meet {flag} {out['latency_target_s']} s: "
              f"{out['target_verdict']}", file=sys.stderr)
        return 1
    return 0


def _emit(args: argparse.Namespace, plan: Plan, predictor: Predictor,
          adapters: list[AdapterDemand], out: dict[str, Any],
          pool: ProcessPoolExecutor) -> dict[str, Any]:
    """``--emit``: the files (``gateway.emit``), and the plan checked again in the twin with
    the options every worker gets when they differ from what it planned."""
    from gateway.emit import emit

    engine, files = emit(args.emit, plan, predictor, adapters, model_arg=args.model,
                         gpu_arg=args.gpu, profile=args.profile, plan_json=out)
    result: dict[str, Any] = {"files": [str(f) for f in files],
                              "max_loras": engine.max_loras,
                              "max_cpu_loras": engine.cpu_loras,
                              "max_lora_rank": engine.max_lora_rank,
                              "tensor_parallel_size": engine.tensor_parallel_size,
                              "validated": out["validated"]}
    if not args.no_validate and any(g.engine != engine for g in plan.gpus):
        same = dataclasses.replace(plan, gpus=[dataclasses.replace(g, engine=engine)
                                               for g in plan.gpus])
        check = validate(same, predictor, duration_s=args.duration, map_fn=pool.map)
        result["validated"] = check.ok
        result["starved_gpus"] = check.starved_gpus
    verdict = {None: "not checked in the twin", True: "holds in the twin",
               False: f"starves GPUs {result.get('starved_gpus')} in the twin"}
    print(f"lorafleet: wrote {', '.join(f.name for f in files)} to {args.emit}: every worker "
          f"with max_loras {engine.max_loras}, max_cpu_loras {engine.cpu_loras}, "
          f"max_lora_rank {engine.max_lora_rank}, tensor_parallel_size "
          f"{engine.tensor_parallel_size}; the plan so {verdict[result['validated']]}",
          file=sys.stderr)
    return result


def _plan_latency(adapters: list[AdapterDemand], predictor: Predictor, objective: MinLatency,
                  args: argparse.Namespace, pool: ProcessPoolExecutor,
                  ) -> tuple[Plan, Validation | None, float, float]:
    """The min-latency plan, checked in the twin and repaired for latency (unless a fixed
    GPU count was asked for); its plan and check times."""
    started = time.perf_counter()
    plan = objective.place(adapters, predictor)
    plan_seconds = time.perf_counter() - started
    if args.no_validate:
        return plan, None, plan_seconds, 0.0
    started = time.perf_counter()
    v = validate(plan, predictor, duration_s=args.duration, map_fn=pool.map)
    if objective.gpus is None:  # a fixed GPU count is kept as asked
        plan, v = repair_latency(plan, LatencyPredictor(
            predictor, objective.metric, objective.target_s), v,
            duration_s=args.duration, map_fn=pool.map)
    return plan, v, plan_seconds, time.perf_counter() - started


def _worst(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None and r["adapters"]]
    return max(values) if values else None


def _latency_summary(objective: MinLatency | None, rows: list[dict[str, Any]],
                     v: Validation | None, fewest: int | None) -> dict[str, Any]:
    """The objective and the worst GPU's predicted and twin-measured latency; with a target,
    whether it is met (by the twin when it ran, else by the prediction) and why not."""
    metric = LatencyMetric.TTFT if objective is None else objective.metric
    target = None if objective is None else objective.target_s
    predicted_key = f"predicted_{metric.value}_s"
    twin_key = "twin_ttft_p50_s" if metric is LatencyMetric.TTFT else "twin_e2e_p50_s"
    out: dict[str, Any] = {
        "objective": (ObjectiveName.MIN_GPUS if objective is None
                      else ObjectiveName.MIN_LATENCY).value,
        "latency_metric": metric.value, "latency_target_s": target,
        "gpus_requested": None if objective is None else objective.gpus,
        "min_gpus_plan_gpus": fewest,
        "predicted_worst_ttft_s": _worst(rows, "predicted_ttft_s"),
        "predicted_worst_e2e_s": _worst(rows, "predicted_e2e_s"),
        "twin_worst_ttft_p50_s": _worst(rows, "twin_ttft_p50_s"),
        "twin_worst_ttft_p99_s": _worst(rows, "twin_ttft_p99_s"),
        "twin_worst_e2e_p50_s": _worst(rows, "twin_e2e_p50_s"),
        "meets_target": None, "target_verdict": None}
    if target is None:
        return out
    if v is not None:
        over = [r["gpu"] for r in rows if r["adapters"] and not (
            r[twin_key] is not None and r[twin_key] <= target)]
        starved = list(v.starved_gpus)
        out["meets_target"] = not over and not starved
        out["target_verdict"] = (f"in the twin, GPUs {over} are above it and GPUs {starved} "
                                 "starve" if over or starved else "met in the twin")
    else:
        over = [r["gpu"] for r in rows if r["adapters"] and not (
            r[predicted_key] is not None and r[predicted_key] <= target)]
        out["meets_target"] = not over
        out["target_verdict"] = (f"GPUs {over} are predicted above it (not twin-checked)"
                                 if over else "met as predicted (not twin-checked)")
    return out


def _s(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _print(out: dict[str, Any]) -> None:
    console = Console()
    target = out["latency_target_s"]
    tp = out["tensor_parallel_size"]
    workers = (f" ({out['workers']} worker{'s' if out['workers'] != 1 else ''} at TP {tp})"
               if tp > 1 else "")
    table = Table(title=f"{out['gpus']} GPUs{workers}, {out['objective']}"
                  + (f" ({out['latency_metric'].upper()} p50 <= {target} s)" if target else "")
                  + f" (validated in the twin: {out['validated']})")
    for col in ("worker" if tp > 1 else "gpu", "max_loras", "rank", "adapters", "req/s",
                "predicted tok/s", "measured tok/s", "predicted TTFT s", "twin TTFT p50/p99 s"):
        table.add_column(col, justify="right")
    if out["latency_metric"] == "e2e":
        table.add_column("predicted / twin E2E p50 s", justify="right")
    measured = out["measured_tps"] or [None] * len(out["placement"])
    for row, m in zip(out["placement"], measured, strict=False):
        names = row["adapters"]
        shown = ", ".join(names[:4]) + (f" +{len(names) - 4}" if len(names) > 4 else "")
        cells = [str(row["gpu"]), str(row["max_loras"]), str(row["max_lora_rank"]),
                 shown, f"{sum(row['rate_share'].values()):.2f}",
                 f"{row['predicted_tps']:,.0f}", "-" if m is None else f"{m:,.0f}",
                 _s(row["predicted_ttft_s"]),
                 f"{_s(row['twin_ttft_p50_s'])} / {_s(row['twin_ttft_p99_s'])}"]
        if out["latency_metric"] == "e2e":
            cells.append(f"{_s(row['predicted_e2e_s'])} / {_s(row['twin_e2e_p50_s'])}")
        table.add_row(*cells)
    console.print(table)
    if out["min_gpus_plan_gpus"] is not None:
        console.print(f"min-gpus would use {out['min_gpus_plan_gpus']} GPUs; worst GPU's TTFT "
                      f"p50 predicted {_s(out['predicted_worst_ttft_s'])} s, twin "
                      f"{_s(out['twin_worst_ttft_p50_s'])} s (p99 "
                      f"{_s(out['twin_worst_ttft_p99_s'])} s); target: "
                      f"{out['target_verdict'] or 'none'}")
    if out["baselines"]:
        accepted = out["baselines_accepted"]
        console.print("baselines (GPUs, " + ("confirmed in the twin"
                                             if out["baselines_judge"] == "twin" else
                                             "as the surrogate judges them")
                      + "): " + ", ".join(
                          f"{k} {v}" + ("" if accepted.get(k, True) else " (not accepted)")
                          for k, v in out["baselines"].items())
                      + f"; lower bound {out['lower_bound']} (simple "
                      f"{out['lower_bound_simple'] or '-'})")
    console.print(f"planned in {out['plan_seconds']:.2f} s, validated in "
                  f"{out['validate_seconds']:.2f} s")
    if out["surrogate"] == "prior":
        console.print("surrogate: the shipped prior (`lorafleet train` makes this target's own)")
