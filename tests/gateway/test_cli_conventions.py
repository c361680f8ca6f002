"""Conventions every ``lorafleet`` command keeps: help on every flag, defaults shown, an
example in every (sub)command's help, ``--version``, usage errors on one line, and the old
names (``--model-spec``, ``round_robin``) still accepted."""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import COMMANDS, DeprecatedAlias, HelpFormatter, _parser, main, version

# hidden on purpose: the emulated worker's own log level (tests and benchmarks set it)
HIDDEN = {"--emulate-log-level"}


def parsers() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every command's parser and every subcommand's below it, by their ``prog``."""
    for name in COMMANDS:
        stack = [_subparsers(_parser([name]))[name]]
        while stack:
            parser = stack.pop()
            yield parser.prog, parser
            stack.extend(_subparsers(parser).values())


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_the_walk_reaches_every_command_and_subcommand() -> None:
    progs = {prog for prog, _ in parsers()}
    assert {f"lorafleet {name}" for name in COMMANDS} <= progs
    assert {"lorafleet admin drain", "lorafleet admin undrain",
            "lorafleet adapters scaffold"} <= progs


ALL = list(parsers())


@pytest.mark.parametrize(("prog", "parser"), ALL, ids=[prog for prog, _ in ALL])
def test_every_flag_has_help_and_every_command_an_example(
        prog: str, parser: argparse.ArgumentParser) -> None:
    assert parser.formatter_class is HelpFormatter, prog
    epilog = parser.epilog or ""
    assert epilog.startswith("examples:\n") and f"{prog} " in epilog, (prog, epilog)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        flag = "/".join(action.option_strings) or action.dest
        if action.help == argparse.SUPPRESS:  # hidden: an old name, or internal
            assert isinstance(action, DeprecatedAlias) or flag in HIDDEN, (prog, flag)
            continue
        assert action.help and action.help.strip(), (prog, flag)
        shown = HelpFormatter(prog)._get_help_string(action) or ""
        if action.option_strings and action.default not in (None, False, [],
                                                            argparse.SUPPRESS):
            assert "default" in shown.lower(), (prog, flag)
    parser.format_help()  # every help string formats (a stray % would raise here)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"lorafleet {version()}"
    assert version().count(".") >= 1


def test_console_version() -> None:
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "--version"],
                          capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.startswith("lorafleet ") and done.returncode == 0


@pytest.mark.parametrize(("argv", "line"), [
    (["plan"], "lorafleet: plan: the following arguments are required: adapters"),
    (["serve", "--emulate", "x"], "lorafleet: serve: --emulate: invalid int value: 'x'"),
    (["serve", "--port", "high", "--emulate", "1"],
     "lorafleet: serve: --port: must be a whole number, got 'high'"),
    (["plan", "a.yaml", "--objective", "fastest"],
     "lorafleet: plan: --objective: invalid choice: 'fastest'"),
    (["admin", "drain"], "lorafleet: admin drain: the following arguments are required: "
                         "worker"),
    (["serve", "--log-level", "loud", "--emulate", "1"],
     "lorafleet: serve: --log-level: invalid choice: 'loud'"),
    (["nope"], "lorafleet: COMMAND: invalid choice: 'nope'"),
    (["worker", "--emulate", "--port", "70000"],
     "lorafleet: worker: --port: must be in 0..65535, got 70000"),
])
def test_usage_errors_are_one_line(argv: list[str], line: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(line), err
    assert err[0].endswith("--help`)")


def test_choices_take_either_spelling() -> None:
    args = _parser(["serve"]).parse_args(["serve", "--emulate", "1", "--placement",
                                          "round_robin", "--routing", "least_outstanding"])
    assert (args.placement, args.routing) == ("round-robin", "least-outstanding")
    args = _parser(["serve"]).parse_args(["serve", "--emulate", "1", "--log-level", "debug"])
    assert args.log_level == "DEBUG"


@pytest.mark.parametrize(("command", "old", "new", "dest"), [
    (["worker", "--emulate"], "--model-spec", "--model", "model"),
    (["fleet", "--emulate", "2"], "--model-spec", "--model", "model"),
    (["calibrate", "--url", "http://x", "--out", "p.json"], "--model-spec", "--model", "model"),
    (["evaluate", "--data", "d"], "--model", "--surrogate", "surrogate"),
])
def test_old_names_still_work_and_say_the_new_one(
        command: list[str], old: str, new: str, dest: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    parser = _parser(command)
    args = parser.parse_args([*command, old, "llama-3.2-1b"])
    assert str(getattr(args, dest)) == "llama-3.2-1b"
    assert capsys.readouterr().err.strip() == \
        f"lorafleet: warning: {old} is deprecated; use {new}"
    args = parser.parse_args([*command, new, "llama-3.2-1b"])
    assert str(getattr(args, dest)) == "llama-3.2-1b" and capsys.readouterr().err == ""
    assert old not in _subparsers(parser)[command[0]].format_help()  # hidden from --help


def test_evaluate_needs_a_surrogate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--data", str(tmp_path)]) == 2
    assert "--surrogate: is required" in capsys.readouterr().err


def test_a_fleet_past_the_last_port_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fleet", "--emulate", "2", "--base-port", "65535"]) == 2
    assert capsys.readouterr().err.strip() == \
        "lorafleet: fleet: --base-port: 65535 + 2 workers goes past port 65535"
