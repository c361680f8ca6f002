"""Online latency learning: observed inter-token latency against the profile rescales capacity.

Capacity is observable only when a worker saturates, which a good plan never lets happen;
latency is observable at any load. The gateway's observer calls ``OnlineLatency.observe`` once
per window and worker with what it can see (``WorkerWindow``); each window

1. feeds the surrogate's ``LatencyModel.learn_one`` (features from the observed demands,
   targets the observed TTFT and ITL), and
2. compares the observed mean ITL with the **expected step time**: the profile's step-time
   model evaluated at the window's observed batch. Every decode step gives each running
   request one token, so the mean inter-token latency *is* the mean step time of the steps
   those tokens came from; a worker whose steps take ``k`` times what the profile says shows
   an ITL ratio of ``k`` at any load, and serves ``1/k`` of the capacity the profile implies.

``capacity_scale()`` is ``1 / ratio``: the median ratio over recent windows (robust to a
window with a load stall), moved towards 1 by ``confidence`` standard errors of that median
(from the windows' median absolute deviation: the scale goes only as far as the evidence),
1.0 until ``min_windows`` windows qualify, clamped. ``speeds()`` is the same per worker, for
the workers with enough windows of their own (workers of one model differ: GPU generations,
throttling, noisy neighbours); the online re-plan judges each running worker at its own
speed and new ones at the fleet's.

A window with requests queued on the worker (``waiting``) is where a plan is too tight, so it
is learned from too: the inter-token latency is still the step time, at the batch the engine
runs; what changes is the load the batch was built from, which is the rate the engine
admitted (what it finished over the window), not what the gateway sent. So a queued window is
compared at the admitted rates; and when its batch is at its limit (``max_num_seqs`` or the
KV cache) the tokens it served are its capacity, a second measurement of the same speed
(``capacity_ratio``: the profile's capacity for the mix over the served tokens per second),
whose geometric mean with the latency ratio is the window's ratio.

The placer takes the scale as ``Predictor(capacity_scale=...)`` /
``PlannerConfig.capacity_scale``. On the fleet bench (emulated workers 1.05x slower with 10%
jitter, sharing one event loop with the gateway and the client) single windows read from 0.7
to 1.4 and the plain median swung the scale between 0.84 and 1.11 from one re-plan to the
next, adding and removing a GPU; in the twin, windows of a steady worker agree within 5%,
and the correction is then a percent or two. The bench's windows are heavy-tailed (one in
ten reads 2-4x, a stall on the shared loop): two standard errors from their SD kept the
scale at 1.0 for workers 1.2x slower; one standard error of the median from their MAD, over
16 windows, cut the speeds' mean |log error| by a third to a half in every setting.

The expected step time of a window (``expected_step_s``), for a batch of ``B`` running requests
(the mean of vLLM's ``vllm:num_requests_running`` over the window):

- decode sequences ``B``;
- context tokens ``B * c``, with ``c`` the mean KV length of a running request: a request
  stays in the batch for as long as its output, so the average is weighted by output length,
  ``c = E[out * (in + out/2)] / E[out]`` (by rate over the adapters; lognormal-free, only
  means and standard deviations of the lengths);
- prefill tokens per step ``lambda * in * t_obs``: the prompt tokens arriving per second
  (``lambda`` requests/s of mean prompt ``in``), spread over the ``1/t_obs`` steps per second
  the worker actually runs. Using the *observed* step rate keeps the comparison exact for a
  model linear in the prefill tokens: a worker uniformly ``k`` times slower has a ratio of
  exactly ``k``, not ``k`` inflated by the extra prefill per slower step;
- distinct adapters: the observed mean (the gateway knows the adapters of the requests it has
  in flight on the worker) or, if not given, the expected number among ``B`` requests drawn
  by the adapters' token shares (``features.expected_distinct``), at most ``max_loras``.

Pure: windows in, a number out; the observer does the I/O.
"""

