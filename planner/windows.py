"""What the gateway saw of one worker over one window (``WorkerWindow``), and the checks the
learners make of it: whether its worker was in a steady state (``steady``), at its batch limit
(``at_batch_limit``), and the rates its engine admitted when it queued (``admitted_rates``).
Shared by the latency learner (``planner.online_latency``) and the surrogate's live learning
(``planner.online_surrogate``). Pure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from planner.demand import MAX_RATE, AdapterDemand
from twin.specs import EngineConfig

__all__ = ["SATURATED_BATCH", "WorkerWindow", "admitted_rates", "at_batch_limit", "steady"]


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerWindow:
    """What the gateway saw of one worker over one window.

    Parameters
    ----------
    worker
        The worker's name (its ratios are kept apart from other workers').
    engine
        The worker's engine options (its start-up flags).
    adapters
        Per adapter (rank 0 for the base model): the observed request rate over the window,
        and the mean and standard deviation of the prompt and completion lengths (``usage``).
    itl_s
        Mean inter-token latency over the window, seconds per token, weighted by tokens:
        ``sum(e2e - ttft) / sum(completion_tokens - 1)`` over the requests that finished.
    ttft_p50_s
        Median time to first token of those requests (fed to the latency model only).
    running
        Mean of ``vllm:num_requests_running`` over the window's scrapes.
    tokens
        Inter-token intervals behind ``itl_s`` (windows with too few are not used).
    distinct_adapters
        Mean distinct adapters among the requests in flight on the worker, if the observer
        tracks it; ``None``: estimated from the rates.
    waiting
        Mean of ``vllm:num_requests_waiting`` over the window's scrapes (with a queue, the
        window is compared at the rates the engine admitted: see the module doc).
    dispatched, completed
        Requests sent to the worker and finished by it within the window (``None``: not
        counted). Their difference is the change in its in-flight count: about zero in a
        steady state, large while it fills up or drains after a migration, when the batch of
        the window's start is not the batch of its end.
    speed
        The worker's own learned speed when the window was taken (None: none yet); the
        surrogate learns the window at it (``planner.online_surrogate``).
    """

    worker: str
    engine: EngineConfig
    adapters: tuple[AdapterDemand, ...]
    itl_s: float
    ttft_p50_s: float
    running: float
    tokens: int
    distinct_adapters: float | None = None
    waiting: float = 0.0
    dispatched: int | None = None
    completed: int | None = None
    speed: float | None = None


SATURATED_BATCH = 0.9  # a queued worker whose batch is this near its limit serves capacity


def at_batch_limit(window: WorkerWindow, x: dict[str, float]) -> bool:
    """Whether the window's batch is within ``SATURATED_BATCH`` of its limit, ``max_num_seqs``
    or what the KV cache holds of the mix (``x``: its ``worker_features``): a queued worker
    there serves its capacity; below it, it queues behind the LoRA slots or fills up."""
    limit = min(float(window.engine.max_num_seqs),
                x["kv_tokens"] / max(x["mean_input"] + x["mean_output"], 1.0))
    return window.running >= SATURATED_BATCH * limit


def steady(window: WorkerWindow, sigmas: float) -> bool:
    """Whether the window's in-flight count stayed within ``sigmas`` standard deviations of
    its steady-state change, ``sqrt(2 * running)`` (always, when it did not count its
    requests)."""
    if window.dispatched is None or window.completed is None:
        return True
    moved = abs(window.dispatched - window.completed)
    return moved <= sigmas * math.sqrt(2 * max(window.running, 1.0))


def admitted_rates(window: WorkerWindow) -> WorkerWindow | None:
    """A queued window at the rates the engine admitted: with requests waiting, what it took
    into the batch per second is what it finished, not what the gateway sent (the rest
    queued). None when the window did not count its requests."""
    if not window.dispatched or window.completed is None or window.completed <= 0:
        return None
    share = window.completed / window.dispatched
    return replace(window, adapters=tuple(replace(a, rate=min(MAX_RATE, a.rate * share))
                                          for a in window.adapters))
