"""Step times slower or noisier than the profile says (``--slowdown``, ``--jitter``).

A ``StepTimeModel`` wrapper, so the twin stays as calibrated: the planner can then be shown
coping with a gap between the twin it plans with and the workers it runs on.
"""

from __future__ import annotations

import numpy as np

from twin.step_time import Num, StepTimeModel

__all__ = ["PerturbedStepTime"]


class PerturbedStepTime:
    """``inner`` times ``slowdown``, times a seeded mean-one lognormal factor per step.

    Parameters
    ----------
    inner
        The profile's step-time model.
    slowdown
        Multiplies every step time (1.0: as the profile says).
    jitter
        Standard deviation of the log of the per-step factor (0: no noise).
    seed
        Seed of the noise; the same seed and the same calls give the same times.

    Examples
    --------
    >>> from twin.specs import EngineConfig
    >>> from twin.step_time import LinearCoefficients, LinearStepTime
    >>> base = LinearStepTime(LinearCoefficients(base_s=0.01, per_token_s=0.0), EngineConfig())
    >>> round(PerturbedStepTime(base, slowdown=2.0).predict(0.0, 1.0, 10.0, 0.0), 6)
    0.02
    """

    def __init__(self, inner: StepTimeModel, *, slowdown: float = 1.0, jitter: float = 0.0,
                 seed: int = 0) -> None:
        if not slowdown > 0:
            raise ValueError(f"slowdown must be > 0, got {slowdown!r}")
        if jitter < 0:
            raise ValueError(f"jitter must be >= 0, got {jitter!r}")
        self.inner = inner
        self.slowdown = slowdown
        self.jitter = jitter
        self._rng = np.random.default_rng(seed)

    def predict(self, prefill_tokens: Num, decode_seqs: Num, context_tokens: Num,
                distinct_adapters: Num, lora_tokens: Num | None = None) -> Num:
        base = self.inner.predict(prefill_tokens, decode_seqs, context_tokens,
                                  distinct_adapters, lora_tokens) * self.slowdown
        if self.jitter == 0:
            return base
        j = self.jitter
        if isinstance(base, np.ndarray):
            return base * np.exp(self._rng.normal(-j * j / 2, j, size=base.shape))
        return float(base * np.exp(self._rng.normal(-j * j / 2, j)))
