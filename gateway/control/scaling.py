"""Asking the actuator (``gateway.fleet.kube``) for more or fewer workers after a re-plan.

- **Up**: a migration whose ``added`` is non-empty means the plan needs more GPUs than run
  (its adapters are folded onto running workers meanwhile, and past their capacity get 429):
  ask for ``present + len(added)`` workers, ``present`` being the workers not gone (a gone
  worker is one discovery lists no more: a StatefulSet's replica count is the present ones).
- **Down**: when the highest-numbered present workers are left empty (by StatefulSet ordinal,
  else by position), ask for the count below them: a StatefulSet scale-down removes exactly
  those pods. Workers emptied lower down stay up, idle (reported retired).

The same target is not asked twice within ``SETTLE_S`` (pods take minutes to start), and no
scale-down is asked while a scale-up is still arriving. Each call is bounded by
``CALL_TIMEOUT_S`` on top of the actuator's own timeout, and its outcome is logged, counted
(``lorafleet_scale_requests_total{direction, outcome}``) and kept as ``last`` for the re-plan
result.

Examples
--------
>>> down_target(["w0", "w1", "w2", "w3"], [True, False, False, False])
1
>>> down_target(["vllm-0", "vllm-2", "vllm-1"], [False, True, False]) is None  # vllm-2 holds
True
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.fleet.kube import Actuator, ActuatorError, NoActuator, ordinal
from gateway.fleet.metrics import GatewayMetrics
from gateway.fleet.registry import Fleet, WorkerStatus

__all__ = ["ScaleAction", "ScaleDirection", "ScaleOutcome", "Scaler", "down_target",
           "present"]

logger = logging.getLogger(__name__)

SETTLE_S = 600.0  # how long a requested size stands before the same request is made again
CALL_TIMEOUT_S = 120.0  # a safety net: the actuators time out on their own (10 s, 60 s)


class ScaleDirection(enum.StrEnum):
    UP = "up"
    DOWN = "down"


class ScaleOutcome(enum.StrEnum):
    """``lorafleet_scale_requests_total{outcome}``."""

    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"  # the same size was asked for recently, or no actuator is set


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleAction:
    """One request to the actuator and what came of it."""

    direction: ScaleDirection
    workers: int  # the size asked for
    present: int  # workers present when asked
    outcome: ScaleOutcome
    actuator: str
    error: str | None = None
    seconds: float = 0.0
    at: float = 0.0  # Unix time

    def as_dict(self) -> dict[str, Any]:
        return {"direction": self.direction.value, "workers": self.workers,
                "present": self.present, "outcome": self.outcome.value,
                "actuator": self.actuator, "error": self.error,
                "seconds": round(self.seconds, 3), "at": self.at}


def present(fleet: Fleet) -> list[int]:
    """Indexes of the workers not gone (discovery still lists them, or static ones)."""
    return [i for i, w in enumerate(fleet.workers) if w.status is not WorkerStatus.GONE]


def _rank(name: str, position: int) -> tuple[int, int]:
    o = ordinal(name)
    return (position, position) if o is None else (o, position)


def down_target(names: Sequence[str], holds: Sequence[bool]) -> int | None:
    """The worker count left when the highest-numbered workers (by ordinal, else position)
    that hold nothing go; None when the highest one holds something. At least one stays."""
    order = sorted(range(len(names)), key=lambda i: _rank(names[i], i))
    empty = 0
    for i in reversed(order):
        if holds[i]:
            break
        empty += 1
    if empty == 0:
        return None
    return max(1, len(names) - empty)


class Scaler:
    """Turns a migration's ``added`` and retired workers into actuator calls."""

    def __init__(self, actuator: Actuator | None,
                 metrics: GatewayMetrics | None = None) -> None:
        self.actuator: Actuator = actuator if actuator is not None else NoActuator()
        self.metrics = metrics  # GatewayMetrics, or None in unit tests
        self.last: ScaleAction | None = None
        self._asked: tuple[int, float] | None = None  # (size, monotonic time) last asked OK

    async def after(self, fleet: Fleet, added: int) -> ScaleAction | None:
        """Ask for what the fleet now needs: ``added`` more workers, or fewer when its
        highest-numbered workers hold nothing; None when nothing is to be asked."""
        here = present(fleet)
        if added > 0:
            return await self.scale(ScaleDirection.UP, len(here) + added, len(here))
        if self._arriving(len(here)):
            return None  # a scale-up is on its way: its workers are not empty, just new
        names = [fleet.workers[i].endpoint.name for i in here]
        holds = [_routed(fleet, i) for i in here]
        target = down_target(names, holds)
        if target is None or target >= len(here):
            return None
        return await self.scale(ScaleDirection.DOWN, target, len(here))

    def _arriving(self, count: int) -> bool:
        if self._asked is None:
            return False
        size, when = self._asked
        return size > count and time.monotonic() - when < SETTLE_S

    async def scale(self, direction: ScaleDirection, workers: int,
                    count: int) -> ScaleAction:
        """Call the actuator (unless the same size was asked within ``SETTLE_S``)."""
        name = type(self.actuator).__name__
        if isinstance(self.actuator, NoActuator) or (
                self._asked is not None and self._asked[0] == workers
                and time.monotonic() - self._asked[1] < SETTLE_S):
            if isinstance(self.actuator, NoActuator):
                await self.actuator.scale_to(workers)  # logs the wish
            return self._record(ScaleAction(direction=direction, workers=workers,
                                            present=count, outcome=ScaleOutcome.SKIPPED,
                                            actuator=name, at=time.time()))
        started = time.perf_counter()
        error = None
        try:
            await asyncio.wait_for(self.actuator.scale_to(workers), CALL_TIMEOUT_S)
        except (ActuatorError, TimeoutError) as exc:
            error = str(exc) or type(exc).__name__
        seconds = time.perf_counter() - started
        if error is None:
            self._asked = (workers, time.monotonic())
            logger.info("scaled %s to %d workers (%d present) in %.2f s", direction.value,
                        workers, count, seconds)
        else:
            logger.warning("scaling %s to %d workers failed: %s", direction.value, workers,
                           error)
        return self._record(ScaleAction(
            direction=direction, workers=workers, present=count,
            outcome=ScaleOutcome.OK if error is None else ScaleOutcome.FAILED,
            actuator=name, error=error, seconds=seconds, at=time.time()))

    def _record(self, action: ScaleAction) -> ScaleAction:
        self.last = action
        if self.metrics is not None:
            self.metrics.scale_requests.labels(action.direction.value,
                                               action.outcome.value).inc()
        return action


def _routed(fleet: Fleet, index: int) -> bool:
    """The plan routes something (adapters or base-model requests) to worker ``index``."""
    return fleet.plan is not None and bool(fleet.plan.workers[index].shares)
