"""Test helpers: a worker slower or noisier than its profile (as the emulator's ``--slowdown``
and ``--jitter`` make it), and the windows the gateway's observer would see of a twin run."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gateway.emulator.noise import PerturbedStepTime
from planner.demand import AdapterDemand
from planner.online_latency import WorkerWindow
from twin.engine import EngineCore
from twin.profile import CalibrationProfile
from twin.specs import EngineConfig, GpuSpec, ModelSpec
from twin.step_time import StepTimeModel


@dataclass(frozen=True, slots=True, kw_only=True)
class PerturbedProfile(CalibrationProfile):
    """``profile`` whose step times are perturbed as ``PerturbedStepTime`` does (the
    emulated workers' ``--slowdown``/``--jitter``); request overhead and loads unchanged."""

    slowdown: float = 1.0
    jitter: float = 0.0
    seed: int = 0

    def step_model(self, model: ModelSpec, gpu: GpuSpec, engine: EngineConfig) -> StepTimeModel:
        inner = CalibrationProfile.step_model(self, model, gpu, engine)
        return PerturbedStepTime(inner, slowdown=self.slowdown, jitter=self.jitter,
                                 seed=self.seed)


def perturbed(profile: CalibrationProfile, *, slowdown: float = 1.0, jitter: float = 0.0,
              seed: int = 0) -> PerturbedProfile:
    fields = {f.name: getattr(profile, f.name) for f in dataclasses.fields(CalibrationProfile)}
    return PerturbedProfile(**fields, slowdown=slowdown, jitter=jitter, seed=seed)


def _stats(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std())


def gateway_windows(engine: EngineCore, ranks: dict[str, int], *, worker: str,
                    window_s: float = 60.0, scrape_s: float = 5.0,
                    warmup_s: float = 60.0) -> list[WorkerWindow]:
    """Windows of a finished twin run as the gateway sees them (``Observer.worker_window``):
    per window, the requests sent in it (rates) and the requests that finished in it
    (``usage`` lengths, TTFT, ITL from their stream), both counts, the mean of
    ``vllm:num_requests_running`` scraped every ``scrape_s``, and the mean distinct adapters
    among the requests in flight at those scrapes."""
    assert engine.steps is not None, "run the twin with record_steps=True"
    requests = [r for r in engine.requests.values() if r.finish_ns is not None]
    starts = np.asarray(engine.steps.start_ns)
    running = np.asarray(engine.steps.num_running)
    waiting = np.asarray(engine.steps.num_waiting)
    end_s = max(r.finish_ns for r in requests) / 1e9  # type: ignore[type-var]
    out = []
    t0 = warmup_s
    while t0 + window_s <= end_s:
        lo, hi = round(t0 * 1e9), round((t0 + window_s) * 1e9)
        done = [r for r in requests if lo <= r.finish_ns < hi]  # type: ignore[operator]
        sent: dict[str, int] = {}
        for r in engine.requests.values():
            if lo <= r.arrival_ns < hi:
                sent[r.adapter or "<base>"] = sent.get(r.adapter or "<base>", 0) + 1
        by_adapter: dict[str, list[tuple[int, int]]] = {}
        for r in done:
            by_adapter.setdefault(r.adapter or "<base>", []).append(
                (r.prompt_tokens, r.num_output_tokens))
        adapters = []
        for name, lens in sorted(by_adapter.items()):
            mi, si = _stats([x for x, _ in lens])
            mo, so = _stats([y for _, y in lens])
            adapters.append(AdapterDemand(name=name, rank=ranks.get(name, 0),
                                          rate=sent.get(name, 0) / window_s, input_tokens=mi,
                                          output_tokens=mo, input_std=si, output_std=so))
        gaps = sum(r.finish_ns - r.first_token_ns for r in done  # type: ignore[operator]
                   if r.num_output_tokens > 1)
        tokens = sum(r.num_output_tokens - 1 for r in done if r.num_output_tokens > 1)
        ttft = [(r.first_token_ns - r.arrival_ns) / 1e9 for r in done]  # type: ignore[operator]
        scrapes = np.arange(lo, hi, round(scrape_s * 1e9))
        idx = np.searchsorted(starts, scrapes, side="right") - 1
        batch = float(np.where(idx >= 0, running[np.maximum(idx, 0)], 0).mean())
        queue = float(np.where(idx >= 0, waiting[np.maximum(idx, 0)], 0).mean())
        distinct = float(np.mean([len({r.adapter for r in engine.requests.values()
                                       if r.adapter is not None and r.arrival_ns <= s
                                       and (r.finish_ns is None or r.finish_ns > s)})
                                  for s in scrapes]))
        out.append(WorkerWindow(
            worker=worker, engine=engine.config, adapters=tuple(adapters),
            itl_s=gaps / tokens / 1e9 if tokens else math.nan,
            ttft_p50_s=float(np.median(ttft)) if ttft else math.nan,
            running=batch, tokens=tokens, distinct_adapters=distinct, waiting=queue,
            dispatched=sum(sent.values()), completed=len(done)))
        t0 += window_s
    return out
