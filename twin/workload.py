"""Workloads: per-adapter arrival processes and request lengths, generated from a seed.

Arrivals: Poisson, bursty (Gamma inter-arrival times with a given coefficient of variation),
piecewise rate scales over time (by thinning), or replay of a JSONL trace of
``{timestamp, adapter, input_tokens, output_tokens}``. Lengths: fixed, uniform, normal or
lognormal (clipped to what ``max_model_len`` admits, and the clipped count is reported), or
empirical values. Each adapter draws from its own stream ``default_rng([seed, index])``, so
adding an adapter does not change the others' requests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from twin.errors import ConfigError

__all__ = ["AdapterLoad", "Arrival", "ArrivalSpec", "LengthDist", "Workload", "load_trace"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LengthDist:
    """A token-length distribution: ``dist`` is fixed, uniform, normal, lognormal or empirical.

    Examples
    --------
    >>> LengthDist(dist="fixed", value=128).sample(np.random.default_rng(0), 3).tolist()
    [128, 128, 128]
    """

    dist: str = "fixed"
    value: int = 128
    low: int = 1
    high: int = 256
    mean: float = 256.0
    std: float = 64.0
    values: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.dist not in ("fixed", "uniform", "normal", "lognormal", "empirical"):
            raise ConfigError("dist", f"must be fixed, uniform, normal, lognormal or "
                              f"empirical, got {self.dist!r}")
        if self.dist == "fixed" and self.value < 1:
            raise ConfigError("value", f"must be >= 1, got {self.value}")
        if self.dist == "uniform" and not 1 <= self.low <= self.high:
            raise ConfigError("low", f"need 1 <= low <= high, got {self.low}, {self.high}")
        if self.dist in ("normal", "lognormal") and (self.mean <= 0 or self.std < 0):
            raise ConfigError("mean", "mean must be > 0 and std >= 0")
        if self.dist == "empirical" and (not self.values or min(self.values) < 1):
            raise ConfigError("values", "must be a non-empty list of lengths >= 1")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if self.dist == "fixed":
            x = np.full(n, float(self.value))
        elif self.dist == "uniform":
            x = rng.integers(self.low, self.high + 1, size=n).astype(float)
        elif self.dist == "normal":
            x = rng.normal(self.mean, self.std, size=n)
        elif self.dist == "lognormal":
            # Parameters of the underlying normal for the requested mean and std.
            sigma2 = np.log1p((self.std / self.mean) ** 2)
            x = rng.lognormal(np.log(self.mean) - sigma2 / 2, np.sqrt(sigma2), size=n)
        else:
            x = rng.choice(np.asarray(self.values, dtype=float), size=n)
        out: np.ndarray = np.maximum(np.rint(x), 1).astype(np.int64)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class ArrivalSpec:
    """How requests arrive: ``process`` poisson or gamma (with ``cv``), optional ``piecewise``
    rate scales ``((start_s, scale), ...)`` applied to every adapter."""

    process: str = "poisson"
    cv: float = 1.0
    piecewise: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        if self.process not in ("poisson", "gamma"):
            raise ConfigError("process", f"must be poisson or gamma, got {self.process!r}")
        if self.cv <= 0:
            raise ConfigError("cv", f"must be > 0, got {self.cv}")
        if any(scale < 0 for _, scale in self.piecewise):
            raise ConfigError("piecewise", "scales must be >= 0")

    def scale_at(self, t: np.ndarray) -> np.ndarray:
        if not self.piecewise:
            return np.ones_like(t)
        starts = np.array([s for s, _ in self.piecewise])
        scales = np.array([c for _, c in self.piecewise])
        idx = np.searchsorted(starts, t, side="right") - 1
        return np.where(idx >= 0, scales[np.maximum(idx, 0)], 1.0)

    def times(self, rng: np.random.Generator, rate: float, duration_s: float) -> np.ndarray:
        """Arrival times in [0, duration) for one adapter of mean ``rate`` req/s."""
        peak = max([1.0, *(c for _, c in self.piecewise)]) if self.piecewise else 1.0
        lam = rate * peak
        if lam <= 0:
            return np.zeros(0)
        expected = lam * duration_s
        n = int(expected + 6 * np.sqrt(expected) + 16)
        if self.process == "poisson":
            gaps = rng.exponential(1.0 / lam, size=n)
        else:
            shape = 1.0 / self.cv**2
            gaps = rng.gamma(shape, 1.0 / (lam * shape), size=n)
        t = np.cumsum(gaps)
        while t[-1] < duration_s:  # rare: draw more
            more = rng.exponential(1.0 / lam, size=n) if self.process == "poisson" else \
                rng.gamma(1.0 / self.cv**2, self.cv**2 / lam, size=n)
            t = np.concatenate([t, t[-1] + np.cumsum(more)])
        t = t[t < duration_s]
        if self.piecewise:
            keep = rng.random(len(t)) < self.scale_at(t) / peak
            t = t[keep]
        return t


@dataclass(frozen=True, slots=True, kw_only=True)
class AdapterLoad:
    """One adapter's share of the load. ``rank`` 0 is the base model (no LoRA)."""

    name: str
    rank: int
    rate: float
    input: LengthDist | None = None
    output: LengthDist | None = None

    def __post_init__(self) -> None:
        if self.rate < 0:
            raise ConfigError("rate", f"must be >= 0, got {self.rate}")


