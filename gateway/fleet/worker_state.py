"""One worker as the gateway sees it: its health (``WorkerStatus``), what it holds, and the
state ``lorafleet_worker_state`` exports for it (``WorkerPhase``).

The health status says whether it answers; the exported state says whether the gateway expects
it to serve, which is what may page someone: a worker an operator drains, or one a plan left
empty while it was healthy (retired, until the actuator removes it), is never down.

Examples
--------
>>> from gateway.config import WorkerEndpoint
>>> w = WorkerState(WorkerEndpoint("w0", "http://w0:8000"))
>>> w.status = WorkerStatus.DOWN
>>> w.phase(draining=False).value, w.phase(draining=True).value
('down', 'draining')
>>> w.retired = True  # emptied by a plan, then stopped: a scale-down, not a crash
>>> w.phase(draining=False).value
'retired'
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from gateway.config import WorkerEndpoint
from twin.specs import EngineConfig

__all__ = ["WorkerPhase", "WorkerState", "WorkerStatus"]


class WorkerStatus(enum.StrEnum):
    UP = "up"
    DOWN = "down"
    DRAINING = "draining"  # an operator's drain: alive, routed nothing new, re-planned away
    GONE = "gone"  # discovery lists it no more (scaled away): routed nothing, re-planned away


class WorkerPhase(enum.StrEnum):
    """A worker's state as ``lorafleet_worker_state{state}`` exports it: whether the gateway
    expects it to serve. Only ``DOWN`` pages: a worker the gateway took out of service
    (drained, retired) is never down, whatever its health checks say."""

    UP = "up"  # healthy and in service
    DRAINING = "draining"  # an operator drains it (routed nothing new once its adapters move)
    RETIRED = "retired"  # emptied by a plan while healthy: idle until scaled away or placed on
    DOWN = "down"  # fails its health checks while the gateway expects it to serve


@dataclass(slots=True)
class WorkerState:
    """One worker as the gateway sees it; ``engine`` is what it was started with (vLLM takes
    ``max_loras``, ``max_cpu_loras`` and ``max_lora_rank`` only at start-up), if known."""

    endpoint: WorkerEndpoint
    status: WorkerStatus = WorkerStatus.UP
    resident: set[str] = field(default_factory=set)
    engine: EngineConfig | None = None
    refreshed: set[str] = field(default_factory=set)  # stale copies unloaded (``Fleet.stale``)
    # its --max-loras as it reports it (vLLM: only once it has run a request; until then
    # ``engine`` holds the config's): gateway/fleet/worker_settings.py
    max_loras_reported: bool = False
    # a plan left it empty while it was healthy (``Fleet.set_plan``): taken out of service,
    # so it is not down if it stops (a scale-down); a plan that places on it clears it
    retired: bool = False
    # when it last sent the gateway response bytes (time.monotonic()): under load vLLM's API
    # server may answer /health late while it streams tokens; a late health check of a worker
    # that is still answering requests is not a miss (gateway/control/lifecycle.py)
    answered_at: float = float("-inf")

    @property
    def up(self) -> bool:
        return self.status is WorkerStatus.UP

    @property
    def alive(self) -> bool:
        """It answers health checks (in service, draining or retired): its GPUs run."""
        return self.status in (WorkerStatus.UP, WorkerStatus.DRAINING)

    def phase(self, draining: bool) -> WorkerPhase | None:
        """Its exported state (``draining``: an operator's drain is under way); None when
        gone: it has left the fleet and has no series."""
        if self.status is WorkerStatus.GONE:
            return None
        if draining or self.status is WorkerStatus.DRAINING:
            return WorkerPhase.DRAINING
        if self.retired:
            return WorkerPhase.RETIRED
        return WorkerPhase.DOWN if self.status is WorkerStatus.DOWN else WorkerPhase.UP
