"""``lorafleet calibrate`` and ``lorafleet validate``.

Errors end with exit status 2 and one line naming the flag: a server that cannot be reached
(``--url``), an adapter folder without a readable ``adapter_config.json`` (``--adapter``), a
bad scenario file (its field), a scenario the server does not run (``engine.max_loras``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from gateway.calibrate.calibrate import calibrate
from gateway.calibrate.client import CalibrationError
from gateway.calibrate.sweep import QUICK, STANDARD, AdapterSource
from gateway.calibrate.validate import METRICS, Validation, relative_error, validate
from gateway.cli import DeprecatedAlias, add_command
from gateway.cli_help import MODEL_HELP, PROFILE_HELP
from twin.catalog import get_model
from twin.errors import ConfigError
from twin.profile import load_profile, save_profile
from twin.scenario import load_scenario

__all__ = ["adapter_source", "register"]


def adapter_source(path: str) -> AdapterSource:
    """An adapter folder and the rank its ``adapter_config.json`` gives (key ``r``).

    Raises
    ------
    ConfigError
        Naming ``--adapter`` when the file is missing or has no integer rank.
    """
    config = Path(path) / "adapter_config.json"
    try:
        rank = json.loads(config.read_text())["r"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ConfigError("--adapter", f"{config} is missing or has no rank 'r'") from None
    if not isinstance(rank, int) or rank < 1:
        raise ConfigError("--adapter", f"{config}: rank 'r' must be an integer >= 1")
    return AdapterSource(path=str(Path(path).resolve()), rank=rank)


def _rank_path(text: str) -> tuple[int, str]:
    rank, sep, path = text.partition("=")
    if not sep or not rank.isdigit() or not path:
        raise argparse.ArgumentTypeError(f"expected RANK=PATH, got {text!r}")
    return int(rank), path


CALIBRATE_EXAMPLES = """\
lorafleet calibrate --url http://127.0.0.1:8000 --out cpu.json --adapter /adapters/r8
lorafleet calibrate --url http://gpu1:8000 --url http://gpu2:8000 --out h100.json \\
    --adapter /adapters/r8 --adapter /adapters/r32 --model llama-3.1-8b --hardware "H100 SXM"
"""
VALIDATE_EXAMPLES = """\
lorafleet validate examples/scenarios/light-h100.yaml --url http://127.0.0.1:8000 \\
    --adapter 8=/adapters/r8 --json
