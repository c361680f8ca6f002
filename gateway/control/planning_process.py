"""The planning process: one per gateway process, started on first use, where re-plans run
(``replan_job.run_job``: surrogate, placer, cluster twin) off the serving event loop. The
surrogate is loaded once and stays warm between re-plans."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from gateway.control.replan_job import exit_with_parent

__all__ = ["executor", "reset", "stop_planning", "submit"]


_POOL: ProcessPoolExecutor | None = None


def executor() -> ProcessPoolExecutor:
    """The planning process (one per gateway process, started on first use: the surrogate
    is loaded once and stays warm between re-plans)."""
    global _POOL
    if _POOL is None:
        _POOL = ProcessPoolExecutor(max_workers=1,
                                    mp_context=multiprocessing.get_context("spawn"),
                                    initializer=exit_with_parent, initargs=(os.getpid(),))
    return _POOL


_PENDING: set[Future[Any]] = set()  # work submitted to the planning process, not yet done


def submit(fn: Callable[..., Any], *args: Any) -> Future[Any]:
    future = executor().submit(fn, *args)
    _PENDING.add(future)
    future.add_done_callback(_PENDING.discard)
    return future


def stop_planning() -> None:
    """End the planning process now if it is busy (warming up, or a re-plan whose result
    nobody waits for any more): a process exiting would otherwise wait for that work, 6-13 s
    after a SIGTERM. An idle one is kept, for the next app in this process."""
    global _POOL
    pool = _POOL
    if pool is None or not _PENDING:
        return
    _POOL = None
    processes = list(getattr(pool, "_processes", None) or {})  # no public API before 3.14
    pool.shutdown(wait=False, cancel_futures=True)
    for pid in processes:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def reset() -> None:
    """Forget a broken planning process pool (a new one starts on next use)."""
    global _POOL
    pool, _POOL = _POOL, None
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)
