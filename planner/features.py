"""The feature schema, frozen: one definition shared by the dataset, the surrogate, the placer
and the gateway's observer.

Every feature describes one worker (GPU) over a window and is computable from live traffic:
request rates per adapter and token counts from responses' ``usage``, the adapters' ranks from
their ``adapter_config.json``, the engine options from the worker's start-up flags. Rates are
requests per second over the window (the gateway uses 60 s), lengths are tokens per request.

The paper's features (PAPER.md) come first; lorafleet adds length statistics, the configured
``max_lora_rank``, burstiness, base-model load, KV capacity, and an analytic capacity estimate
from the worker's step-time model (``est_capacity_tps``) with the offered load over it
(``load_ratio``): the learned models correct that estimate instead of rediscovering physics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from twin.memory import MemoryOverheads, plan_memory
from twin.specs import ALLOWED_LORA_RANKS, EngineConfig, GpuSpec, ModelSpec
from twin.step_time import StepTimeModel

__all__ = [
    "FEATURES",
    "MAX_CV",
    "MAX_RATE",
    "MAX_TOKENS",
    "AdapterDemand",
    "adapter_name_error",
    "capacity_estimate",
    "demand_error",
    "expected_distinct",
    "worker_features",
]

FEATURES: tuple[str, ...] = (
    # The paper's (per instance).
    "sum_rate", "std_rate", "max_size", "mean_size", "std_size", "served_adapters",
    "adapter_slots",
    # lorafleet's.
    "max_lora_rank", "mean_input", "mean_output", "std_input", "std_output", "burstiness",
    "base_rate", "offered_tps", "kv_tokens", "active_ratio", "expected_active",
    "lora_pressure", "slot_coverage", "est_capacity_tps", "load_ratio",
)


# The largest load one adapter may declare: every number an admin, a config or a state file
# gives is bounded, so that no value can overflow a feature (a rate of 1e308 made every
# re-plan raise OverflowError) or ask the placer for millions of replicas. 10,000 requests/s
# is some 860 million requests a day for one adapter; 10 million tokens is the longest context
# any open model serves (Llama 4 Scout's).
MAX_RATE = 10_000.0
MAX_TOKENS = 10_000_000.0
MAX_CV = 100.0  # inter-arrival coefficient of variation (1: Poisson)
_BOUNDS = {"rate": (0.0, MAX_RATE), "input_tokens": (1.0, MAX_TOKENS),
           "output_tokens": (1.0, MAX_TOKENS), "input_std": (0.0, MAX_TOKENS),
           "output_std": (0.0, MAX_TOKENS), "cv": (0.0, MAX_CV)}
_RANKS = frozenset((0, *ALLOWED_LORA_RANKS))


MAX_NAME = 256
_NOT_IN_NAMES = frozenset(" /\\")


def adapter_name_error(name: object) -> str | None:
    """Why ``name`` cannot name an adapter (None: it can): 1 to 256 printable ASCII
    characters, no whitespace, no slash or backslash, not starting with a dot. Names travel
    in URLs (``/admin/adapters/{name}``), label Prometheus series and name folders (the
    emulated workers' scaffolds), so ``..`` or ``a/b`` is refused wherever a name comes in.

    Examples
    --------
    >>> adapter_name_error("sql-v2.1") is None
    True
    >>> adapter_name_error("..")
    "must be 1-256 printable ASCII characters without whitespace, slashes or backslashes, \
not starting with a dot, got '..'"
    """
    if (isinstance(name, str) and 0 < len(name) <= MAX_NAME and name.isascii()
            and name.isprintable() and not name.startswith(".")
            and not any(c in name for c in _NOT_IN_NAMES)):
        return None
    shown = repr(name) if not isinstance(name, str) or len(name) <= 64 else \
        f"{name[:64]!r}... ({len(name)} characters)"
    return (f"must be 1-{MAX_NAME} printable ASCII characters without whitespace, slashes or "
            f"backslashes, not starting with a dot, got {shown}")


def demand_error(field: str, value: object) -> str | None:
    """Why ``value`` cannot be the ``AdapterDemand`` field ``field`` (None: it can). One
    rule for the planner's input file, the gateway's config, its admin API and its state file.

    Examples
    --------
    >>> demand_error("rate", 1e308)
    'must be a number in [0, 10000], got 1e+308'
    >>> demand_error("rank", 7), demand_error("rank", 16) is None
    ("must be 0 (the base model) or one of vLLM's LoRA ranks [1, 8, 16, 32, 64, 128, 256, 320, \
512], got 7", True)
    """
    if field == "rank":
        if isinstance(value, bool) or value not in _RANKS:
            return (f"must be 0 (the base model) or one of vLLM's LoRA ranks "
                    f"{list(ALLOWED_LORA_RANKS)}, got {value!r}")
        return None
    lo, hi = _BOUNDS[field]
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or not lo <= value <= hi
            or (field == "cv" and value == 0)):
        shown = f"{value:g}" if isinstance(value, float) else repr(value)
        low = "(0" if field == "cv" else f"[{lo:g}"
        return f"must be a number in {low}, {hi:g}], got {shown}"
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class AdapterDemand:
    """One adapter's load: rank (0 = base model, else one of vLLM's LoRA ranks), request rate,
    mean and std of its lengths, and the coefficient of variation of its inter-arrival times
    (1 = Poisson); each number within ``demand_error``'s bounds (``ValueError`` naming the
    field otherwise)."""

    name: str
    rank: int
    rate: float
    input_tokens: float = 512.0
    output_tokens: float = 128.0
    input_std: float = 0.0
    output_std: float = 0.0
    cv: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError("name: must be a non-empty string")
        if (self.rank in _RANKS and 0 <= self.rate <= MAX_RATE  # the fast path (NaN fails)
                and 1 <= self.input_tokens <= MAX_TOKENS and 1 <= self.output_tokens <= MAX_TOKENS
                and 0 <= self.input_std <= MAX_TOKENS and 0 <= self.output_std <= MAX_TOKENS
                and 0 < self.cv <= MAX_CV and not isinstance(self.rank, bool)):
            return
        for field in ("rank", *_BOUNDS):
            error = demand_error(field, getattr(self, field))
            if error is not None:
                raise ValueError(f"{field}: {error}")


def _weighted(values: Sequence[float], weights: Sequence[float]) -> tuple[float, float]:
    total = sum(weights)
    if total <= 0:
        mean = sum(values) / len(values) if values else 0.0
        return mean, 0.0
    mean = sum(v * w for v, w in zip(values, weights, strict=True)) / total
    var = sum(w * (v - mean) ** 2 for v, w in zip(values, weights, strict=True)) / total
    return mean, math.sqrt(var)


def _mixture(parts: Sequence[tuple[float, float]], weights: Sequence[float],
             ) -> tuple[float, float]:
    """Mean and std of a length drawn from the adapters' (mean, std) pairs by rate: the
    within-adapter spread plus the spread of the adapters' means."""
    mean, between = _weighted([m for m, _ in parts], weights)
    total = sum(weights)
    if total <= 0:
        within = sum(sd**2 for _, sd in parts) / len(parts) if parts else 0.0
    else:
        within = sum(w * sd**2 for (_, sd), w in zip(parts, weights, strict=True)) / total
    return mean, math.sqrt(between**2 + within)


