"""The ``lorafleet`` command line.

Errors in what the user gave (a scenario field, a memory limit) end with exit status 2 and one
line on stderr naming the field; never a traceback.

Each command lives in its own module and is imported only when it runs: ``lorafleet --help``
lists the commands from ``COMMANDS`` without loading the twin, the planner or the server.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from twin.errors import ConfigError, InsufficientMemoryError

__all__ = ["COMMANDS", "main"]

# command -> (its one-line help, the module whose ``function`` registers it), in --help order.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "simulate": ("run one worker's digital twin on a scenario file",
                 "gateway.simulate_cli", "register"),
    "dataset": ("run the twin on sampled workers; write a training table",
                "gateway.planner_cli", "register"),
    "train": ("train the surrogate on a dataset; save one file",
              "gateway.planner_cli", "register_models"),
    "evaluate": ("evaluate a surrogate on the held-out split",
                 "gateway.planner_cli", "register_models"),
    "plan": ("place adapters on the fewest GPUs without starvation",
             "gateway.plan_cli", "register"),
    "worker": ("serve one worker with vLLM's HTTP API", "gateway.emulator.cli", "register"),
    "fleet": ("serve N emulated workers in one process", "gateway.emulator.cli", "register"),
    "adapters": ("adapter folders for emulated workers", "gateway.emulator.cli", "register"),
    "serve": ("run the OpenAI-compatible gateway", "gateway.server.cli", "register"),
    "admin": ("call the gateway's admin API", "gateway.admin_cli", "register"),
    "demo": ("show the gateway saving GPUs on an emulated fleet",
             "gateway.demo.cli", "register"),
    "calibrate": ("fit a twin profile to a running vLLM server",
                  "gateway.calibrate.cli", "register"),
    "validate": ("run a scenario on a real server and in the twin",
                 "gateway.calibrate.cli", "register"),
}


def _command(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names: its first argument that is not an option."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def _parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser, with the full options of the command ``argv`` names (only its module is
    imported; the others are listed by name and help)."""
    parser = argparse.ArgumentParser(prog="lorafleet", description=(
        "Serve hundreds of LoRA adapters on the fewest vLLM workers."))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command = _command(argv)
    if command is not None:
        _, module, function = COMMANDS[command]
        getattr(importlib.import_module(module), function)(sub)
    for name, (text, _, _) in COMMANDS.items():
        if name not in sub.choices:
            sub.add_parser(name, help=text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser(argv).parse_args(argv)
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
