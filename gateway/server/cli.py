"""``lorafleet serve``: the gateway, in front of running workers or an emulated fleet.

    lorafleet serve --worker-urls URL [URL ...] [--adapters FILE] [--api-key KEY]
    lorafleet serve --config gateway.yaml [--host H] [--port P]   # workers, discovery or
                                                                  # emulate: {count, ...}
    lorafleet serve --emulate N --adapters ADAPTERS.yaml [--port P] [--gpu a100-80gb]
                    [--time-scale k] [--placement planner|round-robin]
    lorafleet serve --print-config-schema          # gateway.yaml's JSON Schema, for editors

``LORAFLEET_<FIELD>`` variables override the config's top-level fields and the flags
override both (``gateway/config/env.py``, ``serve_config.py``). The gateway prints
its URL on stdout once it is ready (a placement installed, its adapters loaded). Invalid
input ends with one line on stderr naming the field, flag or variable and exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from gateway.cli import add_command
from gateway.cli_help import GPU_HELP, LOG_LEVELS, MODEL_HELP, PROFILE_HELP, log_level, port
from gateway.config import GatewayConfig, PlacementMode, WorkerEndpoint
from gateway.config.schema import schema_text
from gateway.control.planning import InitialPlan
from gateway.emulator.errors import StartupError
from gateway.fleet.worker_settings import check_workers
from gateway.http import stop_signals, tune_gc, until_signalled
from gateway.names import choice_type, shown
from gateway.server.app import create_app, serve
from gateway.server.emulated import EmulateSpec, start_emulated, worker_configs
from gateway.server.keys import FLEET
from gateway.server.serve_config import serve_config
from planner import DEFAULT_GPU, DEFAULT_MODEL, DEFAULT_PROFILE
from twin.errors import ConfigError
from twin.routing import RoutingPolicy

__all__ = ["register"]

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 120.0

EXAMPLES = """\
lorafleet serve --worker-urls http://10.0.0.1:8000 http://10.0.0.2:8000 --adapters adapters.yaml
lorafleet serve --worker-urls http://10.0.0.1:8000 --served-model-name llama-3.1-8b --api-key sk-1
lorafleet serve --config gateway.yaml --port 9000
LORAFLEET_REPLAN_INTERVAL_S=30 lorafleet serve --config gateway.yaml
LORAFLEET_REDIS_URL=redis://redis:6379/0 lorafleet serve --config gateway.yaml --host 0.0.0.0
lorafleet serve --emulate 4 --adapters examples/adapters-50.yaml --time-scale 10
lorafleet serve --print-config-schema > gateway.schema.json   # for editors of gateway.yaml
"""

DESCRIPTION = """\
Run the OpenAI-compatible gateway: in front of running vLLM workers (--worker-urls, or
--config gateway.yaml), or of N emulated workers in this process (--emulate N). It prints its
URL once its placement is loaded.

Settings come from the flags, over LORAFLEET_<FIELD> environment variables (any top-level
field of gateway.yaml that holds one value: LORAFLEET_PORT=9000,
LORAFLEET_VALIDATE_REPLANS=false), over the config file, over the defaults.
LORAFLEET_REDIS_URL sets redis.url: replicas on one Redis, one leading (re-plans,
migrations, scaling), all serving. gateway.yaml's
base_model is the name clients send (--served-model-name); its model is the model the
planner's twin assumes the workers run (--model)."""


def register(sub: Any) -> None:
    """Add ``serve`` to the ``lorafleet`` subcommands."""
    p = add_command(sub, "serve", examples=EXAMPLES, description=DESCRIPTION)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--worker-urls", nargs="+", metavar="URL",
                     help="running vLLM workers (named w0, w1, ...), without a config file")
    src.add_argument("--config", type=Path, metavar="FILE", help="gateway.yaml: workers "
                     "(static URLs, discovery or emulate:), adapters and every other setting")
    src.add_argument("--emulate", type=int, metavar="N",
                     help="run N emulated workers in this process")
    src.add_argument("--print-config-schema", action="store_true",
                     help="print gateway.yaml's JSON Schema (deploy/gateway.schema.json: "
                     "completion and checks in editors) and exit")
    p.add_argument("--adapters", type=Path, metavar="FILE",
                   help="with --worker-urls or --emulate: adapters: [{name, rank, rate, "
                   "path, ...}] (gateway.yaml's; --emulate scaffolds those without a path)")
    p.add_argument("--api-key", metavar="KEY", help="a key clients must send as "
                   "Authorization: Bearer KEY, as vLLM's --api-key (added to the config's "
                   "keys; default: none, an open gateway unless the config has keys)")
    p.add_argument("--served-model-name", metavar="NAME",
                   help="the base model's name, as clients send it and the workers serve it "
                   "(gateway.yaml's base_model; default: with --worker-urls, the name the "
                   "first worker lists in /v1/models; with --emulate, --model)")
    p.add_argument("--model", help=f"{MODEL_HELP}; the planner's twin assumes the workers "
                   f"run it (gateway.yaml's model; default {DEFAULT_MODEL})")
    p.add_argument("--gpu", help=f"{GPU_HELP} (default {DEFAULT_GPU})")
    p.add_argument("--profile", help=f"{PROFILE_HELP} (default {DEFAULT_PROFILE})")
    p.add_argument("--tensor-parallel-size", "-tp", type=int, metavar="N",
                   help="GPUs of each worker, as vLLM's flag (default 1)")
    placements = shown(PlacementMode)
    p.add_argument("--placement", type=choice_type(placements), choices=placements,
                   help="the initial placement: the planner's, or adapters dealt round-robin "
                   "(default planner)")
    routings = shown(RoutingPolicy)
    p.add_argument("--routing", type=choice_type(routings), choices=routings,
                   help="how requests pick among an adapter's workers (default placement: "
                   "the plan's shares)")
    p.add_argument("--host", help="the address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=port, help="the port to listen on (default 8080; 0: a free "
                   "port)")
    p.add_argument("--time-scale", type=float, metavar="K", help="emulated workers run this "
                   "many times faster than real time (default 1)")
    p.add_argument("--adapter-dir", type=Path, metavar="DIR", help="where an emulated fleet's "
                   "adapters are scaffolded (default: a temporary folder)")
    p.add_argument("--log-level", type=log_level, choices=LOG_LEVELS, default="INFO",
                   help="the gateway's log level")
    p.set_defaults(func=_serve)


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
    if args.print_config_schema:
        print(schema_text(), end="")
        return 0
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with contextlib.ExitStack() as stack:
        def folder() -> Path:
            return args.adapter_dir or Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="lorafleet-adapters-")))

        try:
            cfg, plan, spec = serve_config(args, folder, os.environ)
        except (ConfigError, StartupError) as exc:
            print(f"lorafleet: serve: {exc}", file=sys.stderr)
            return 2
        return _run(cfg, plan, spec)
    return 0  # pragma: no cover - ExitStack does not swallow