def _std(values: Sequence[float]) -> float:
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def _batch(engine: EngineConfig, kv_tokens: int, mean_input: float, mean_output: float) -> float:
    """Requests decoding together at saturation: ``max_num_seqs`` or what the KV cache holds."""
    return max(1.0, min(float(engine.max_num_seqs), kv_tokens / (mean_input + mean_output)))


def expected_distinct(weights: Sequence[float], batch: float) -> float:
    """Expected distinct adapters among ``batch`` requests drawn by rate ``weights``:
    ``sum_i 1 - (1 - w_i)^batch``. Above ``max_loras`` the LoRA rule defers requests and the
    slots thrash."""
    total = sum(weights)
    if total <= 0:
        return 0.0
    return sum(1.0 - float((1.0 - w / total) ** batch) for w in weights)


def slot_coverage(weights: Sequence[float], slots: int) -> float:
    """Expected share of the load whose adapter is among ``slots`` adapters drawn by rate:
    ``sum_i w_i (1 - (1 - w_i)^slots)``, 1 when every adapter fits in the slots. When the
    slots thrash, only that share of the queued requests can join a batch."""
    total = sum(weights)
    if total <= 0 or len(weights) <= slots:
        return 1.0
    return sum((w / total) * (1.0 - float((1.0 - w / total) ** slots)) for w in weights)