"""


def register(sub: Any) -> None:
    """Add ``calibrate`` and ``validate`` to the ``lorafleet`` subcommands."""
    cal = add_command(sub, "calibrate", examples=CALIBRATE_EXAMPLES)
    cal.add_argument("--url", required=True, action="append",
                     help="the server, e.g. http://127.0.0.1:8000; repeat for servers of the "
                     "same model started with other --max-loras (one profile fits them all)")
    cal.add_argument("--out", required=True, type=Path, help="profile JSON to write")
    cal.add_argument("--adapter", action="append", default=[], metavar="PATH",
                     help="an adapter folder the server can load (repeat for other ranks)")
    cal.add_argument("--model", default="tiny-llama",
                     help=f"the model the server runs, for adapter sizes: {MODEL_HELP}")
    cal.add_argument("--model-spec", dest="model", action=DeprecatedAlias, new="--model")
    cal.add_argument("--name", help="profile name (default: --out's stem)")
    cal.add_argument("--hardware", help="hardware text for the profile source")
    cal.add_argument("--max-loras", type=int,
                     help="the servers' --max-loras (default: read from each /metrics)")
    cal.add_argument("--quick", action="store_true", help="a short sweep (tests, smoke runs)")
    cal.set_defaults(func=_calibrate)
    val = add_command(sub, "validate", examples=VALIDATE_EXAMPLES)
    val.add_argument("scenario", help="scenario YAML (see examples/scenarios/)")
    val.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8000")
    val.add_argument("--adapter", action="append", default=[], type=_rank_path,
                     metavar="RANK=PATH", help="load the scenario's rank-RANK adapters from "
                     "PATH (repeat per rank)")
    val.add_argument("--profile", help="override the scenario's profile: " + PROFILE_HELP)
    val.add_argument("--json", action="store_true", help="print one JSON object")
    val.set_defaults(func=_validate)


def _fail(flag: str, message: str) -> int:
    print(f"lorafleet: {flag}: {message}", file=sys.stderr)
    return 2


def _calibrate(args: argparse.Namespace) -> int:
    try:
        sources = [adapter_source(p) for p in args.adapter]
        model = get_model(args.model)
    except ConfigError as exc:
        return _fail(exc.field, exc.message)
    if not sources:
        return _fail("--adapter", "give at least one adapter folder the server can load")
    console = Console(stderr=True)
    try:
        profile = asyncio.run(calibrate(
            args.url, sources, QUICK if args.quick else STANDARD, model,
            name=args.name or args.out.stem, max_loras=args.max_loras,
            hardware=args.hardware, progress=lambda m: console.print(m, highlight=False)))
    except CalibrationError as exc:
        return _fail("--url", str(exc))
    try:
        save_profile(profile, args.out)
    except OSError as exc:
        return _fail("--out", f"cannot write {args.out}: {exc.strerror}")
    lin = profile.linear
    assert lin is not None
    print(f"wrote {args.out}: base {lin.base_s * 1e3:.2f} ms, "
          f"{lin.per_token_s * 1e6:.1f} us/token, {lin.per_seq_s * 1e6:.1f} us/seq, "
          f"{lin.per_context_token_s * 1e9:.1f} ns/context "
          f"token, {lin.lora.per_adapter_s * 1e3:.2f} ms/adapter, LoRA "
          f"{lin.lora.per_lora_token_s * 1e6:.1f} us/LoRA token + "
          f"{lin.lora.per_active_token_s * 1e6:.1f} us/token and "
          f"{lin.lora.per_active_step_s * 1e3:.2f} ms/step of a step with LoRA, overhead "
          f"{profile.request_overhead_s * 1e3:.1f} ms, engine time "
          f"{profile.request_cpu_s * 1e3:.1f} ms/request, fit error "
          f"{profile.source['fit']['mean_relative_error']:.1%}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    try:
        scenario = load_scenario(args.scenario)
        if args.profile:
            from dataclasses import replace
            scenario = replace(scenario, profile=load_profile(args.profile))
    except ConfigError as exc:
        return _fail("scenario" if exc.field == "scenario" else exc.field, exc.message)
    console = Console(stderr=True)
    try:
        result = asyncio.run(validate(args.url, scenario, dict(args.adapter),
                                      progress=lambda m: console.print(m, highlight=False)))
    except CalibrationError as exc:
        return _fail("--url", str(exc))
    except ConfigError as exc:
        return _fail(exc.field, exc.message)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print_validation(result, Console())
    return 0


def print_validation(v: Validation, console: Console) -> None:
    """The side-by-side table of one validation."""
    table = Table(title=f"{v.scenario}: real vs twin")
    for col in ("", "real", "twin", "error"):
        table.add_column(col, justify="right")
    for label, key in METRICS:
        real, twin = getattr(v.real, key), getattr(v.twin, key)
        table.add_row(label, f"{real:,.3f}", f"{twin:,.3f}",
                      f"{relative_error(twin, real):.1%}")
    table.add_row("starved", str(v.real.starved), str(v.twin.starved),
                  "borderline" if v.borderline else "")
    table.add_row("wall seconds", f"{v.real_wall_s:.1f}", f"{v.twin.wall_seconds:.2f}",
                  f"{v.speedup:,.0f}x faster")
    console.print(table)
    if v.real_errors or v.late_sends:
        console.print(f"real run: {v.real_errors} failed requests, {v.late_sends} sent late")
