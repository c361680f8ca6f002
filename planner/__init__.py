"""The planner: a River surrogate of one vLLM worker, distilled from twin runs and learning
online, and the min-GPU placer checked in the twin (pure: no network, no files except
explicit load and save).

Everything the gateway, the CLI and the benchmarks use is exported here; import it from
``planner``, not from the modules (which are free to move). Names load on first use
(PEP 562), so ``import planner`` stays cheap: the River models, HiGHS and Ray load only
when something asks for them.

The planning path, in order: ``AdapterDemand`` (what each adapter asks for) and a
``Target`` (model, GPU, profile) in; ``place`` (the greedy fill, then the improvement
search) to a ``Plan``; ``validate`` in the cluster twin and ``repair`` what it finds
starving; ``diff`` against what the workers hold to a ``Migration``. ``lower_bound`` says
how far any plan can go.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twin.lazy import lazy_exports

if TYPE_CHECKING:
    from planner.baselines import (
        confirm,
        first_fit,
        one_per_adapter,
        round_robin,
        round_robin_plan,
    )
    from planner.bound import Bound, lower_bound, lower_bound_simple
    from planner.dataset import (
        COLUMNS,
        NEAR_BOUNDARY_DURATION_S,
        SampleSpec,
        Shape,
        placement_shaped,
        refeature,
        run_sample,
        sample_specs,
    )
    from planner.demand import (
        MAX_CV,
        MAX_NAME,
        MAX_RATE,
        MAX_TOKENS,
        AdapterDemand,
        adapter_name_error,
        demand_error,
    )
    from planner.inputs import load_adapters, parse_adapters
    from planner.latency_estimate import LatencyEstimate
    from planner.migration import Migration, apply, diff
    from planner.objective import (
        LatencyMetric,
        LatencyPredictor,
        MinLatency,
        ObjectiveName,
        plan_latency,
        repair_latency,
    )
    from planner.online import RunningWorker, Stability, replan
    from planner.online_latency import OnlineLatency, WindowObservation, WorkerWindow
    from planner.online_surrogate import learn_live, live_row
    from planner.optimum import exact_min_gpus
    from planner.pipeline import Checked, Repair, plan_checked
    from planner.placer import place, place_with
    from planner.plan import Assignment, GpuPlan, Plan, merged, with_cpu_room
    from planner.predictor import PlannerConfig, Predictor, Verdict
    from planner.pretrained import cache_key, pretrained_surrogate, shipped_path
    from planner.ray_runner import RayUnavailableError, require_ray, run_on_ray
    from planner.scoring import evaluate, macro_f1, near_boundary, smape, split, starved
    from planner.surrogate import REGRESSORS, STARVATION_MODELS, Surrogate, analytic_share
    from planner.table import load_table, save_table
    from planner.target import DEFAULT_GPU, DEFAULT_MODEL, DEFAULT_PROFILE, Target
    from planner.target_surrogate import (
        TARGET_SAMPLES,
        OwnSurrogate,
        Start,
        adapt,
        is_home,
        own_surrogate,
        target_key,
        target_specs,
    )
    from planner.training import (
        DEFAULT_CLASSIFIER,
        DEFAULT_LATENCY,
        DEFAULT_REGRESSOR,
        bundled_capacity_rows,
        bundled_digest,
        bundled_rows,
        interleave,
        train,
    )
    from planner.validation import (
        REPAIR_TIGHTEN,
        VALIDATION_S,
        Validation,
        baselines_in_twin,
        repair,
        validate,
        workload_for,
    )

_MODULES: dict[str, tuple[str, ...]] = {
    "baselines": ("confirm", "first_fit", "one_per_adapter", "round_robin", "round_robin_plan"),
    "bound": ("Bound", "lower_bound", "lower_bound_simple"),
    "dataset": ("COLUMNS", "NEAR_BOUNDARY_DURATION_S", "SampleSpec", "Shape",
                "placement_shaped", "refeature", "run_sample", "sample_specs"),
    "demand": ("MAX_CV", "MAX_NAME", "MAX_RATE", "MAX_TOKENS", "AdapterDemand",
               "adapter_name_error", "demand_error"),
    "inputs": ("load_adapters", "parse_adapters"),
    "latency_estimate": ("LatencyEstimate",),
    "migration": ("Migration", "apply", "diff"),
    "objective": ("LatencyMetric", "LatencyPredictor", "MinLatency", "ObjectiveName",
                  "plan_latency", "repair_latency"),
    "online": ("RunningWorker", "Stability", "replan"),
    "online_latency": ("OnlineLatency", "WindowObservation", "WorkerWindow"),
    "online_surrogate": ("learn_live", "live_row"),
    "optimum": ("exact_min_gpus",),
    "pipeline": ("Checked", "Repair", "plan_checked"),
    "plan": ("Assignment", "GpuPlan", "Plan", "merged", "with_cpu_room"),
    "placer": ("place", "place_with"),
    "predictor": ("PlannerConfig", "Predictor", "Verdict"),
    "pretrained": ("cache_key", "pretrained_surrogate", "shipped_path"),
    "target_surrogate": ("TARGET_SAMPLES", "OwnSurrogate", "Start", "adapt", "is_home",
                         "own_surrogate", "target_key", "target_specs"),
    "ray_runner": ("RayUnavailableError", "require_ray", "run_on_ray"),
    "scoring": ("evaluate", "macro_f1", "near_boundary", "smape", "split", "starved"),
    "surrogate": ("REGRESSORS", "STARVATION_MODELS", "Surrogate", "analytic_share"),
    "table": ("load_table", "save_table"),
    "target": ("DEFAULT_GPU", "DEFAULT_MODEL", "DEFAULT_PROFILE", "Target"),
    "training": ("DEFAULT_CLASSIFIER", "DEFAULT_LATENCY", "DEFAULT_REGRESSOR",
                 "bundled_capacity_rows", "bundled_digest", "bundled_rows", "interleave",
                 "train"),
    "validation": ("REPAIR_TIGHTEN", "VALIDATION_S", "Validation", "baselines_in_twin",
                 "repair", "validate", "workload_for"),
}

__all__ = [
    "COLUMNS",
    "DEFAULT_CLASSIFIER",
    "DEFAULT_GPU",
    "DEFAULT_LATENCY",
    "DEFAULT_MODEL",
    "DEFAULT_PROFILE",
    "DEFAULT_REGRESSOR",
    "MAX_CV",
    "MAX_NAME",
    "MAX_RATE",
    "MAX_TOKENS",
    "NEAR_BOUNDARY_DURATION_S",
    "REGRESSORS",
    "REPAIR_TIGHTEN",
    "STARVATION_MODELS",
    "TARGET_SAMPLES",
    "VALIDATION_S",
    "AdapterDemand",
    "Assignment",
    "Bound",
    "Checked",
    "GpuPlan",
    "LatencyEstimate",
    "LatencyMetric",
    "LatencyPredictor",
    "Migration",
    "MinLatency",
    "ObjectiveName",
    "OnlineLatency",
    "OwnSurrogate",
    "Plan",
    "PlannerConfig",
    "Predictor",
    "RayUnavailableError",
    "Repair",
    "RunningWorker",
    "SampleSpec",
    "Shape",
    "Stability",
    "Start",
    "Surrogate",
    "Target",
    "Validation",
    "Verdict",
    "WindowObservation",
    "WorkerWindow",
    "adapt",
    "adapter_name_error",
    "analytic_share",
    "apply",
    "baselines_in_twin",
    "bundled_capacity_rows",
    "bundled_digest",
    "bundled_rows",
    "cache_key",
    "confirm",
    "demand_error",
    "diff",
    "evaluate",
    "exact_min_gpus",
    "first_fit",
    "interleave",
    "is_home",
    "learn_live",
    "live_row",
    "load_adapters",
    "load_table",
    "lower_bound",
    "lower_bound_simple",
    "macro_f1",
    "merged",
    "near_boundary",
    "one_per_adapter",
    "own_surrogate",
    "parse_adapters",
    "place",
    "place_with",
    "placement_shaped",
    "plan_checked",
    "plan_latency",
    "pretrained_surrogate",
    "refeature",
    "repair",
    "repair_latency",
    "replan",
    "require_ray",
    "round_robin",
    "round_robin_plan",
    "run_on_ray",
    "run_sample",
    "sample_specs",
    "save_table",
    "shipped_path",
    "smape",
    "split",
    "starved",
    "target_key",
    "target_specs",
    "train",
    "validate",
    "with_cpu_room",
    "workload_for",
]


__getattr__, __dir__ = lazy_exports(__name__, _MODULES, __all__)
