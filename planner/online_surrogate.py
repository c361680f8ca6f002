"""Live windows into the surrogate's River models: what a worker served, on top of the
twin-trained prior.

A window (``windows.WorkerWindow``) says what the gateway sent a worker and, when the
worker queued, what it admitted: the rate it finished, its capacity for that mix. Each one
becomes a row (``live_row``) the models learn from with ``learn_one``, as the twin's rows
trained them:

- the features of what the worker held, at the rates it was **sent**, in the profile's
  seconds: divided by the speed the plan assumed for the worker (``WorkerWindow.speed``, as
  ``Predictor(capacity_scale=...)`` divides a slower worker's rates), so that a slow worker
  teaches the models once, through its speed, not twice;
- served tokens/s: the offered ones, or with a queue the share it admitted
  (``completed / dispatched``) of them, only when its batch is at its limit
  (``windows.SATURATED_BATCH`` of ``max_num_seqs`` or of what the KV cache holds): a
  queue behind a batch below it is a transient (a hot adapter just moved in: requests
  dispatched in a window are still running at its end) or a queue for LoRA slots, and on the
  fleet bench such windows, read as capacity, taught the models a capacity too low (8 GPUs
  at the end, 6.3 on average, at the default setting);
- starved: served below ``surrogate.SATURATED`` of the offered tokens.

``ThroughputModel`` learns the served share; ``StarvationModel`` the capacity (what a
saturated worker served, at least what an unsaturated one served) and the label. The
weighting is the models' own: the capacity model is a nearest-neighbour mean over 6 rows
(``NearestRegressor``), so one live window among the twin's rows moves a prediction near it
by at most a sixth of its difference, and six consistent ones near a mix replace the prior
there; the forests move a little per row. A window is learned only once its worker has a
speed of its own (before, the speed the plan assumed is the fleet's or the profile's, and a
slow worker would be taught twice once its speed is learned).

Pure: windows in, ``learn_one`` calls out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from planner.features import worker_features
from planner.surrogate import SATURATED, Surrogate
from planner.windows import WorkerWindow, at_batch_limit, steady
from twin.errors import InsufficientMemoryError
from twin.profile import CalibrationProfile
from twin.specs import GpuSpec, ModelSpec

__all__ = ["LiveRow", "learn_live", "live_row"]


@dataclass(frozen=True, slots=True)
class LiveRow:
    """One window as a training row: features at the profile's speed, tokens/s served and
    offered (in the profile's seconds)."""

    x: dict[str, float]
    served_tps: float
    offered_tps: float

    @property
    def starved(self) -> bool:
        return self.served_tps < SATURATED * self.offered_tps


def live_row(window: WorkerWindow, model: ModelSpec, gpu: GpuSpec,
             profile: CalibrationProfile, *, max_waiting: float = 0.5,
             steady_sigmas: float = 3.0) -> LiveRow | None:
    """``window`` as a row (see the module doc); None without a speed of its own, without
    load, with an engine vLLM would not start, or unqueued but filling up or draining (its
    in-flight count moved more than ``steady_sigmas`` of a steady state's)."""
    speed = window.speed
    if speed is None or not (math.isfinite(speed) and speed > 0):
        return None
    if not any(a.rate > 0 for a in window.adapters):
        return None
    queued = window.waiting > max_waiting
    if queued and not (window.dispatched and window.completed is not None):
        return None
    if not queued and not steady(window, steady_sigmas):
        return None
    sent = [replace(a, rate=a.rate / speed) for a in window.adapters]
    step = profile.step_model(model, gpu, window.engine)
    try:
        x = worker_features(sent, window.engine, model, gpu, step, profile.memory)
    except InsufficientMemoryError:
        return None
    if queued and not at_batch_limit(window, x):  # at capacity only there (the module doc)
        return None
    offered = x["offered_tps"]
    share = min(1.0, window.completed / window.dispatched) if queued else 1.0  # type: ignore[operator]
    return LiveRow(x, offered * share, offered)


def learn_live(surrogate: Surrogate, rows: Iterable[LiveRow]) -> int:
    """Each row into the throughput and starvation models (``learn_one``); how many."""
    n = 0
    for row in rows:
        surrogate.throughput.learn_one(row.x, row.served_tps, row.offered_tps)
        surrogate.starvation.learn_one(row.x, row.starved, row.served_tps, row.offered_tps)
        n += 1
    return n
