"""HTTP plumbing shared by the gateway and the emulated workers: serving an aiohttp app and
waiting for the signal to stop."""

from __future__ import annotations

import asyncio
import gc
import signal
from collections.abc import Callable

from aiohttp import web

__all__ = ["GC_GEN0_THRESHOLD", "serve", "stop_signals", "tune_gc", "until_signalled"]

# Container allocations between young-generation collections once serving (CPython's default
# is 700). Measured on the gateway at concurrency 32 (bench/gateway_overhead.py's load): the
# default spends about 0.03 CPU seconds per 1000 requests in the collector, some 12% of the
# gateway's CPU, most of it re-scanning the start-up heap (pydantic schemas, numpy, River);
# frozen start-up objects and this threshold bring it under 0.001.
GC_GEN0_THRESHOLD = 20_000


async def serve(app: web.Application, host: str, port: int, *,
                shutdown_timeout: float = 60.0,
                site: Callable[[web.AppRunner], web.BaseSite] | None = None) -> web.AppRunner:
    """Serve ``app`` with handler cancellation on (a client that leaves cancels its handler,
    which aborts its request); the caller cleans the runner up. ``runner.cleanup()`` shuts
    down gracefully: it closes the listening sockets, lets requests in flight (streams
    included) finish for up to ``shutdown_timeout`` seconds, cancels the rest, then runs the
    app's cleanup. ``site`` makes the listening site (default: aiohttp's ``TCPSite``)."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=shutdown_timeout)
    await runner.setup()
    await (web.TCPSite(runner, host, port) if site is None else site(runner)).start()
    return runner


def tune_gc() -> None:
    """For a process that now serves until it stops (the CLIs call it once, when ready):
    move what start-up allocated out of the collector's sight (``gc.freeze``: it lives as
    long as the process) and collect the young generation less often: per-request objects
    are freed by reference counting; the cyclic collector only catches the rare cycle."""
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(GC_GEN0_THRESHOLD, gen0), gen1, gen2)


def stop_signals() -> asyncio.Event:
    """An event set on SIGINT or SIGTERM. Install it before the process says it is ready: a
    signal that came between the ready line and the handlers killed the process without its
    cleanup (no drain, no state saved)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def until_signalled(stop: asyncio.Event | None = None) -> None:
    """Return on SIGINT or SIGTERM (``stop``: from ``stop_signals``, installed earlier)."""
    await (stop or stop_signals()).wait()