from __future__ import annotations

import enum
import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from planner.demand import AdapterDemand
from planner.features import expected_distinct, worker_features
from planner.surrogate import LatencyModel
from planner.windows import WorkerWindow, admitted_rates, at_batch_limit, steady
from twin.errors import InsufficientMemoryError
from twin.profile import CalibrationProfile
from twin.specs import EngineConfig, GpuSpec, ModelSpec
from twin.step_time import StepTimeModel

__all__ = [
    "OnlineLatency",
    "SkipReason",
    "WindowObservation",
    "WorkerWindow",
    "expected_step_s",
]


def _median_error(logs: Sequence[float], centre: float) -> float:
    """Standard error of the median of ``logs``, from their median absolute deviation (the
    windows' spread is heavy-tailed: one stalled window among ten doubles their standard
    deviation, not their MAD): ``1.2533 * 1.4826 * MAD / sqrt(n)``.

    >>> round(_median_error([0.0, 0.1, -0.1, 0.05, 2.0], 0.05), 4)
    0.0415
    """
    if len(logs) < 2:
        return 0.0
    mad = statistics.median(abs(v - centre) for v in logs)
    return 1.2533 * 1.4826 * mad / math.sqrt(len(logs))


class SkipReason(enum.Enum):
    """Why a window did not count towards the scale."""

    TOO_FEW_TOKENS = "too_few_tokens"
    IDLE = "idle"
    NO_LATENCY = "no_latency"
    QUEUED = "queued"  # requests waited, and the window did not count what it admitted
    UNSTEADY = "unsteady"  # the in-flight count moved: the worker filled up or drained


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowObservation:
    """One window's comparison: observed and expected ITL and their ratio (``None`` with a
    ``skipped`` reason when the window was not used)."""

    worker: str
    observed_itl_s: float
    expected_itl_s: float
    ratio: float | None
    skipped: SkipReason | None = None
    saturated: bool = False  # requests queued: learned at the admitted rates
    capacity_ratio: float | None = None  # saturated at its batch limit: capacity / served


def _running_context(adapters: Sequence[AdapterDemand]) -> float:
    """Mean KV tokens of a running request, weighted by the time it spends running."""
    num = den = 0.0
    for a in adapters:
        out2 = a.output_tokens ** 2 + a.output_std ** 2
        num += a.rate * (a.output_tokens * a.input_tokens + out2 / 2)
        den += a.rate * a.output_tokens
    return num / den if den > 0 else 0.0


def expected_step_s(window: WorkerWindow, step: StepTimeModel, observed_itl_s: float) -> float:
    """The profile's mean step time at the window's observed batch (see the module doc).

    Examples
    --------
    >>> from twin.step_time import LinearCoefficients, LinearStepTime
    >>> engine = EngineConfig(max_loras=4)
    >>> step = LinearStepTime(LinearCoefficients(base_s=0.01, per_token_s=1e-5), engine)
    >>> w = WorkerWindow(worker="w0", engine=engine, itl_s=0.0, ttft_p50_s=0.1, running=10.0,
    ...                  tokens=1000, adapters=(AdapterDemand(name="a", rank=8, rate=2.0,
    ...                  input_tokens=500, output_tokens=100),))
    >>> round(expected_step_s(w, step, 0.012), 6)  # 10 decodes + 2*500*0.012 prefill tokens
    0.01022
    """
    batch = max(window.running, 0.0)
    rate = sum(a.rate for a in window.adapters)
    mean_in = sum(a.rate * a.input_tokens for a in window.adapters) / rate if rate > 0 else 0.0
    prefill = rate * mean_in * observed_itl_s
    context = batch * _running_context(window.adapters)
    if window.distinct_adapters is not None:
        distinct = window.distinct_adapters
    elif window.engine.enable_lora:
        shares = [a.rate * a.output_tokens for a in window.adapters if not a.is_base]
        lora_share = sum(shares) / max(sum(a.rate * a.output_tokens for a in window.adapters),
                                        1e-12)
        distinct = min(float(window.engine.max_loras),
                       expected_distinct(shares, batch * lora_share))
    else:
        distinct = 0.0
    return float(step.predict(prefill, batch, context, distinct))


