"""Digital twin of a vLLM multi-LoRA worker (pure: no network, no files but explicit loads).

Names load on first use (PEP 562): ``import twin`` (or ``twin.errors``) stays cheap, and
SimPy and numpy load only when something asks for them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from twin.lazy import lazy_exports

if TYPE_CHECKING:
    from twin.catalog import (
        GPUS,
        MODELS,
        get_gpu,
        get_model,
        gpu_from_mapping,
        gpu_ref,
    )
    from twin.cluster import (
        ClusterResult,
        simulate_cluster,
    )
    from twin.engine import (
        EngineCore,
    )
    from twin.errors import (
        ConfigError,
        InsufficientMemoryError,
        TwinError,
    )
    from twin.events import (
        EngineEvent,
        EngineStats,
        EventKind,
        StepLog,
        StepRecord,
    )
    from twin.hf_config import (
        load_model_config,
    )
    from twin.memory import (
        MemoryOverheads,
        MemoryPlan,
        capacity_log_line,
        plan_memory,
        smallest_tensor_parallel,
    )
    from twin.profile import (
        CalibrationProfile,
        LoadTimes,
        bundled_profiles,
        load_profile,
    )
    from twin.request import (
        FinishReason,
        Request,
        RequestStatus,
    )
    from twin.results import (
        SimulationResult,
    )
    from twin.routing import (
        BASE_MODEL,
        Placement,
        Router,
        RoutingPolicy,
        WorkerPlacement,
    )
    from twin.scenario import (
        Scenario,
        load_scenario,
        parse_scenario,
    )
    from twin.simulation import (
        build_engine,
        simulate,
    )
    from twin.specs import (
        AdapterSpec,
        EngineConfig,
        GpuSpec,
        ModelSpec,
        default_engine_for,
    )
    from twin.step_time import (
        LinearStepTime,
        RooflineStepTime,
        StepTimeModel,
    )
    from twin.workload import (
        AdapterLoad,
        Arrival,
        ArrivalSpec,
        LengthDist,
        Workload,
    )

_MODULES: dict[str, tuple[str, ...]] = {
    "catalog": ("GPUS", "MODELS", "get_gpu", "get_model", "gpu_from_mapping", "gpu_ref"),
    "cluster": ("ClusterResult", "simulate_cluster"),
    "engine": ("EngineCore",),
    "errors": ("ConfigError", "InsufficientMemoryError", "TwinError"),
    "events": ("EngineEvent", "EngineStats", "EventKind", "StepLog", "StepRecord"),
    "hf_config": ("load_model_config",),
    "memory": ("MemoryOverheads", "MemoryPlan", "capacity_log_line", "plan_memory",
               "smallest_tensor_parallel"),
    "profile": ("CalibrationProfile", "LoadTimes", "bundled_profiles", "load_profile"),
    "request": ("FinishReason", "Request", "RequestStatus"),
    "results": ("SimulationResult",),
    "routing": ("BASE_MODEL", "Placement", "Router", "RoutingPolicy", "WorkerPlacement"),
    "scenario": ("Scenario", "load_scenario", "parse_scenario"),
    "simulation": ("build_engine", "simulate"),
    "specs": ("AdapterSpec", "EngineConfig", "GpuSpec", "ModelSpec", "default_engine_for"),
    "step_time": ("LinearStepTime", "RooflineStepTime", "StepTimeModel"),
    "workload": ("AdapterLoad", "Arrival", "ArrivalSpec", "LengthDist", "Workload"),
}

__all__ = [
    "BASE_MODEL",
    "GPUS",
    "MODELS",
    "AdapterLoad",
    "AdapterSpec",
    "Arrival",
    "ArrivalSpec",
    "CalibrationProfile",
    "ClusterResult",
    "ConfigError",
    "EngineConfig",
    "EngineCore",
    "EngineEvent",
    "EngineStats",
    "EventKind",
    "FinishReason",
    "GpuSpec",
    "InsufficientMemoryError",
    "LengthDist",
    "LinearStepTime",
    "LoadTimes",
    "MemoryOverheads",
    "MemoryPlan",
    "ModelSpec",
    "Placement",
    "Request",
    "RequestStatus",
    "RooflineStepTime",
    "Router",
    "RoutingPolicy",
    "Scenario",
    "SimulationResult",
    "StepLog",
    "StepRecord",
    "StepTimeModel",
    "TwinError",
    "WorkerPlacement",
    "Workload",
    "build_engine",
    "bundled_profiles",
    "capacity_log_line",
    "default_engine_for",
    "get_gpu",
    "get_model",
    "gpu_from_mapping",
    "gpu_ref",
    "load_model_config",
    "load_profile",
    "load_scenario",
    "parse_scenario",
    "plan_memory",
    "simulate",
    "simulate_cluster",
    "smallest_tensor_parallel",
]


__getattr__, __dir__ = lazy_exports(__name__, _MODULES, __all__)
