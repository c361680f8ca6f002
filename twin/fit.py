"""Fit a linear calibration profile to measured samples (pure: numbers in, profile out).

``lorafleet calibrate`` measures two kinds of rows, both in the step-time model's features
(``twin.step_time``): **step rows**, the mean decode step of a batch (vLLM's inter-token
latency while ``decode_seqs`` requests decode together), and **first-token rows**, the
time to first token of requests sent alone or in a small burst, which is the per-request
overhead (HTTP, tokenising) plus one prefill step. One least-squares fit, relative errors,
finds the step coefficients and ``request_overhead_s`` together: decode rows separate the
context cost from the batch cost, prefill rows separate the per-token from the per-sequence
cost, rows of base-model, LoRA and mixed batches separate the cost of a LoRA request's
tokens (``per_lora_token_s``) from that of every token of a step that runs any adapter
(``per_active_token_s``, ``per_active_step_s``), rows from servers started with different
``--max-loras`` give the slot terms, and the overhead is what the first-token rows take
beyond their step; first-token rows measured on a busy engine (``busy`` = 1) give what it
takes more there (``busy_overhead_s``); rows of decode steps while requests arrive
(``arrivals`` per step; a first-token row counts its own requests) give the engine time each
request takes (``request_cpu_s``, the twin's ``request_stall_ns``). A column the rows cannot
tell apart from the ones before it (e.g. the slot terms when every row has the same
``max_loras``) is left at 0.
Rows whose residual is an outlier (more than 4 median absolute deviations; a shared
machine's hiccups) are dropped once and the fit repeated. Coefficients that come out negative
are pinned to 0 and the rest refitted, so the model never predicts a step shorter for more
work.

The overhead is small beside the steps it rides on, and as a residual of the step model it
can come out at or below 0 when a loaded machine slows the decode rows more than the
first-token ones. First-token rows can carry ``outside_engine_s``: the client's time to first
token less vLLM's own (``vllm:time_to_first_token_seconds``, counted from when the API server
takes the request), measured per request. That time is spent where no engine step is (the
HTTP exchange, the event loop), so its median over the rows is a floor for the overhead: the
fit finds only what the overhead holds beyond it, never less.

A row's ``lora_tokens`` defaults to all its tokens when it has adapters (what the step model
assumes when not told), and ``max_loras`` to none (no slot columns). ``rank_slope`` is not
fitted: one ``--max-lora-rank`` is swept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from twin.profile import LoadTimes
from twin.step_time import LinearCoefficients, LoRACoefficients

__all__ = ["COLUMNS", "LinearFit", "fit_linear", "fit_load_times", "overhead_floor",
           "row_features"]

#: The fitted unknowns, in the design matrix's column order (earlier columns win a tie).
COLUMNS = ("base_s", "per_token_s", "per_seq_s", "per_context_token_s", "per_adapter_s",
           "per_lora_token_s", "per_active_step_s", "per_active_token_s", "per_slot_s",
           "per_slot_token_s", "request_overhead_s", "busy_overhead_s", "request_cpu_s")
_LORA = ("per_adapter_s", "per_lora_token_s", "per_active_step_s", "per_active_token_s",
         "per_slot_s", "per_slot_token_s")
_OUTLIER_MADS = 4.0
_OVERHEAD = COLUMNS.index("request_overhead_s")


@dataclass(frozen=True, slots=True, kw_only=True)
class LinearFit:
    """Fitted coefficients, the overhead, and how well they fit the rows kept."""

    coefficients: LinearCoefficients
    request_overhead_s: float
    busy_overhead_s: float = 0.0
    request_cpu_s: float = 0.0
    mean_relative_error: float
    rows_used: int
    rows_dropped: int
    columns_fitted: tuple[str, ...] = ()
    overhead_floor_s: float = 0.0


def row_features(s: dict[str, float]) -> list[float]:
    """One sample's design row, in ``COLUMNS`` order."""
    tokens = s["prefill_tokens"] + s["decode_seqs"]
    k = s["distinct_adapters"]
    lora = s.get("lora_tokens", tokens if k > 0 else 0.0)
    active = min(lora, 1.0)
    slots = s.get("max_loras", 0.0)
    overhead = s.get("includes_overhead", 0.0)
    return [1.0, tokens, s["decode_seqs"], s["context_tokens"], k, lora, active,
            active * tokens, slots, slots * tokens, overhead, overhead * s.get("busy", 0.0),
            s.get("arrivals", 0.0)]


def overhead_floor(samples: Sequence[dict[str, float]]) -> float:
    """The median ``outside_engine_s`` of the first-token rows that carry one (0 if none).

    Examples
    --------
    >>> rows = [{"includes_overhead": 1.0, "outside_engine_s": v} for v in (0.002, 0.003, 0.9)]
    >>> overhead_floor(rows + [{"includes_overhead": 0.0, "step_time_s": 0.01}])
    0.003
    """
    values = [s["outside_engine_s"] for s in samples
              if s.get("includes_overhead", 0.0) and "outside_engine_s" in s]
    return max(0.0, float(np.median(values))) if values else 0.0


def _design(samples: Sequence[dict[str, float]]) -> tuple[np.ndarray, np.ndarray]:
    x = np.array([row_features(s) for s in samples])
    y = np.array([s["step_time_s"] for s in samples])
    return x, y


def _identifiable(x: np.ndarray) -> list[int]:
    """Columns that add rank to the ones before them (scaled to unit norm)."""
    norms = np.linalg.norm(x, axis=0)
    keep: list[int] = []
    for j in range(x.shape[1]):
        if norms[j] == 0:
            continue
        trial = [*keep, j]
        z = x[:, trial] / norms[trial]
        if np.linalg.matrix_rank(z, tol=1e-8 * np.sqrt(len(x))) == len(trial):
            keep.append(j)
    return keep


