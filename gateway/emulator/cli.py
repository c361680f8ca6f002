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

from gateway.cli import DeprecatedAlias, add_command
from gateway.cli_help import GPU_HELP, MODEL_HELP, PROFILE_HELP, port
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
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--model-spec", dest="model", action=DeprecatedAlias, new="--model")
    p.add_argument("--gpu", default=DEFAULT_GPU, help=GPU_HELP)
    p.add_argument("--profile", default=DEFAULT_PROFILE, help=PROFILE_HELP)
    p.add_argument("--served-model-name", metavar="NAME",
                   help="the base model's name in the API, as vLLM's (default: --model)")
    p.add_argument("--max-loras", type=int, default=1,
                   help="LoRA adapters in one batch (GPU slots), as vLLM's")
    p.add_argument("--max-cpu-loras", type=int, default=0,
                   help="adapters cached in CPU memory, as vLLM's (0: same as --max-loras)")
    p.add_argument("--max-lora-rank", type=int, default=16,
                   help="the largest adapter rank, as vLLM's")
    p.add_argument("--max-num-seqs", type=int, metavar="N",
                   help="sequences in one batch, as vLLM's (default: vLLM's for the GPU)")
    p.add_argument("--max-num-batched-tokens", type=int, metavar="N",
                   help="tokens in one step, as vLLM's (default: vLLM's for the GPU)")
    p.add_argument("--max-model-len", type=int, default=4096,
                   help="the longest sequence, as vLLM's")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.92,
                   help="the share of GPU memory vLLM may use")
    p.add_argument("--lora-modules", type=parse_lora_module, nargs="+", default=[],
                   metavar="NAME=PATH", help="adapters loaded at start-up, as vLLM's "
                   "(name=path or a JSON object with name and path)")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="run the engine this many times faster than real time")
    p.add_argument("--slowdown", type=float, default=1.0, help="multiply every step time")
    p.add_argument("--jitter", type=float, default=0.0,
                   help="sd of the log of a per-step noise factor (seeded)")
    p.add_argument("--seed", type=int, default=0, help="the noise's seed (worker i: seed + i)")
    p.add_argument("--emulate-log-level", default="WARNING", help=argparse.SUPPRESS)


WORKER_EXAMPLES = """\
lorafleet worker --emulate --port 8001 --max-loras 2 --lora-modules sql=/tmp/ad/sql
lorafleet worker --emulate --model llama-3.2-1b --gpu l40s --served-model-name base
"""
FLEET_EXAMPLES = """\
lorafleet fleet --emulate 4 --base-port 9000
lorafleet fleet --emulate 16 --base-port 0 --slowdown 1.2 --jitter 0.1
"""
SCAFFOLD_EXAMPLES = "lorafleet adapters scaffold /tmp/ad --rank 8 --name sql\n"


def register(sub: Any) -> None:
    """Add ``worker``, ``fleet`` and ``adapters`` to the ``lorafleet`` subcommands."""
    worker = add_command(sub, "worker", examples=WORKER_EXAMPLES)
    worker.add_argument("--emulate", action="store_true",
                        help="emulate it with the twin (the only mode lorafleet runs)")
    worker.add_argument("--port", type=port, default=8000, help="the port to listen on "
                        "(0: a free port)")
    _engine_options(worker)
    worker.set_defaults(func=_worker)
    fleet = add_command(sub, "fleet", examples=FLEET_EXAMPLES)
    fleet.add_argument("--emulate", type=int, required=True, metavar="N",
                       help="number of emulated workers")
    fleet.add_argument("--base-port", type=port, default=8000,
                       help="worker i listens on base-port + i (0: free ports)")
    _engine_options(fleet)
    fleet.set_defaults(func=_fleet)
    adapters = add_command(sub, "adapters", examples=SCAFFOLD_EXAMPLES)
    asub = adapters.add_subparsers(dest="adapters_command", required=True, metavar="ACTION")
    scaffold = add_command(asub, "scaffold", examples=SCAFFOLD_EXAMPLES,
                           help="write an adapter folder (adapter_config.json)")
    scaffold.add_argument("dir", type=Path, help="the folder to write (DIR/NAME with --name)")
    scaffold.add_argument("--rank", type=int, required=True, help="the adapter's LoRA rank")
    scaffold.add_argument("--name", help="write DIR/NAME instead of DIR")
    scaffold.add_argument("--base-model", default=DEFAULT_MODEL,
                          help="base_model_name_or_path in adapter_config.json")
    scaffold.set_defaults(func=_scaffold)


def worker_configs(args: argparse.Namespace, count: int) -> list[WorkerConfig]:
    """``count`` worker configs from the options (worker i gets seed + i).

    Raises
    ------
    StartupError
        An option vLLM refuses.
    """
    try:
        model = get_model(args.model)
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
                         served_model_name=args.served_model_name or args.model,
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
    if args.base_port + args.emulate - 1 > 65535:
        print(f"lorafleet: fleet: --base-port: {args.base_port} + {args.emulate} workers "
              "goes past port 65535", file=sys.stderr)
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
