"""What a plan is for: the base model, the GPU every worker runs on and the calibration
profile of its step times, looked up once from their names (``Target.resolve``).

Examples
--------
>>> t = Target.resolve()
>>> t.model.name, t.gpu.name, t.profile_name
('llama-3.1-8b', 'a100-80gb', 'roofline-default')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from twin.catalog import get_gpu, get_model
from twin.errors import ConfigError
from twin.memory import plan_memory
from twin.profile import CalibrationProfile, load_profile
from twin.specs import GpuSpec, ModelSpec

if TYPE_CHECKING:  # the surrogate's River models load only when a predictor is made
    from planner.predictor import PlannerConfig, Predictor
    from planner.surrogate import Surrogate

__all__ = ["DEFAULT_GPU", "DEFAULT_MODEL", "DEFAULT_PROFILE", "Target"]

DEFAULT_MODEL = "llama-3.1-8b"
DEFAULT_GPU = "a100-80gb"
DEFAULT_PROFILE = "roofline-default"


@dataclass(frozen=True, slots=True)
class Target:
    """The model, GPU and profile a plan is made for (``profile_name`` as it was asked for:
    the gateway hands it to the processes it starts)."""

    model: ModelSpec
    gpu: GpuSpec
    profile: CalibrationProfile
    profile_name: str = DEFAULT_PROFILE

    @classmethod
    def resolve(cls, model: str = DEFAULT_MODEL, gpu: str = DEFAULT_GPU,
                profile: str = DEFAULT_PROFILE) -> Target:
        """The target named; ``twin.ConfigError`` naming ``model``, ``gpu`` or ``profile``
        when one is unknown."""
        return cls(get_model(model), get_gpu(gpu), load_profile(profile), profile)

    def check_fits(self, config: PlannerConfig, field: str = "tensor_parallel_size") -> None:
        """vLLM's start-up refusal, before anything is planned: the model does not split
        ``config.tensor_parallel_size`` ways (``ConfigError`` naming ``field``), or does not
        fit that way even with one LoRA slot (``InsufficientMemoryError``, naming the
        smallest size that fits)."""
        engine = config.engine(1)  # its own errors name their own fields
        try:
            plan_memory(self.model, self.gpu, engine, self.profile.memory)
        except ConfigError as exc:  # only the split: the engine's options are valid
            raise ConfigError(field, exc.message) from None

    def predictor(self, surrogate: Surrogate, config: PlannerConfig | None = None, *,
                  capacity_scale: float | None = None) -> Predictor:
        """The placer's feasibility check for this target."""
        from planner.predictor import PlannerConfig, Predictor

        return Predictor(surrogate, self.model, self.gpu, self.profile,
                         config or PlannerConfig(), capacity_scale=capacity_scale)
