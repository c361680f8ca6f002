"""Builders for emulator tests."""

from __future__ import annotations

from typing import Any

from gateway.emulator.config import LoraModule, WorkerConfig
from twin.catalog import get_gpu, get_model
from twin.profile import load_profile
from twin.scenario import Scenario
from twin.specs import EngineConfig


def make_config(*, time_scale: float = 50.0, lora_modules: tuple[LoraModule, ...] = (),
                **engine: Any) -> WorkerConfig:
    """A Llama-3.1-8B worker on an A100-80GB, fast by default."""
    defaults: dict[str, Any] = {"max_num_seqs": 64, "max_num_batched_tokens": 2048,
                                "max_loras": 2, "max_lora_rank": 16, "max_model_len": 2048}
    defaults.update(engine)
    return WorkerConfig(model=get_model("llama-3.1-8b"), gpu=get_gpu("a100-80gb"),
                        profile=load_profile("roofline-default"),
                        engine=EngineConfig(**defaults), served_model_name="base",
                        lora_modules=lora_modules, time_scale=time_scale)


def config_for(scenario: Scenario, *, time_scale: float,
               lora_modules: tuple[LoraModule, ...] = ()) -> WorkerConfig:
    return WorkerConfig(model=scenario.model, gpu=scenario.gpu, profile=scenario.profile,
                        engine=scenario.engine, served_model_name="base",
                        lora_modules=lora_modules, time_scale=time_scale)
