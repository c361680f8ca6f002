"""What the engine reports: events per request, a log of steps, and its live state."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

__all__ = ["EngineEvent", "EngineStats", "EventKind", "StepLog", "StepRecord"]


class EventKind(enum.Enum):
    SCHEDULED = enum.auto()  # first admitted to running
    FIRST_TOKEN = enum.auto()
    TOKEN = enum.auto()  # every later token, only for requests added with stream=True
    FINISHED = enum.auto()  # detail: 0 length, 1 aborted
    PREEMPTED = enum.auto()
    LORA_LOADED = enum.auto()  # detail: lora_int_id


@dataclass(frozen=True, slots=True)
class EngineEvent:
    kind: EventKind
    time_ns: int
    request_id: str | None
    detail: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class StepRecord:
    """One engine step: its batch and how long it took (for calibration and tests)."""

    start_ns: int
    duration_ns: int
    prefill_tokens: int
    decode_seqs: int
    context_tokens: int
    distinct_adapters: int
    lora_load_ns: int
    num_running: int
    num_waiting: int


@dataclass(slots=True)
class StepLog:
    """Columnar log of steps; ``record(i)`` gives the i-th as a ``StepRecord``."""

    start_ns: list[int] = field(default_factory=list)
    duration_ns: list[int] = field(default_factory=list)
    prefill_tokens: list[int] = field(default_factory=list)
    decode_seqs: list[int] = field(default_factory=list)
    context_tokens: list[int] = field(default_factory=list)
    distinct_adapters: list[int] = field(default_factory=list)
    lora_load_ns: list[int] = field(default_factory=list)
    num_running: list[int] = field(default_factory=list)
    num_waiting: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.start_ns)

    def append(self, r: StepRecord) -> None:
        for name in StepRecord.__slots__:
            getattr(self, name).append(getattr(r, name))

    def extend_decode_run(self, starts: np.ndarray, durations: np.ndarray,
                          context: np.ndarray, *, decode_seqs: int, adapters: int,
                          running: int, waiting: int) -> None:
        """Log a run of identical decode steps (no prefill, no adapter load) at once."""
        k = len(starts)
        self.start_ns.extend(starts.tolist())
        self.duration_ns.extend(durations.tolist())
        self.prefill_tokens.extend([0] * k)
        self.decode_seqs.extend([decode_seqs] * k)
        self.context_tokens.extend(context.astype(np.int64).tolist())
        self.distinct_adapters.extend([adapters] * k)
        self.lora_load_ns.extend([0] * k)
        self.num_running.extend([running] * k)
        self.num_waiting.extend([waiting] * k)

    def record(self, i: int) -> StepRecord:
        return StepRecord(**{name: getattr(self, name)[i] for name in StepRecord.__slots__})


@dataclass(frozen=True, slots=True, kw_only=True)
class EngineStats:
    """The state a ``/metrics`` page shows (vLLM's ``SchedulerStats`` and counters)."""

    num_running: int
    num_waiting: int
    num_waiting_deferred: int
    kv_cache_usage: float
    num_preemptions: int
    prompt_tokens: int
    generation_tokens: int
    num_finished: int
    num_aborted: int
    num_lora_loads: int
    running_lora_ids: tuple[int, ...]
    waiting_lora_ids: tuple[int, ...]
