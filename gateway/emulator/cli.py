"""CLI commands of the emulated workers: ``worker --emulate``, ``fleet --emulate N`` and
``adapters scaffold``.

Options vLLM refuses at start-up (memory, ``max_cpu_loras < max_loras``, a rank outside
vLLM's set, a ``--lora-modules`` entry with no adapter) end with one line on stderr and exit
status 2, before anything listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import web

from gateway.cli import COMMANDS
from gateway.cli_help import GPU_HELP, MODEL_HELP
from gateway.emulator.adapters import scaffold_adapter
from gateway.emulator.app import create_app, serve
from gateway.emulator.config import LoraModule, WorkerConfig
from gateway.emulator.errors import StartupError
from gateway.http import stop_signals, tune_gc, until_signalled
from planner import DEFAULT_GPU, DEFAULT_MODEL, DEFAULT_PROFILE
from twin.catalog import get_gpu, get_model
from twin.errors import ConfigError
from twin.profile import load_profile
from twin.specs import default_engine_for

__all__ = ["parse_lora_module", "register", "worker_configs"]


def parse_lora_module(text: str) -> LoraModule:
    """vLLM's ``--lora-modules`` entry: ``name=path`` or a JSON object with name and path.

    Examples
    --------
    >>> parse_lora_module("sql=/adapters/sql")
    LoraModule(name='sql', path='/adapters/sql')
    """
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
            return LoraModule(str(data["name"]), str(data["path"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise argparse.ArgumentTypeError(f"invalid LoRA module JSON: {text}") from None
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected name=path, got {text!r}")
    return LoraModule(name, path)


def _engine_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--model-spec", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--gpu", default=DEFAULT_GPU, help=GPU_HELP)
    p.add_argument("--profile", default=DEFAULT_PROFILE, help="profile name or JSON path")
    p.add_argument("--served-model-name", default=None, help="default: the model spec's name")
    p.add_argument("--max-loras", type=int, default=1)
    p.add_argument("--max-cpu-loras", type=int, default=0, help="0: same as --max-loras")
    p.add_argument("--max-lora-rank", type=int, default=16)
    p.add_argument("--max-num-seqs", type=int, default=None)
    p.add_argument("--max-num-batched-tokens", type=int, default=None)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.92)
    p.add_argument("--lora-modules", type=parse_lora_module, nargs="+", default=[],
                   metavar="NAME=PATH")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="run the engine this many times faster than real time")
    p.add_argument("--slowdown", type=float, default=1.0, help="multiply every step time")
    p.add_argument("--jitter", type=float, default=0.0,
                   help="sd of the log of a per-step noise factor (seeded)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--emulate-log-level", default="WARNING", help=argparse.SUPPRESS)


def register(sub: Any) -> None:
    """Add ``worker``, ``fleet`` and ``adapters`` to the ``lorafleet`` subcommands."""
    worker = sub.add_parser("worker", help=COMMANDS["worker"][0])
    worker.add_argument("--emulate", action="store_true",
                        help="emulate it with the twin (the only mode lorafleet runs)")
    worker.add_argument("--port", type=int, default=8000, help="0: pick a free port")
    _engine_options(worker)
    worker.set_defaults(func=_worker)
    fleet = sub.add_parser("fleet", help=COMMANDS["fleet"][0])
    fleet.add_argument("--emulate", type=int, required=True, metavar="N",
                       help="number of emulated workers")
    fleet.add_argument("--base-port", type=int, default=8000,
                       help="worker i listens on base-port + i (0: free ports)")
    _engine_options(fleet)
    fleet.set_defaults(func=_fleet)
    adapters = sub.add_parser("adapters", help=COMMANDS["adapters"][0])
    asub = adapters.add_subparsers(dest="adapters_command", required=True, metavar="COMMAND")
    scaffold = asub.add_parser("scaffold", help="write an adapter folder (adapter_config.json)")
    scaffold.add_argument("dir", type=Path)
    scaffold.add_argument("--rank", type=int, required=True)
    scaffold.add_argument("--name", default=None, help="write DIR/NAME instead of DIR")
    scaffold.add_argument("--base-model", default=DEFAULT_MODEL)
    scaffold.set_defaults(func=_scaffold)


def worker_configs(args: argparse.Namespace, count: int) -> list[WorkerConfig]:
    """``count`` worker configs from the options (worker i gets seed + i).

    Raises
    ------
    StartupError
        An option vLLM refuses.
    """
    try:
        model = get_model(args.model_spec)
        gpu = get_gpu(args.gpu)
        profile = load_profile(args.profile)
        overrides: dict[str, object] = {
            "max_loras": args.max_loras, "max_lora_rank": args.max_lora_rank,
            "max_cpu_loras": args.max_cpu_loras or None, "max_model_len": args.max_model_len,
            "gpu_memory_utilization": args.gpu_memory_utilization}
        if args.max_num_seqs is not None:
            overrides["max_num_seqs"] = args.max_num_seqs
        if args.max_num_batched_tokens is not None:
            overrides["max_num_batched_tokens"] = args.max_num_batched_tokens
        engine = default_engine_for(gpu, **overrides)
    except ConfigError as exc:
        raise StartupError(f"invalid option: {exc}") from None
    return [WorkerConfig(model=model, gpu=gpu, profile=profile, engine=engine,
                         served_model_name=args.served_model_name or args.model_spec,
                         lora_modules=tuple(args.lora_modules), time_scale=args.time_scale,
                         slowdown=args.slowdown, jitter=args.jitter, seed=args.seed + i)
            for i in range(count)]


def _run(main: Callable[[], Coroutine[Any, Any, None]]) -> int:
    try:
        import uvloop
        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        runner = asyncio.Runner()
    with runner, contextlib.suppress(KeyboardInterrupt):
        runner.run(main())
    return 0


async def _serve_until_stopped(apps: list[web.Application], host: str,
                               ports: list[int]) -> None:
    runners = []
    stop = stop_signals()
    try:
        for app, port in zip(apps, ports, strict=True):
            runner = await serve(app, host, port)
            runners.append(runner)
            address = runner.addresses[0]
            print(f"http://{host}:{address[1]}", flush=True)
        tune_gc()
        await until_signalled(stop)
    finally:
        for runner in runners:
            await runner.cleanup()


def _start(args: argparse.Namespace, count: int, ports: list[int]) -> int:
    import logging
    logging.basicConfig(level=args.emulate_log_level.upper(), stream=sys.stderr)
    try:
        apps = [create_app(cfg) for cfg in worker_configs(args, count)]
    except StartupError as exc:
        print(f"lorafleet: {exc}", file=sys.stderr)
        return 2
    return _run(lambda: _serve_until_stopped(apps, args.host, ports))


def _worker(args: argparse.Namespace) -> int:
    if not args.emulate:
        print("lorafleet: worker: only --emulate is supported (run vLLM itself for a real "
              "worker)", file=sys.stderr)
        return 2
    return _start(args, 1, [args.port])


def _fleet(args: argparse.Namespace) -> int:
    if args.emulate < 1:
        print(f"lorafleet: fleet: --emulate must be >= 1, got {args.emulate}", file=sys.stderr)
        return 2
    ports = [0 if args.base_port == 0 else args.base_port + i for i in range(args.emulate)]
    return _start(args, args.emulate, ports)


def _scaffold(args: argparse.Namespace) -> int:
    folder = args.dir / args.name if args.name else args.dir
    try:
        path = scaffold_adapter(folder, rank=args.rank, base_model=args.base_model)
    except (ValueError, OSError) as exc:
        print(f"lorafleet: adapters scaffold: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0
