"""What one emulated worker runs: the twin's specs plus vLLM's serving options.

``build_engine`` turns a ``WorkerConfig`` into the twin's ``EngineCore`` the way vLLM starts:
it refuses the same configurations (memory, ``max_cpu_loras < max_loras``, a rank outside
vLLM's set) with ``StartupError``.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.emulator.errors import StartupError
from gateway.emulator.noise import PerturbedStepTime
from twin.engine import EngineCore
from twin.errors import InsufficientMemoryError
from twin.memory import MemoryPlan
from twin.profile import CalibrationProfile
from twin.simulation import build_engine as build_twin_engine
from twin.specs import EngineConfig, GpuSpec, ModelSpec

__all__ = ["LoraModule", "WorkerConfig", "build_engine"]


@dataclass(frozen=True, slots=True)
class LoraModule:
    """An adapter served from start-up (vLLM's ``--lora-modules name=path``)."""

    name: str
    path: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerConfig:
    """One emulated worker.

    ``time_scale`` k runs the engine k times faster than the wall clock (engine ns =
    wall ns x k); latencies in ``/metrics`` are in wall seconds, as a client sees them.
    ``slowdown`` and ``jitter`` perturb step times (``PerturbedStepTime``).
    """

    model: ModelSpec
    gpu: GpuSpec
    profile: CalibrationProfile
    engine: EngineConfig
    served_model_name: str
    lora_modules: tuple[LoraModule, ...] = ()
    time_scale: float = 1.0
    slowdown: float = 1.0
    jitter: float = 0.0
    seed: int = 0
    engine_index: int = 0
    runtime_lora_updating: bool = True

    def __post_init__(self) -> None:
        if not self.time_scale > 0:
            raise StartupError(f"time_scale must be > 0, got {self.time_scale!r}")
        if not self.slowdown > 0:
            raise StartupError(f"slowdown must be > 0, got {self.slowdown!r}")
        if self.jitter < 0:
            raise StartupError(f"jitter must be >= 0, got {self.jitter!r}")
        if not self.served_model_name:
            raise StartupError("served_model_name must not be empty")


def build_engine(cfg: WorkerConfig, adapter_ranks: dict[str, int]) -> tuple[EngineCore,
                                                                           MemoryPlan]:
    """The worker's engine; ``adapter_ranks`` (name -> rank) is read at each adapter load, so
    the caller keeps it up to date as adapters are loaded.

    Raises
    ------
    StartupError
        With vLLM's memory message when the KV cache cannot hold one ``max_model_len``
        sequence.
    """
    try:
        engine, plan = build_twin_engine(cfg.model, cfg.gpu, cfg.engine, cfg.profile,
                                         adapter_ranks, track_deferred=True)
    except InsufficientMemoryError as exc:
        raise StartupError(str(exc)) from None
    if cfg.slowdown != 1.0 or cfg.jitter:
        engine.step_model = PerturbedStepTime(engine.step_model, slowdown=cfg.slowdown,
                                              jitter=cfg.jitter, seed=cfg.seed)
    return engine, plan
