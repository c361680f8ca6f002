"""``lorafleet serve``: the gateway, with static workers or an emulated fleet.

    lorafleet serve --config gateway.yaml [--host H] [--port P]   # workers, discovery or
                                                                  # emulate: {count, ...}
    lorafleet serve --emulate N --adapters ADAPTERS.yaml [--port P] [--gpu a100-80gb]
                    [--time-scale k] [--placement planner|round-robin]

The gateway prints its URL on stdout once it is ready (a placement installed, its adapters
loaded). Invalid input ends with one line on stderr naming the field and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.cli import COMMANDS
from gateway.cli_help import GPU_HELP, MODEL_HELP
from gateway.emulator.errors import StartupError
from gateway.http import stop_signals, tune_gc, until_signalled
from gateway.keys import FLEET
from gateway.server.app import create_app, serve
from gateway.server.config import (
    GatewayConfig,
    PlacementMode,
    WorkerEndpoint,
    check_specs,
    parse_config,
    read_config,
)
from gateway.server.emulated import (
    EmulateSpec,
    emulated_config_data,
    scaffold_entries,
    start_emulated,
    worker_configs,
)
from gateway.server.lifecycle import make_plan
from gateway.server.planning import InitialPlan
from gateway.server.worker_settings import check_workers
from planner import DEFAULT_GPU, DEFAULT_MODEL, DEFAULT_PROFILE, load_adapters
from twin.errors import ConfigError
from twin.routing import RoutingPolicy

__all__ = ["register"]

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 120.0


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in 0..65535, got {value}")
    return value


def register(sub: Any) -> None:
    """Add ``serve`` to the ``lorafleet`` subcommands."""
    p = sub.add_parser("serve", help=COMMANDS["serve"][0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--config", type=Path, help="gateway.yaml with static worker URLs")
    src.add_argument("--emulate", type=int, metavar="N", help="run N emulated workers in-process")
    p.add_argument("--adapters", type=Path, help="with --emulate: the planner's adapters YAML")
    p.add_argument("--host", default=None, help="default 127.0.0.1 (or the config's)")
    p.add_argument("--port", type=_port, default=None, help="default 8080 (0: a free port)")
    p.add_argument("--gpu", default=DEFAULT_GPU, help=GPU_HELP)
    p.add_argument("--model", default=DEFAULT_MODEL, help=MODEL_HELP)
    p.add_argument("--profile", default=DEFAULT_PROFILE)
    p.add_argument("--served-model-name", default=None, help="default: the model spec's name")
    p.add_argument("--time-scale", type=float, default=1.0,
                   help="emulated workers run this many times faster than real time")
    p.add_argument("--placement", choices=[m.value for m in PlacementMode],
                   default=PlacementMode.PLANNER.value)
    p.add_argument("--routing", choices=[r.value for r in RoutingPolicy],
                   default=RoutingPolicy.PLACEMENT.value)
    p.add_argument("--adapter-dir", type=Path, default=None,
                   help="where emulated adapters are scaffolded (default: a temporary folder)")
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1, metavar="N",
                   help="with --emulate: GPUs of each worker, as vLLM's flag (default 1)")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=_serve)


def _emulated_config(args: argparse.Namespace,
                     folder: Path) -> tuple[GatewayConfig, InitialPlan]:
    """The gateway config (worker URLs are placeholders until the workers listen) and the
    plan for ``--emulate``; adapter folders are scaffolded under ``folder``."""
    if args.emulate < 1:
        raise ConfigError("--emulate", f"must be >= 1, got {args.emulate}")
    if args.adapters is None:
        raise ConfigError("--adapters", "is required with --emulate")
    check_specs({"model": args.model, "gpu": args.gpu, "profile": args.profile,
                 "tensor_parallel_size": args.tensor_parallel_size})
    demands = load_adapters(args.adapters)
    workers = tuple(WorkerEndpoint(f"w{i}", "http://127.0.0.1:1") for i in range(args.emulate))
    cfg = GatewayConfig(base_model=args.served_model_name or args.model, workers=workers,
                        adapters=scaffold_entries(demands, folder, base_model=args.model),
                        placement=PlacementMode(args.placement),
                        routing=RoutingPolicy(args.routing), gpu=args.gpu, model=args.model,
                        profile=args.profile, host=args.host or "127.0.0.1",
                        port=8080 if args.port is None else args.port,
                        tensor_parallel_size=args.tensor_parallel_size)
    return cfg, make_plan(cfg)


def _file_config(args: argparse.Namespace, folder: Callable[[], Path]
                 ) -> tuple[GatewayConfig, InitialPlan | None, EmulateSpec | None]:
    """``--config``: static workers or discovery, or ``emulate:`` (an emulated fleet started
    here, its adapters scaffolded in ``folder()`` when they give no ``path``)."""
    if args.adapters is not None:
        raise ConfigError("--adapters", "goes with --emulate; list adapters in the config")
    data = read_config(args.config)
    spec = None
    if isinstance(data, dict) and "emulate" in data:
        data, spec = emulated_config_data(data, folder())
    cfg = parse_config(data)
    if args.host is not None:
        cfg = replace(cfg, host=args.host)
    if args.port is not None:
        cfg = replace(cfg, port=args.port)
    if spec is None:
        return cfg, None, None
    cfg = replace(cfg, time_scale=spec.time_scale)
    return cfg, make_plan(cfg), spec


async def _wait_ready(app: web.Application) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT_S
    while not app[FLEET].ready:
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def _workers_settings(cfg: GatewayConfig) -> GatewayConfig:
    """The static workers' own settings, read before the first plan: a worker that
    contradicts ``worker_engine`` stops the start (``ConfigError``: exit 2); when every
    worker answered and all run the same options, the plan is made for those (a worker
    that answers later, or runs others, is read when the gateway first reaches it)."""
    assert cfg.worker_engine is not None
    async with aiohttp.ClientSession() as session:
        engines = await check_workers(session, [(w.name, w.url) for w in cfg.workers],
                                      cfg.worker_engine, dict(cfg.worker_engine_given),
                                      cfg.base_model, min(cfg.connect_timeout_s, 5.0))
    found = set(engines.values())
    if len(engines) == len(cfg.workers) and len(found) == 1:
        return replace(cfg, worker_engine=found.pop())
    return cfg


async def _main(cfg: GatewayConfig, plan: InitialPlan | None,
                spec: EmulateSpec | None) -> None:
    emulated = None
    runner = None
    stop = stop_signals()
    try:
        if spec is not None:
            assert plan is not None
            configs = worker_configs(plan, served_model_name=cfg.base_model, model=cfg.model,
                                     gpu=cfg.gpu, profile=cfg.profile,
                                     time_scale=spec.time_scale, seed=spec.seed)
            emulated = await start_emulated([replace(c, slowdown=spec.slowdown,
                                                     jitter=spec.jitter) for c in configs])
            cfg = replace(cfg, workers=tuple(WorkerEndpoint(w.name, url) for w, url in zip(
                cfg.workers, emulated.urls, strict=True)), time_scale=spec.time_scale)
        elif cfg.worker_engine is not None and cfg.workers:
            cfg = await _workers_settings(cfg)
        app = create_app(cfg, plan=plan)
        runner = await serve(app, cfg.host, cfg.port)
        port = runner.addresses[0][1]
        if not await _wait_ready(app):
            logger.warning("not ready after %.0f s; serving anyway", READY_TIMEOUT_S)
        print(f"http://{cfg.host}:{port}", flush=True)
        tune_gc()
        await until_signalled(stop)
    finally:
        if runner is not None:
            await runner.cleanup()
        if emulated is not None:
            await emulated.stop()


def _run(cfg: GatewayConfig, plan: InitialPlan | None, spec: EmulateSpec | None) -> int:
    try:
        import uvloop
        loop_runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        loop_runner = asyncio.Runner()
    with loop_runner, contextlib.suppress(KeyboardInterrupt):
        try:
            loop_runner.run(_main(cfg, plan, spec))
        except (StartupError, ConfigError) as exc:  # an emulated worker vLLM would refuse
            # to start; a state file that is not a valid lorafleet state
            print(f"lorafleet: serve: {exc}", file=sys.stderr)
            return 2
    return 0


def _serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with contextlib.ExitStack() as stack:
        def folder() -> Path:
            return args.adapter_dir or Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="lorafleet-adapters-")))

        spec: EmulateSpec | None
        plan: InitialPlan | None
        try:
            if args.emulate is not None:
                cfg, plan = _emulated_config(args, folder())
                spec = EmulateSpec(count=args.emulate, time_scale=args.time_scale)
            else:
                cfg, plan, spec = _file_config(args, folder)
        except (ConfigError, StartupError) as exc:
            print(f"lorafleet: serve: {exc}", file=sys.stderr)
            return 2
        return _run(cfg, plan, spec)
    return 0  # pragma: no cover - ExitStack does not swallow
