"""``lorafleet simulate``: run one worker's digital twin on a scenario file."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gateway.cli import add_command
from twin.results import SimulationResult
from twin.scenario import load_scenario
from twin.simulation import simulate

__all__ = ["register"]

EXAMPLES = """\
lorafleet simulate examples/scenarios/light-h100.yaml
lorafleet simulate examples/scenarios/saturated-a100.yaml --json
"""


def register(sub: Any) -> None:
    sim = add_command(sub, "simulate", examples=EXAMPLES)
    sim.add_argument("scenario", help="scenario YAML (see examples/scenarios/)")
    sim.add_argument("--json", action="store_true", help="print the result as one JSON object")
    sim.add_argument("--no-fast-path", action="store_true",
                     help="step one engine step at a time (slow; for checking)")
    sim.set_defaults(func=_simulate)


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
