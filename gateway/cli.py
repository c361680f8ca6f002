"""The ``lorafleet`` command line.

Errors in what the user gave (a flag, a scenario field, a memory limit, a ``LORAFLEET_*``
variable) end with exit status 2 and one line on stderr naming it; never a traceback.

Each command lives in its own module and is imported only when it runs: ``lorafleet --help``
lists the commands from ``COMMANDS`` without loading the twin, the planner or the server.
Every command registers itself with ``add_command``: its help shows each flag's default and
ends with examples (``tests/gateway/test_cli_conventions.py`` holds every command to that).
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from twin.errors import ConfigError, InsufficientMemoryError

__all__ = ["COMMANDS", "DeprecatedAlias", "HelpFormatter", "Parser", "add_command", "main",
           "version"]

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

EXAMPLES = """\
examples:
  lorafleet demo                                         # the gateway saving GPUs, emulated
  lorafleet plan examples/adapters-50.yaml               # the fewest GPUs for 50 adapters
  lorafleet serve --worker-urls http://10.0.0.1:8000 http://10.0.0.2:8000 \\
      --adapters adapters.yaml                           # in front of running vLLM workers
  lorafleet serve --config gateway.yaml
  lorafleet admin placement                              # $LORAFLEET_URL, $LORAFLEET_ADMIN_TOKEN
  lorafleet COMMAND --help                               # a command's flags and examples
"""


def version() -> str:
    """The installed distribution's version (``unknown`` when run from a bare checkout)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("lorafleet")
    except PackageNotFoundError:  # pragma: no cover - the project is always installed here
        return "unknown"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written; each option's help ends with its default,
    unless the help already tells it or there is none to tell (``None``, an empty list, a
    switch that is off)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (not action.option_strings or "default" in text.lower()
                or default is None or default is False or default == []
                or default is argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """Usage errors as one line naming the flag (``lorafleet: serve: argument --port:
    ...``), exit status 2, like every other input error."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("lorafleet").strip()
        message = re.sub(r"^argument ([^:]+): ", r"\1: ", message)  # the flag, as a field
        where = f"{command}: " if command else ""
        print(f"lorafleet: {where}{message} (see `{self.prog} --help`)", file=sys.stderr)
        sys.exit(2)


class DeprecatedAlias(argparse.Action):
    """An old flag name, hidden from ``--help``: it sets the new flag's value and says,
    on one stderr line, which name to use."""

    def __init__(self, option_strings: Sequence[str], dest: str, *, new: str,
                 **kwargs: Any) -> None:
        kwargs["help"] = argparse.SUPPRESS
        kwargs.setdefault("default", argparse.SUPPRESS)
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        print(f"lorafleet: warning: {option_string} is deprecated; use {self.new}",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_command(sub: Any, name: str, *, examples: str, help: str | None = None,
                description: str | None = None,
                parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    """A (sub)command's parser: its one-line ``help`` (for a command, ``COMMANDS``'), the
    ``description`` (default: that line), and ``examples``, one command line a line."""
    text = COMMANDS[name][0] if help is None else help
    lines = "".join(f"  {line}\n" for line in examples.strip("\n").splitlines())
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=text, description=description or text, epilog=f"examples:\n{lines}",
        parents=list(parents), formatter_class=HelpFormatter)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names: its first argument that is not an option."""
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def _parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser, with the full options of the command ``argv`` names (only its module is
    imported; the others are listed by name and help)."""
    parser = Parser(prog="lorafleet", description=(
        "Serve hundreds of LoRA adapters on the fewest vLLM workers."), epilog=EXAMPLES,
        formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"lorafleet {version()}",
                        help="print the version and exit")
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
    try:
        args = _parser(argv).parse_args(argv)
    except SystemExit as exc:  # --help, --version (0) or a usage error (2, one line)
        return exc.code if isinstance(exc.code, int) else 0
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
