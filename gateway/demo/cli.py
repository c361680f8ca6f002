"""``lorafleet demo``: the gateway in front of an emulated fleet, under a demo load, showing
the GPUs it uses against the naive placements.

    lorafleet demo [--seconds N] [--time-scale K] [--workers W] [--json]

It ends after ``--seconds`` wall seconds (0: at Ctrl-C; Ctrl-C ends any run early) and
prints a summary; with ``--json`` the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live

from gateway.cli import add_command
from gateway.control.planning import InitialPlan
from gateway.demo.fleet import FleetSpec, plan_demo, start_demo
from gateway.demo.stats import DemoStats
from gateway.demo.view import plain_line, render, snapshot, summary, summary_table
from gateway.demo.workload import Arrivals, demo_adapters
from gateway.emulator.errors import StartupError
from gateway.http import tune_gc
from planner import AdapterDemand
from twin.errors import ConfigError

__all__ = ["register"]

PLAIN_EVERY_S = 5.0  # progress lines on a pipe
LIVE_EVERY_S = 0.5


EXAMPLES = """\
lorafleet demo
lorafleet demo --seconds 0 --time-scale 4          # until Ctrl-C
lorafleet demo --workers 4 --adapters 20 --rate 10 --json
"""


def register(sub: Any) -> None:
    """Add ``demo`` to the ``lorafleet`` subcommands."""
    p = add_command(sub, "demo", examples=EXAMPLES)
    p.add_argument("--seconds", type=float, default=75.0,
                   help="wall seconds of arrivals (0: until Ctrl-C), then the requests in "
                   "flight finish (at most --drain-seconds more)")
    p.add_argument("--drain-seconds", type=float, default=15.0,
                   help="how long requests in flight may finish after the arrivals end")
    p.add_argument("--time-scale", type=float, default=2.0,
                   help="workers and arrivals run this many times faster than real time")
    p.add_argument("--workers", type=int, default=8, help="emulated workers (A100-80GB each)")
    p.add_argument("--adapters", type=int, default=40, help="adapters (ranks 8/16/32)")
    p.add_argument("--rate", type=float, default=30.0,
                   help="their total rate, requests per simulated second (Zipf-skewed)")
    p.add_argument("--stream-fraction", type=float, default=0.2,
                   help="the share of requests that stream")
    p.add_argument("--concurrency", type=int, default=400, help="requests on the wire at most")
    p.add_argument("--shift-every", type=float, default=60.0, metavar="S",
                   help="rotate which adapters are hot every S simulated seconds (0: never)")
    p.add_argument("--replan-every", type=float, default=15.0, metavar="S",
                   help="wall seconds between re-plans (0: never)")
    p.add_argument("--headroom", type=float, default=0.8,
                   help="plan each GPU for its load / headroom (the planner's is 0.9: slack "
                   "for workers slower than the profile and for the shifting hot set; lower: "
                   "shorter queues, more GPUs)")
    p.add_argument("--observe-window", type=float, default=20.0, metavar="S",
                   help="wall seconds of traffic each re-plan looks at")
    p.add_argument("--slowdown", type=float, default=1.05,
                   help="workers' step times against the profile the planner knows")
    p.add_argument("--jitter", type=float, default=0.1, help="workers' step-time noise")
    p.add_argument("--seed", type=int, default=0, help="the adapters' and arrivals' seed")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    p.set_defaults(func=_demo)


def _check(args: argparse.Namespace) -> None:
    for name, ok, want in (("seconds", args.seconds >= 0, ">= 0"),
                           ("time-scale", args.time_scale > 0, "> 0"),
                           ("workers", args.workers >= 1, ">= 1"),
                           ("adapters", args.adapters >= 1, ">= 1"),
                           ("rate", args.rate > 0, "> 0"),
                           ("stream-fraction", 0 <= args.stream_fraction <= 1, "in [0, 1]"),
                           ("concurrency", args.concurrency >= 1, ">= 1"),
                           ("slowdown", args.slowdown > 0, "> 0"),
                           ("jitter", args.jitter >= 0, ">= 0")):
        if not ok:
            value = getattr(args, name.replace("-", "_"))
            raise ConfigError(f"--{name}", f"must be {want}, got {value!r}")
    if not args.shift_every >= 0:
        raise ConfigError("--shift-every", f"must be >= 0, got {args.shift_every!r}")
    if not args.replan_every >= 0:
        raise ConfigError("--replan-every", f"must be >= 0, got {args.replan_every!r}")
    if not 0 < args.headroom <= 1:
        raise ConfigError("--headroom", f"must be in (0, 1], got {args.headroom!r}")
    if not args.observe_window > 0:
        raise ConfigError("--observe-window", f"must be > 0, got {args.observe_window!r}")


async def _report(stats: DemoStats, fleet: Any, console: Console, start: float) -> None:
    start_wall = time.time()
    """Refresh the live view (a terminal) or print a progress line now and then (a pipe)."""
    loop = asyncio.get_running_loop()
    if not console.is_terminal:
        while True:
            await asyncio.sleep(PLAIN_EVERY_S)
            print(plain_line(snapshot(stats, fleet, now=loop.time(), start=start,
                                      start_wall=start_wall)),
                  flush=True)
    with Live(console=console, auto_refresh=False) as live:
        while True:
            live.update(render(snapshot(stats, fleet, now=loop.time(), start=start,
                                        start_wall=start_wall)), refresh=True)
            await asyncio.sleep(LIVE_EVERY_S)


async def _run(args: argparse.Namespace, adapters: list[AdapterDemand], plan: InitialPlan,
               folder: Path, console: Console) -> dict[str, Any]:
    from gateway.demo.load import LoadSpec, drive, make_client  # openai: a test extra

    spec = FleetSpec(workers=args.workers, slowdown=args.slowdown, jitter=args.jitter,
                     time_scale=args.time_scale, seed=args.seed,
                     replan_every_s=args.replan_every, observe_window_s=args.observe_window,
                     headroom=args.headroom)
    load = LoadSpec(time_scale=args.time_scale, stream_fraction=args.stream_fraction,
                    concurrency=args.concurrency, drain_timeout_s=args.drain_seconds,
                    seed=args.seed)
    fleet = await start_demo(adapters, plan, spec, folder)
    tune_gc()  # this process now serves (gateway, workers and load) until the demo ends
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGINT, stop.set)
    stats = DemoStats(time_scale=args.time_scale)
    start = loop.time()
    start_wall = time.time()
    timer = loop.call_later(args.seconds, stop.set) if args.seconds > 0 else None
    reporter = loop.create_task(_report(stats, fleet, console, start))
    try:
        async with make_client(fleet.url, args.concurrency) as client:
            arrivals = Arrivals(adapters, seed=args.seed,
                                shift_every_s=args.shift_every or None)
            abandoned = await drive(client, adapters, arrivals, stats, load, stop)
        wall = loop.time() - start
        return summary(stats, gpus_active=fleet.gpus_active, reading=fleet.reading(),
                       replans=fleet.replans, start_wall=start_wall, adapters=len(adapters),
                       wall_s=wall, abandoned=abandoned,
                       adapters_per_worker=fleet.adapters_per_worker())
    finally:
        if timer is not None:
            timer.cancel()
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(signal.SIGINT)
        await fleet.stop()


def _loop_runner() -> asyncio.Runner:
    try:
        import uvloop
        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.Runner()


def _demo(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _check(args)
    from gateway.pretrained import default_surrogate  # the shipped file (trained only if stale)

    console = Console()
    adapters = demo_adapters(args.adapters, total_rate=args.rate, seed=args.seed)
    if not args.json:
        console.print(f"planning {len(adapters)} adapters ({args.rate:g} req/s in all) "
                      f"for {args.workers} emulated A100-80GB workers ...")
    plan = plan_demo(adapters, FleetSpec(workers=args.workers, headroom=args.headroom),
                     default_surrogate())
    with tempfile.TemporaryDirectory(prefix="lorafleet-demo-") as folder, _loop_runner() as r:
        try:
            out = r.run(_run(args, adapters, plan, Path(folder), console))
        except StartupError as exc:
            print(f"lorafleet: demo: {exc}", file=sys.stderr)
            return 2
    console.print(summary_table(out))
    if args.json:
        print(json.dumps(out), flush=True)
    return 0 if out["failed"] == 0 else 1