@dataclass(frozen=True, slots=True)
class Arrival:
    time_ns: int
    adapter: str | None
    prompt_tokens: int
    max_tokens: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    adapters: tuple[AdapterLoad, ...]
    duration_s: float
    seed: int = 0
    arrivals: ArrivalSpec = ArrivalSpec()
    input: LengthDist = LengthDist(dist="fixed", value=512)
    output: LengthDist = LengthDist(dist="fixed", value=128)
    trace: tuple[Arrival, ...] = field(default=(), compare=False)

    def generate(self, max_model_len: int) -> tuple[list[Arrival], int]:
        """All arrivals in time order, and how many lengths were clipped to fit
        ``max_model_len`` (prompt at most ``max_model_len - 1``, output what is left)."""
        if self.trace:
            return self._clip(list(self.trace), max_model_len)
        out: list[Arrival] = []
        for i, a in enumerate(self.adapters):
            rng = np.random.default_rng([self.seed, i])
            times = self.arrivals.times(rng, a.rate, self.duration_s)
            n = len(times)
            inputs = (a.input or self.input).sample(rng, n)
            outputs = (a.output or self.output).sample(rng, n)
            name = a.name if a.rank > 0 else None
            ns = np.rint(times * 1e9).astype(np.int64)
            out.extend(Arrival(int(t), name, int(p), int(o))
                       for t, p, o in zip(ns, inputs, outputs, strict=True))
        out.sort(key=lambda r: r.time_ns)
        return self._clip(out, max_model_len)

    @staticmethod
    def _clip(arrivals: list[Arrival], max_model_len: int) -> tuple[list[Arrival], int]:
        clipped = 0
        result = []
        for a in arrivals:
            p = min(a.prompt_tokens, max_model_len - 1)
            o = min(a.max_tokens, max_model_len - p)
            if (p, o) != (a.prompt_tokens, a.max_tokens):
                clipped += 1
                a = Arrival(a.time_ns, a.adapter, p, o)
            result.append(a)
        return result, clipped


def load_trace(path: str | Path) -> tuple[Arrival, ...]:
    """Read a JSONL trace; each line ``{timestamp, adapter, input_tokens, output_tokens}``
    (timestamp in seconds; ``adapter`` null or absent for the base model)."""
    rows: list[Arrival] = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError("arrivals.trace", f"cannot read {path}: {exc.strerror}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append(Arrival(round(float(row["timestamp"]) * 1e9), row.get("adapter"),
                                int(row["input_tokens"]), int(row["output_tokens"])))
        except (ValueError, KeyError, TypeError, OverflowError) as exc:
            raise ConfigError("arrivals.trace", f"{path}:{n}: bad row ({exc})") from None
        if rows[-1].prompt_tokens < 1 or rows[-1].max_tokens < 1 or rows[-1].time_ns < 0:
            raise ConfigError("arrivals.trace", f"{path}:{n}: tokens must be >= 1, time >= 0")
    rows.sort(key=lambda r: r.time_ns)
    return tuple(rows)
