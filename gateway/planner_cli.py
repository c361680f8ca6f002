"""CLI commands of the planner: ``dataset`` (and, as they land, ``train``, ``evaluate``,
``plan``). The process pool and the progress bar live here, in the composition root, so
``planner/`` stays pure."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gateway.cli import DeprecatedAlias, add_command
from gateway.cli_help import GPU_HELP, MODEL_HELP, PROFILE_HELP
from gateway.names import choice_type
from gateway.pretrained import train_target
from planner import (
    COLUMNS,
    DEFAULT_CLASSIFIER,
    DEFAULT_GPU,
    DEFAULT_MODEL,
    DEFAULT_PROFILE,
    DEFAULT_REGRESSOR,
    REGRESSORS,
    STARVATION_MODELS,
    TARGET_SAMPLES,
    PlannerConfig,
    RayUnavailableError,
    SampleSpec,
    Shape,
    Surrogate,
    Target,
    evaluate,
    is_home,
    load_table,
    require_ray,
    run_on_ray,
    run_sample,
    sample_specs,
    save_table,
    split,
    train,
)
from twin.catalog import get_gpu, get_model
from twin.errors import ConfigError
from twin.profile import CalibrationProfile, load_profile
from twin.specs import GpuSpec, ModelSpec

__all__ = ["register", "register_models"]


DATASET_EXAMPLES = """\
lorafleet dataset --scenarios 4000 --out data/ --workers 2
lorafleet dataset --scenarios 1200 --shape placement --out d2/ --ray auto
lorafleet dataset --scenarios 200 --model llama-3.1-70b -tp 4 --out d70/
"""


def register(sub: Any) -> None:
    ds = add_command(sub, "dataset", examples=DATASET_EXAMPLES)
    ds.add_argument("--scenarios", type=int, required=True, help="number of sampled workers")
    ds.add_argument("--out", type=Path, required=True, help="output folder (writes data.csv)")
    ds.add_argument("--workers", type=int, default=1, help="parallel processes")
    ds.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    ds.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    ds.add_argument("--gpu", default=DEFAULT_GPU, help=GPU_HELP)
    ds.add_argument("--profile", default=DEFAULT_PROFILE, help=PROFILE_HELP)
    ds.add_argument("--shape", default=Shape.SAMPLED.value, choices=[s.value for s in Shape],
                    help="sampled: random slot counts; placement: a slot per adapter, as the "
                    "placer builds workers")
    ds.add_argument("--tensor-parallel-size", "-tp", type=int, default=1, metavar="N",
                    help="GPUs of each sampled worker, as vLLM's flag")
    ds.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                    help="run the twin on Ray (the optional extra `ray`): a local Ray with "
                    "--workers CPUs, or the cluster at ADDRESS ('auto', 'ray://host:10001')")
    ds.set_defaults(func=_dataset)


def _check_twin_runs(args: argparse.Namespace) -> None:
    """The flags of twin runs that `dataset` and `train` share: --workers, --ray, -tp."""
    if args.workers < 1:
        raise ConfigError("--workers", f"must be >= 1, got {args.workers}")
    if args.ray is not None:
        try:
            require_ray()
        except RayUnavailableError as exc:
            raise ConfigError("--ray", str(exc)) from None
    if not 1 <= args.tensor_parallel_size <= 64:
        raise ConfigError("--tensor-parallel-size", f"must be in [1, 64], got "
                          f"{args.tensor_parallel_size}")


def _dataset(args: argparse.Namespace) -> int:
    if args.scenarios < 1:
        raise ConfigError("--scenarios", f"must be >= 1, got {args.scenarios}")
    _check_twin_runs(args)
    model, gpu, profile = get_model(args.model), get_gpu(args.gpu), load_profile(args.profile)
    specs = list(sample_specs(args.scenarios, args.seed, model, gpu, profile,
                              tensor_parallel_size=args.tensor_parallel_size,
                              shape=Shape(args.shape)))
    work = partial(run_sample, model=model, gpu=gpu, profile=profile)
    started = time.perf_counter()
    console = Console(stderr=True)
    with Progress(TextColumn("twin runs"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("dataset", total=len(specs))
        if args.ray is not None:
            rows = _on_ray(specs, (model, gpu, profile), args,
                           lambda k: progress.advance(task, k))
        elif args.workers == 1:
            rows = []
            for spec in specs:
                rows.append(work(spec))
                progress.advance(task)
        else:
            with ProcessPoolExecutor(args.workers) as pool:
                rows = []
                for row in pool.map(work, specs, chunksize=4):  # keeps the seed order
                    rows.append(row)
                    progress.advance(task)
    out = args.out / "data.csv"
    save_table(rows, COLUMNS, out)
    starved = sum(r["starved"] for r in rows)
    console.print(f"{len(rows)} samples ({starved:.0f} starved) in "
                  f"{time.perf_counter() - started:.1f} s -> {out}")
    return 0


def _on_ray(specs: list[SampleSpec], inputs: tuple[ModelSpec, GpuSpec, CalibrationProfile],
            args: argparse.Namespace, advance: Callable[[int], None]) -> list[dict[str, float]]:
    try:
        return run_on_ray(specs, *inputs, address=args.ray or None, num_cpus=args.workers,
                          on_rows=advance)
    except ConnectionError as exc:
        raise ConfigError("--ray", f"cannot reach Ray at {args.ray!r}: {exc}") from None


EVALUATE_EXAMPLES = "lorafleet evaluate --data data/ --surrogate surrogate.bin --json\n"


def register_models(sub: Any) -> None:
    tr = add_command(sub, "train", examples=TRAIN_EXAMPLES, description=TRAIN_DESCRIPTION)
    tr.add_argument("--data", type=Path, help="folder with data.csv: train new models on it "
                    "(without it: the target's own surrogate, from its twin)")
    tr.add_argument("--out", type=Path, help="model file to write (required with --data; "
                    "default for a target: the cache `plan` and `serve` read)")
    tr.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    tr.add_argument("--gpu", default=DEFAULT_GPU, help=GPU_HELP)
    tr.add_argument("--profile", default=DEFAULT_PROFILE, help=PROFILE_HELP)
    tr.add_argument("--tensor-parallel-size", "-tp", type=int, default=1, metavar="N",
                    help="GPUs of each worker, as vLLM's flag")
    tr.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="parallel twin processes for a target (default: every CPU)")
    tr.add_argument("--samples", type=int, default=TARGET_SAMPLES,
                    help="a target's twin runs (more: better, longer)")
    tr.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                    help="a target's twin runs on Ray (the optional extra `ray`): a local Ray "
                    "with --workers CPUs, or the cluster at ADDRESS")
    tr.add_argument("--regressor", default=DEFAULT_REGRESSOR, choices=sorted(REGRESSORS),
                    help="with --data: the River regressor of throughput")
    tr.add_argument("--classifier", default=DEFAULT_CLASSIFIER,
                    type=choice_type(STARVATION_MODELS), choices=sorted(STARVATION_MODELS),
                    help="with --data: the starvation model (capacity-*: a capacity "
                    "regressor with a margin)")
    tr.add_argument("--epochs", type=int, default=1, help="with --data: passes over the table")
    tr.add_argument("--seed", type=int, default=0, help="the models' seed")
    tr.set_defaults(func=_train)
    ev = add_command(sub, "evaluate", examples=EVALUATE_EXAMPLES)
    ev.add_argument("--data", type=Path, required=True, help="folder with data.csv")
    ev.add_argument("--surrogate", type=Path, metavar="FILE",  # required (or --model)
                    help="the surrogate file from `lorafleet train` (required)")
    ev.add_argument("--model", dest="surrogate", type=Path, action=DeprecatedAlias,
                    new="--surrogate")
    ev.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    ev.set_defaults(func=_evaluate)


def _rows(folder: Path) -> list[dict[str, float]]:
    path = folder / "data.csv" if folder.is_dir() else folder
    if not path.is_file():
        raise ConfigError("--data", f"no dataset at {path}")
    try:
        return load_table(path)
    except (ValueError, KeyError) as exc:
        raise ConfigError("--data", str(exc)) from None


TRAIN_DESCRIPTION = """\
Without --data: make the surrogate of a target (--model, --gpu, -tp) other than the shipped
one's: TARGET_SAMPLES placement-shaped workers (--samples) run in the target's twin (--ray: on
Ray) and learned on top of the shipped surrogate or alone, whichever cross-validates better;
cached where `lorafleet plan` and `lorafleet serve` find it (2-10 minutes on 2 cores).
With --data: train new models on a table from `lorafleet dataset`.
""".replace("TARGET_SAMPLES", str(TARGET_SAMPLES))
TRAIN_EXAMPLES = """\
lorafleet train --model llama-3.1-70b --gpu a100-80gb -tp 4
lorafleet train --model ./Qwen2.5-7B-Instruct --gpu h100-80gb
lorafleet train --model llama-3.2-1b --gpu l40s --samples 600 --ray auto
lorafleet train --data out/ --out surrogate.bin
"""


def _train(args: argparse.Namespace) -> int:
    if args.data is None:
        return _train_target(args)
    if args.out is None:
        raise ConfigError("--out", "required with --data")
    if args.epochs < 1:
        raise ConfigError("--epochs", f"must be >= 1, got {args.epochs}")
    train_rows, _ = split(_rows(args.data))
    started = time.perf_counter()
    with Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True)) as progress:
        task = progress.add_task("train", total=len(train_rows) * max(1, args.epochs))
        surrogate = train(train_rows, regressor=args.regressor, classifier=args.classifier,
                          seed=args.seed, epochs=args.epochs,
                          progress=lambda done, _: progress.update(task, completed=done))
    try:
        surrogate.save(args.out)
    except OSError as exc:
        raise ConfigError("--out", f"cannot write {args.out}: {exc.strerror}") from None
    Console(stderr=True).print(f"trained on {len(train_rows)} rows in "
                               f"{time.perf_counter() - started:.1f} s -> {args.out}")
    return 0


def _train_target(args: argparse.Namespace) -> int:
    if not 1 <= args.samples <= 100_000:
        raise ConfigError("--samples", f"must be in [1, 100000], got {args.samples}")
    _check_twin_runs(args)
    target = Target.resolve(args.model, args.gpu, args.profile)
    target.check_fits(PlannerConfig(tensor_parallel_size=args.tensor_parallel_size),
                      "--tensor-parallel-size")
    if args.out is not None and not args.out.parent.is_dir():
        raise ConfigError("--out", f"no folder {args.out.parent}")
    console = Console(stderr=True)
    if is_home(target, args.tensor_parallel_size) and args.out is None:
        console.print(f"{target.model.name} on {target.gpu.name}: the shipped surrogate's own "
                      "target; nothing to train")
        return 0
    started = time.perf_counter()
    with Progress(TextColumn("twin runs"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task("train", total=args.samples)
        try:
            path, own = train_target(
                target, args.tensor_parallel_size, samples=args.samples, workers=args.workers,
                out=args.out, ray=args.ray,
                progress=lambda done, _: progress.update(task, completed=done))
        except ConnectionError as exc:
            raise ConfigError("--ray", f"cannot reach Ray at {args.ray!r}: {exc}") from None
    scores = ", ".join(f"{start} {f1:.3f} / {err:.1%}" for start, (f1, err) in
                       own.scores.items())
    console.print(f"{target.model.name} on {target.gpu.name} (tensor parallel "
                  f"{args.tensor_parallel_size}): {args.samples} twin runs learned in "
                  f"{time.perf_counter() - started:.0f} s, starting from {own.start.value} "
                  f"(cross-validated near-boundary F1 / throughput SMAPE: {scores}) -> {path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    if args.surrogate is None:
        raise ConfigError("--surrogate", "is required: the surrogate file to evaluate")
    _, test_rows = split(_rows(args.data))
    try:
        surrogate = Surrogate.load(args.surrogate)
    except (OSError, ValueError) as exc:
        raise ConfigError("--surrogate", str(exc)) from None
    result = evaluate(surrogate, test_rows).to_dict()
    if args.json:
        print(json.dumps(result))
        return 0
    table = Table(title=f"surrogate on {len(test_rows)} held-out samples")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)
    return 0
