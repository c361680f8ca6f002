"""Plans whose workers span several GPUs (vLLM's --tensor-parallel-size): every engine the
placer makes carries it, plans, baselines and both bounds count GPUs, and the plan holds in
the cluster twin."""

from __future__ import annotations

import pytest

from planner.baselines import one_per_adapter
from planner.bound import lower_bound, lower_bound_simple
from planner.demand import AdapterDemand
from planner.placer import place_with
from planner.predictor import PlannerConfig, Predictor
from planner.validation import validate
from twin import get_gpu, get_model, load_profile

ADAPTERS = [AdapterDemand(name=f"a{i}", rank=(8, 16)[i % 2], rate=r)
            for i, r in enumerate((0.9, 0.7, 0.5, 0.4, 0.3, 0.3, 0.2, 0.2, 0.1, 0.1))]


def _predictor(surrogate, tp: int, model: str = "llama-3.1-70b") -> Predictor:
    return Predictor(surrogate, get_model(model), get_gpu("a100-80gb"),
                     load_profile("roofline-default"),
                     PlannerConfig(tensor_parallel_size=tp, search_seconds=0.2))


def test_a_70b_plan_at_tp_four_counts_gpus_and_holds_in_the_twin(surrogate) -> None:
    predictor = _predictor(surrogate, 4)
    plan = place_with(ADAPTERS, predictor)
    assert all(g.engine.tensor_parallel_size == 4 for g in plan.gpus)
    assert plan.num_gpus == 4 * plan.num_workers
    bound = lower_bound(ADAPTERS, predictor)
    assert bound.gpus % 4 == 0 and bound.gpus <= plan.num_gpus
    assert lower_bound_simple(ADAPTERS, predictor) % 4 == 0
    assert one_per_adapter(ADAPTERS, predictor).num_gpus == 4 * len(ADAPTERS)
    v = validate(plan, predictor, duration_s=60)
    assert v.ok, v.starved_gpus


def test_tensor_parallelism_is_validated() -> None:
    for bad in (0, 65, 2.0, True):
        with pytest.raises(ValueError, match="tensor_parallel_size"):
            PlannerConfig(tensor_parallel_size=bad)  # type: ignore[arg-type]
