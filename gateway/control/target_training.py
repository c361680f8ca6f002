"""The surrogate of the gateway's own target (model, GPU, profile, tensor parallel size).

The shipped surrogate was trained for A100-80GB + Llama-3.1-8B; for any other target the
gateway plans with it as the prior (it carries over: ``planner.pretrained``) and, with
``train_target`` on (the default), makes the target's own in the background, as
``lorafleet train --model M --gpu G`` does: a process of its own at the lowest CPU priority,
so serving and re-planning come first. Re-plans use it as soon as it is written; the next
start finds it in the cache at once (``gateway.pretrained.surrogate_for``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.control.replan_job import exit_with_parent
from gateway.pretrained import target_path, train_target
from planner import TARGET_SAMPLES, Target

if TYPE_CHECKING:
    from gateway.control.plane import ControlPlane

__all__ = ["SurrogateSource", "TargetSurrogate", "target_training"]

logger = logging.getLogger(__name__)

Ctx = Callable[["ControlPlane"], AsyncIterator[None]]


class SurrogateSource(Enum):
    SHIPPED = "shipped"  # the gateway's target is the shipped surrogate's
    PRIOR = "prior"  # the shipped one, for another target: none of its own (yet)
    TRAINING = "training"  # the prior, while the target's own is made
    TRAINED = "trained"  # the target's own


@dataclass(slots=True)
class TargetSurrogate:
    """Which surrogate re-plans use: ``path`` of the target's own, or "" for the shipped."""

    source: SurrogateSource = SurrogateSource.SHIPPED
    path: str = ""


def _lowest_priority(parent: int) -> None:
    with contextlib.suppress(OSError):
        os.nice(19)
    exit_with_parent(parent)


def _train(target: Target, tensor_parallel_size: int, samples: int) -> str:
    path, own = train_target(target, tensor_parallel_size, samples=samples)
    logger.info("the target's own surrogate starts from %s (cross-validated near-boundary "
                "starvation F1, throughput SMAPE: %s)", own.start.value, own.scores)
    return str(path)


async def _train_in_background(plane: ControlPlane, target: Target, tp: int,
                               samples: int) -> None:
    state = plane.surrogate
    assert state is not None
    started = time.monotonic()
    logger.info("training the surrogate of %s on %s (tensor parallel %d): %d twin runs at "
                "the lowest CPU priority; re-plans use the shipped one until then",
                target.model.name, target.gpu.name, tp, samples)
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_lowest_priority, initargs=(os.getpid(),))
    try:
        path = await asyncio.wrap_future(pool.submit(_train, target, tp, samples))
    except Exception:
        logger.exception("training the target's surrogate failed; planning with the "
                         "shipped one")
        state.source = SurrogateSource.PRIOR
        return
    finally:
        processes = list(getattr(pool, "_processes", None) or {})
        pool.shutdown(wait=False, cancel_futures=True)
        for pid in processes:  # cancelled (the gateway stops): end the twin runs now
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 15)
    state.path, state.source = path, SurrogateSource.TRAINED
    logger.info("the target's own surrogate is ready after %.0f s (%s): re-plans use it",
                time.monotonic() - started, path)


def target_training(samples: int = TARGET_SAMPLES) -> Ctx:
    """Background work (``running``): which surrogate re-plans use, and, when the target has none
    of its own, its training on ``samples`` twin runs in the background (``train_target`` on)."""

    async def ctx(plane: ControlPlane) -> AsyncIterator[None]:
        cfg = plane.cfg
        target = Target.resolve(cfg.model, cfg.gpu, cfg.profile)
        path: Path | None = target_path(target, cfg.tensor_parallel_size)
        state = plane.surrogate = TargetSurrogate()
        task = None
        if path is not None and path.is_file():
            state.path, state.source = str(path), SurrogateSource.TRAINED
        elif path is not None and cfg.train_target:
            state.source = SurrogateSource.TRAINING
            task = asyncio.create_task(_train_in_background(
                plane, target, cfg.tensor_parallel_size, samples))
        elif path is not None:
            state.source = SurrogateSource.PRIOR
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    return ctx
