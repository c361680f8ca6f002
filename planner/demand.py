"""What one adapter asks of the fleet: its rank, request rate and lengths (``AdapterDemand``),
each number bounded, and the rule for its name. One definition for the planner's input file,
the gateway's config, its admin API and its state file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from twin.specs import ALLOWED_LORA_RANKS

__all__ = [
    "MAX_CV",
    "MAX_NAME",
    "MAX_RATE",
    "MAX_TOKENS",
    "AdapterDemand",
    "adapter_name_error",
    "demand_error",
]

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

    @property
    def is_base(self) -> bool:
        """Rank 0: the base model's own traffic. It holds no LoRA slot, every worker serves
        it with its base weights, and the gateway routes it as ``twin.routing.BASE_MODEL``."""
        return self.rank == 0

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
