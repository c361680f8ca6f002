"""The ``lorafleet`` command line.

Errors in what the user gave (a scenario field, a memory limit) end with exit status 2 and one
line on stderr naming the field; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gateway import admin_cli, plan_cli, planner_cli
from gateway.calibrate import cli as calibrate_cli
from gateway.demo import cli as demo_cli
from gateway.emulator import cli as emulator_cli
from gateway.server import cli as server_cli
from twin.errors import ConfigError, InsufficientMemoryError
from twin.results import SimulationResult
from twin.scenario import load_scenario
from twin.simulate import simulate

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lorafleet", description=(
        "Serve hundreds of LoRA adapters on the fewest vLLM workers."))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sim = sub.add_parser("simulate", help="run one worker's digital twin on a scenario file")
    sim.add_argument("scenario", help="scenario YAML (see examples/scenarios/)")
    sim.add_argument("--json", action="store_true", help="print the result as one JSON object")
    sim.add_argument("--no-fast-path", action="store_true",
                     help="step one engine step at a time (slow; for checking)")
    sim.set_defaults(func=_simulate)
    planner_cli.register(sub)
    planner_cli.register_models(sub)
    plan_cli.register(sub)
    emulator_cli.register(sub)
    server_cli.register(sub)
    admin_cli.register(sub)
    demo_cli.register(sub)
    calibrate_cli.register(sub)
    # Each further command family registers its own subparsers (and sets ``func``) here.
    return parser


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else value


def _print_summary(name: str, result: SimulationResult, console: Console) -> None:
    verdict = "[red]STARVED[/red]" if result.starved else "[green]not starved[/green]"
    table = Table(title=f"{name}: {verdict}", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    rows = [
        ("requests arrived / finished", f"{result.requests} / {result.finished}"),
        ("throughput (req/s)", f"{result.throughput_rps:.2f}"),
        ("tokens/s served / offered",
         f"{result.throughput_tps:,.0f} / {result.ideal_tps:,.0f}"),
        ("TTFT p50 / p99 (s)", f"{result.ttft_p50_s:.3f} / {result.ttft_p99_s:.3f}"),
        ("ITL p50 / p99 (s)", f"{result.itl_p50_s:.4f} / {result.itl_p99_s:.4f}"),
        ("E2E p50 / p99 (s)", f"{result.e2e_p50_s:.2f} / {result.e2e_p99_s:.2f}"),
        ("preemptions", str(result.preemptions)),
        ("LoRA loads", str(result.lora_loads)),
        ("KV blocks (tokens)", f"{result.kv_blocks:,} ({result.kv_cache_tokens:,})"),
        ("engine steps", f"{result.steps:,}"),
        ("simulated / wall (s)",
         f"{result.sim_seconds:.0f} / {result.wall_seconds:.2f} "
         f"({result.sim_seconds / max(result.wall_seconds, 1e-9):,.0f}x)"),
    ]
    if result.starved_adapters:
        shown = ", ".join(result.starved_adapters[:8])
        more = len(result.starved_adapters) - 8
        rows.append(("starved adapters", shown + (f" (+{more} more)" if more > 0 else "")))
    for label, value in rows:
        table.add_row(label, value)
    console.print(table)


def _simulate(args: argparse.Namespace) -> int:
    scenario = load_scenario(args.scenario)
    duration = scenario.workload.duration_s
    # A progress bar on stderr for runs long enough to notice (not with --json on a pipe).
    with Progress(TextColumn("simulating"), BarColumn(), TextColumn("{task.completed:.0f}/"
                  "{task.total:.0f} simulated s"), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True,
                  disable=duration < 600) as progress:
        task = progress.add_task("simulate", total=duration)
        result, _ = simulate(scenario, fast_path=not args.no_fast_path,
                             on_progress=lambda done: progress.update(task, completed=done))
    if args.json:
        data = result.to_dict()
        clean = {k: _finite(v) if isinstance(v, float) else v for k, v in data.items()}
        print(json.dumps(clean, default=str))
    else:
        _print_summary(scenario.name, result, Console())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except InsufficientMemoryError as exc:
        print(f"lorafleet: {exc}", file=sys.stderr)
        return 2
    except ConfigError as exc:
        what = "invalid scenario" if args.command == "simulate" else "invalid input"
        print(f"lorafleet: {what}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