def capacity_estimate(step: StepTimeModel, engine: EngineConfig, kv_tokens: int,
                      mean_input: float, mean_output: float, active_adapters: int,
                      coverage: float = 1.0) -> float:
    """Tokens/s one worker sustains, from its step-time model alone (no simulation).

    With ``B`` requests decoding (``max_num_seqs``, or fewer if their KV does not fit), each
    decode step serves ``B`` tokens; each request also needs its prompt prefilled. So a request
    costs ``out * t_decode(B) / B + in * c_prefill`` seconds of engine time, where ``c_prefill``
    is the marginal step time of a prefill token.
    """
    batch = max(1.0, _batch(engine, kv_tokens, mean_input, mean_output) * coverage)
    distinct = float(min(active_adapters, engine.max_loras, batch)) if engine.enable_lora else 0.0
    context = batch * (mean_input + mean_output / 2)
    t_decode = step.predict(0.0, batch, context, distinct)
    chunk = float(engine.max_num_batched_tokens)
    c_prefill = (step.predict(chunk, 0.0, chunk, 1.0) - step.predict(0.0, 0.0, 0.0, 1.0)) / chunk
    seconds = mean_output * t_decode / batch + mean_input * c_prefill
    return (mean_input + mean_output) / seconds


def worker_features(adapters: Sequence[AdapterDemand], engine: EngineConfig,
                    model: ModelSpec, gpu: GpuSpec, step: StepTimeModel,
                    memory: MemoryOverheads | None = None) -> dict[str, float]:
    """The feature vector of one worker serving ``adapters`` with ``engine``.

    Raises ``InsufficientMemoryError`` if vLLM would not start with ``engine``.
    """
    loras = [a for a in adapters if a.rank > 0]
    rates = [a.rate for a in adapters]
    ranks = [float(a.rank) for a in loras]
    weights = [a.rate for a in adapters]
    mean_in, std_in = _mixture([(a.input_tokens, a.input_std) for a in adapters], weights)
    mean_out, std_out = _mixture([(a.output_tokens, a.output_std) for a in adapters], weights)
    burst, _ = _weighted([a.cv for a in adapters], weights)
    sum_rate = sum(rates)
    kv = plan_memory(model, gpu, engine, memory).kv_cache_tokens
    served = len(loras)
    lora_rates = [a.rate for a in loras]
    active = expected_distinct(lora_rates,
                               _batch(engine, kv, max(mean_in, 1.0), max(mean_out, 1.0)))
    coverage = 1.0
    if engine.enable_lora and active > engine.max_loras:
        base = sum(a.rate for a in adapters if a.rank == 0)
        lora_share = sum(lora_rates) / max(sum_rate, 1e-12)
        coverage = base / max(sum_rate, 1e-12) + lora_share * slot_coverage(
            lora_rates, engine.max_loras)
    capacity = capacity_estimate(step, engine, kv, max(mean_in, 1.0), max(mean_out, 1.0),
                                 served, coverage)
    offered = sum(a.rate * (a.input_tokens + a.output_tokens) for a in adapters)
    return {
        "sum_rate": sum_rate,
        "std_rate": _std(rates),
        "max_size": max(ranks, default=0.0),
        "mean_size": sum(ranks) / len(ranks) if ranks else 0.0,
        "std_size": _std(ranks),
        "served_adapters": float(served),
        "adapter_slots": float(engine.max_loras),
        "max_lora_rank": float(engine.max_lora_rank),
        "mean_input": mean_in,
        "mean_output": mean_out,
        "std_input": std_in,
        "std_output": std_out,
        "burstiness": burst or 1.0,
        "base_rate": sum(a.rate for a in adapters if a.rank == 0),
        "offered_tps": offered,
        "kv_tokens": float(kv),
        "active_ratio": served / engine.max_loras,
        "expected_active": active,
        "lora_pressure": active / engine.max_loras,
        "slot_coverage": coverage,
        "est_capacity_tps": capacity,
        "load_ratio": offered / capacity,
    }
