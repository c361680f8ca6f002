"""HTTP plumbing shared by the gateway and the emulated workers: serving an aiohttp app and
waiting for the signal to stop."""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web

__all__ = ["serve", "until_signalled"]


async def serve(app: web.Application, host: str, port: int, *,
                shutdown_timeout: float = 60.0) -> web.AppRunner:
    """Serve ``app`` with handler cancellation on (a client that leaves cancels its handler,
    which aborts its request); the caller cleans the runner up. ``runner.cleanup()`` shuts
    down gracefully: it closes the listening sockets, lets requests in flight (streams
    included) finish for up to ``shutdown_timeout`` seconds, cancels the rest, then runs the
    app's cleanup."""
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=shutdown_timeout)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


async def until_signalled() -> None:
    """Return on SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