class OnlineLatency:
    """Learns from observed latency windows and keeps the capacity scale for the placer.

    Parameters
    ----------
    model, gpu, profile
        What the planner plans with (the profile whose step times the workers are compared to).
    latency
        The surrogate's latency model, fed every window (``None``: not fed).
    recent
        Windows per worker the median runs over.
    min_windows
        Windows that must qualify (fleet-wide) before the scale moves off 1.0.
    min_tokens, min_running, max_waiting
        A window qualifies with at least this many ITL intervals and this mean batch, and at
        most this mean queue (``WorkerWindow.waiting``).
    steady_sigmas
        A window qualifies only if its in-flight count (``dispatched - completed``) moved by
        at most this many standard deviations of its steady-state change. In a steady state
        the requests in flight are about Poisson with mean ``running`` (an M/G/inf count),
        so the change between two instants a window apart has variance ``2 * running``.
    confidence
        Standard errors (of the median log ratio over the windows it runs over, from their
        median absolute deviation) the ratio is moved towards 1 by; 0: the plain median.
    bounds
        The scale is clamped into ``[lo, hi]``.

    Examples
    --------
    >>> from twin import get_gpu, get_model, load_profile
    >>> online = OnlineLatency(get_model("llama-3.1-8b"), get_gpu("a100-80gb"),
    ...                        load_profile("roofline-default"))
    >>> online.capacity_scale()
    1.0
    """

    def __init__(self, model: ModelSpec, gpu: GpuSpec, profile: CalibrationProfile, *,
                 latency: LatencyModel | None = None, recent: int = 16, min_windows: int = 3,
                 min_tokens: int = 200, min_running: float = 1.0, max_waiting: float = 0.5,
                 steady_sigmas: float = 3.0, confidence: float = 1.0,
                 bounds: tuple[float, float] = (0.5, 1.5)) -> None:
        if recent < 1 or min_windows < 1:
            raise ValueError("recent and min_windows: must be >= 1")
        if not 0 < bounds[0] <= 1.0 <= bounds[1]:
            raise ValueError(f"bounds: must satisfy 0 < lo <= 1 <= hi, got {bounds!r}")
        self.model = model
        self.gpu = gpu
        self.profile = profile
        self.latency = latency
        self.recent = recent
        self.min_windows = min_windows
        self.min_tokens = min_tokens
        self.min_running = min_running
        self.max_waiting = max_waiting
        self.steady_sigmas = steady_sigmas
        self.confidence = confidence
        self.bounds = bounds
        self._ratios: dict[str, deque[float]] = {}
        self._steps: dict[EngineConfig, StepTimeModel] = {}

    def _step(self, engine: EngineConfig) -> StepTimeModel:
        if engine not in self._steps:
            self._steps[engine] = self.profile.step_model(self.model, self.gpu, engine)
        return self._steps[engine]

    def observe(self, window: WorkerWindow) -> WindowObservation:
        """Learn from one window; returns its comparison (or why it was skipped)."""
        self._learn(window)
        step = self._step(window.engine)
        itl = window.itl_s
        if not (math.isfinite(itl) and itl > 0):
            return WindowObservation(worker=window.worker, observed_itl_s=itl,
                                     expected_itl_s=float("nan"), ratio=None,
                                     skipped=SkipReason.NO_LATENCY)
        queued = window.waiting > self.max_waiting
        admitted = admitted_rates(window) if queued else window
        skipped = (SkipReason.TOO_FEW_TOKENS if window.tokens < self.min_tokens
                   else SkipReason.IDLE if window.running < self.min_running
                   else SkipReason.QUEUED if admitted is None
                   else SkipReason.UNSTEADY if not queued and not steady(window, self.steady_sigmas)
                   else None)
        expected = expected_step_s(admitted or window, step, itl)
        if skipped is not None or admitted is None or expected <= 0:
            return WindowObservation(worker=window.worker, observed_itl_s=itl,
                                     expected_itl_s=expected, ratio=None,
                                     skipped=skipped or SkipReason.IDLE)
        ratio = itl / expected
        capacity = self._capacity_ratio(admitted, step) if queued else None
        if capacity is not None:  # two measurements of one speed: their geometric mean
            ratio = math.sqrt(ratio * capacity)
        self._ratios.setdefault(window.worker, deque(maxlen=self.recent)).append(ratio)
        return WindowObservation(worker=window.worker, observed_itl_s=itl,
                                 expected_itl_s=expected, ratio=ratio, saturated=queued,
                                 capacity_ratio=capacity)

    def _capacity_ratio(self, window: WorkerWindow, step: StepTimeModel) -> float | None:
        """A queued worker at its batch limit serves at its capacity: the profile's capacity
        for the window's mix over the tokens it served (``window``: admitted rates). None
        when its batch is below the limit (a queue behind the LoRA slots, not capacity)."""
        try:
            x = worker_features(window.adapters, window.engine, self.model, self.gpu, step,
                                self.profile.memory)
        except InsufficientMemoryError:
            return None
        served = x["offered_tps"]
        if not at_batch_limit(window, x) or served <= 0:
            return None
        return x["est_capacity_tps"] / served

    def _learn(self, window: WorkerWindow) -> None:
        if self.latency is None or not any(a.rate > 0 for a in window.adapters):
            return
        step = self._step(window.engine)
        try:
            x = worker_features(window.adapters, window.engine, self.model, self.gpu, step,
                                self.profile.memory)
        except InsufficientMemoryError:  # not a config a running worker can have
            return
        self.latency.learn_one(x, {"ttft_p50_s": window.ttft_p50_s, "itl_p50_s": window.itl_s})

    def ratio(self, worker: str | None = None) -> float:
        """Median observed/expected ITL over the recent windows of ``worker`` (of every
        worker, pooled, when ``None``), moved towards 1 by ``confidence`` standard errors;
        1.0 below ``min_windows`` qualifying windows."""
        if worker is None:
            values = [r for q in self._ratios.values() for r in q]
        else:
            values = list(self._ratios.get(worker, ()))
        if len(values) < self.min_windows:
            return 1.0
        logs = [math.log(v) for v in values]  # the median and MAD: a stall's size is moot
        centre = statistics.median(logs)
        error = _median_error(logs, centre)
        return math.exp(math.copysign(max(abs(centre) - self.confidence * error, 0.0), centre))

    def capacity_scale(self, worker: str | None = None) -> float:
        """The share of the profile's capacity the workers deliver: ``1 / ratio``, clamped."""
        lo, hi = self.bounds
        return min(max(1.0 / self.ratio(worker), lo), hi)

    def speed(self, worker: str) -> float | None:
        """``worker``'s own ``capacity_scale`` (1.0 = the profile) once it has
        ``min_windows`` qualifying windows of its own; None before: it (a new worker among
        others) is planned at the fleet's pooled ``capacity_scale()``, the prior."""
        if self.windows(worker) < self.min_windows:
            return None
        return self.capacity_scale(worker)

    def speeds(self) -> dict[str, float]:
        """``speed`` of every worker that has one."""
        return {w: v for w in self._ratios if (v := self.speed(w)) is not None}

    def windows(self, worker: str | None = None) -> int:
        """Qualifying windows kept (for ``worker``, or all)."""
        if worker is None:
            return sum(len(q) for q in self._ratios.values())
        return len(self._ratios.get(worker, ()))