def _nonnegative_lstsq(x: np.ndarray, y: np.ndarray, free: list[int]) -> np.ndarray:
    """Least squares over ``free`` columns with negative coefficients pinned to 0."""
    free = list(free)
    coef = np.zeros(x.shape[1])
    while free:
        sol, *_ = np.linalg.lstsq(x[:, free], y, rcond=None)
        if np.all(sol >= 0):
            coef[free] = sol
            break
        free.pop(int(np.argmin(sol)))
    return coef


def fit_linear(samples: Sequence[dict[str, float]]) -> LinearFit:
    """Fit the linear step-time model and the per-request overhead.

    Each sample has ``prefill_tokens``, ``decode_seqs``, ``context_tokens``,
    ``distinct_adapters``, ``step_time_s``, optionally ``lora_tokens`` and ``max_loras``,
    and, for first-token rows, ``includes_overhead`` = 1 (``step_time_s`` is then the time
    to first token) and optionally ``outside_engine_s`` (the overhead's floor,
    ``overhead_floor``).

    Examples
    --------
    >>> def row(p, b, ctx, k, overhead=0.0):
    ...     t = 0.004 + 5e-5 * (p + b) + 5e-5 * b + 1e-6 * ctx + 0.002 * k + overhead
    ...     return {"prefill_tokens": p, "decode_seqs": b, "context_tokens": ctx,
    ...             "distinct_adapters": k, "includes_overhead": float(overhead > 0),
    ...             "step_time_s": t}
    >>> rows = [row(0.0, b, c * b, k) for b in (1.0, 8.0, 64.0) for c in (20.0, 400.0)
    ...         for k in (1.0, 2.0)]
    >>> rows += [row(p, 0.0, p, 1.0, overhead=0.01) for p in (16.0, 256.0)]
    >>> fit = fit_linear(rows)
    >>> round(fit.request_overhead_s, 4), round(fit.coefficients.per_token_s, 6)
    (0.01, 5e-05)
    """
    if len(samples) < 6:
        raise ValueError(f"need at least 6 samples, got {len(samples)}")
    x, y = _design(samples)
    free = _identifiable(x)
    # The floor is known: fit what the overhead holds beyond it (the floor's share of each
    # first-token row is taken off before the fit and put back in its predictions).
    floor = overhead_floor(samples)
    known = floor * x[:, _OVERHEAD]
    # Relative least squares: divide each row by its measurement.
    w = 1.0 / y
    coef = _nonnegative_lstsq(x * w[:, None], (y - known) * w, free)
    rel = (x @ coef + known - y) / y
    # A floor of 0.1%: rows of an exact fit are not outliers of its rounding errors.
    mad = max(float(np.median(np.abs(rel - np.median(rel)))), 1e-3)
    keep = np.abs(rel - np.median(rel)) <= _OUTLIER_MADS * 1.4826 * mad
    if keep.sum() >= len(free) and not keep.all():
        coef = _nonnegative_lstsq(x[keep] * w[keep, None], (y - known)[keep] * w[keep], free)
    rel = (x[keep] @ coef + known[keep] - y[keep]) / y[keep]
    c = dict(zip(COLUMNS, (float(v) for v in coef), strict=True))
    lora = LoRACoefficients(**{name: c[name] for name in _LORA})
    return LinearFit(
        coefficients=LinearCoefficients(base_s=c["base_s"], per_token_s=c["per_token_s"],
                                        per_seq_s=c["per_seq_s"],
                                        per_context_token_s=c["per_context_token_s"],
                                        lora=lora),
        request_overhead_s=floor + c["request_overhead_s"],
        busy_overhead_s=c["busy_overhead_s"],
        request_cpu_s=c["request_cpu_s"],
        mean_relative_error=float(np.mean(np.abs(rel))),
        rows_used=int(keep.sum()), rows_dropped=int((~keep).sum()),
        columns_fitted=tuple(COLUMNS[j] for j in free), overhead_floor_s=floor)


def fit_load_times(disk: Sequence[tuple[int, float]],
                   cpu_to_gpu: Sequence[tuple[int, float]]) -> LoadTimes:
    """Adapter load times from ``(adapter bytes, seconds)`` pairs: ``latency + bytes/rate``
    by least squares per tier; a tier whose time does not grow with size (or with one size
    measured) gets its median as latency and an unbounded rate.

    Examples
    --------
    >>> lt = fit_load_times([(1000, 0.011), (2000, 0.012)], [(1000, 0.002)])
    >>> round(lt.disk_latency_s, 4), round(lt.disk_bytes_per_s), lt.cpu_to_gpu_latency_s
    (0.01, 1000000, 0.002)
    """

    def tier(points: Sequence[tuple[int, float]], default: tuple[float, float]
             ) -> tuple[float, float]:
        if not points:
            return default
        size = np.array([p[0] for p in points], dtype=float)
        secs = np.array([max(p[1], 0.0) for p in points])
        if len(set(size.tolist())) > 1:
            slope, intercept = np.polyfit(size, secs, 1)
            if slope > 0 and intercept >= 0:
                return float(intercept), float(1.0 / slope)
        return float(np.median(secs)), 1e15

    d_lat, d_rate = tier(disk, (LoadTimes().disk_latency_s, LoadTimes().disk_bytes_per_s))
    g_lat, g_rate = tier(cpu_to_gpu, (LoadTimes().cpu_to_gpu_latency_s,
                                      LoadTimes().cpu_to_gpu_bytes_per_s))
    return LoadTimes(disk_latency_s=d_lat, disk_bytes_per_s=d_rate,
                     cpu_to_gpu_latency_s=g_lat, cpu_to_gpu_bytes_per_s=g_rate)
