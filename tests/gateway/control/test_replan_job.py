"""One re-plan in the planning process: a plan the cluster twin rejects is planned again with
a stricter margin before it is carried out."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pytest

from gateway.control import replan_job
from gateway.control.replan_job import REPAIR_ROUNDS, ReplanJob, run_job
from planner import pipeline
from planner.demand import AdapterDemand
from planner.online import RunningWorker
from planner.placer import Plan, Predictor
from planner.training import bundled_rows, train
from planner.validation import REPAIR_TIGHTEN
from twin.specs import EngineConfig


@dataclass
class FakeTwin:
    """``validate`` (as the planning pipeline calls it) that rejects the first
    ``rejections`` plans (GPU 0 starving) and records the margin each plan was made with."""

    rejections: int
    headrooms: list[float] = field(default_factory=list)

    @dataclass(frozen=True)
    class Verdict:
        ok: bool
        starved_gpus: list[int]

    def __call__(self, plan: Plan, predictor: Predictor, **_: object) -> FakeTwin.Verdict:
        self.headrooms.append(predictor.config.headroom)
        ok = len(self.headrooms) > self.rejections
        return FakeTwin.Verdict(ok=ok, starved_gpus=[] if ok else [0])


@pytest.fixture(scope="module", autouse=True)
def small_surrogate():
    surrogate = train(bundled_rows()[::8])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(replan_job, "_surrogate", lambda path="": surrogate)
        yield


def _job(fresh: bool = False) -> ReplanJob:
    demands = tuple(AdapterDemand(name=f"a{i}", rank=8, rate=0.5, input_tokens=512,
                                  output_tokens=128) for i in range(6))
    engine = EngineConfig(max_loras=8, max_cpu_loras=8, max_lora_rank=8)
    workers = (RunningWorker("w0", engine, frozenset(d.name for d in demands)),
               RunningWorker("w1", engine, frozenset()))
    return ReplanJob(demands=demands, workers=workers, gpu="a100-80gb", model="llama-3.1-8b",
                     profile="roofline-default", max_model_len=8192, fresh=fresh,
                     headroom=0.9)


@pytest.mark.parametrize("fresh", [False, True])
def test_a_rejected_plan_is_planned_again_with_a_stricter_margin(monkeypatch, fresh) -> None:
    twin = FakeTwin(rejections=1)
    monkeypatch.setattr(pipeline, "validate", twin)
    result = run_job(_job(fresh))
    assert result.validated is True and result.repairs == 1 and result.starved == ()
    assert twin.headrooms == pytest.approx([0.9, 0.9 * REPAIR_TIGHTEN])


def test_repairs_stop_after_their_rounds_and_report_the_verdict(monkeypatch) -> None:
    twin = FakeTwin(rejections=99)
    monkeypatch.setattr(pipeline, "validate", twin)
    result = run_job(_job())
    assert result.validated is False and result.repairs == REPAIR_ROUNDS
    assert result.starved == ("w0",)
    assert len(twin.headrooms) == REPAIR_ROUNDS + 1
    # The last plan is carried out all the same: every adapter stays routed somewhere.
    routed = set().union(*(set(s) for s in result.migration.shares.values()))
    assert {f"a{i}" for i in range(6)} <= routed


def test_an_accepted_plan_is_not_planned_again(monkeypatch) -> None:
    twin = FakeTwin(rejections=0)
    monkeypatch.setattr(pipeline, "validate", twin)
    result = run_job(_job())
    assert result.validated is True and result.repairs == 0 and len(twin.headrooms) == 1
    assert result.planned_gpus == 1  # six light adapters stay on w0


def test_a_replicated_adapter_keeps_the_split_it_is_routed_by() -> None:
    # The improvement search splits a hot adapter unevenly (what fits where); re-planning it
    # as equal parts would overload the GPU that took the small part. Here one GPU cannot
    # carry it (1.3x what one serves of it), so both workers keep it, at 0.6 and 0.4.
    hot = AdapterDemand(name="hot", rank=8, rate=1.0, input_tokens=512, output_tokens=128)
    engine = EngineConfig(max_loras=8, max_cpu_loras=8, max_lora_rank=8)
    workers = (RunningWorker("w0", engine, frozenset({"hot"})),
               RunningWorker("w1", engine, frozenset({"hot"})))
    job = ReplanJob(demands=(hot,), workers=workers, gpu="a100-80gb", model="llama-3.1-8b",
                    profile="roofline-default", max_model_len=8192, validate=False,
                    shares={"w0": {"hot": 0.6}, "w1": {"hot": 0.4}})
    cap = replan_job._predictor(job).alone_capacity(hot)
    job = replace(job, demands=(replace(hot, rate=1.3 * cap),))
    result = run_job(job)
    assert result.migration.moved == () and result.migration.retired == ()
    assert result.migration.shares["w0"]["hot"] == pytest.approx(0.6)
    assert result.migration.shares["w1"]["hot"] == pytest.approx(0.4)
    even = run_job(replace(job, shares={}))
    assert even.migration.shares["w0"]["hot"] == pytest.approx(0.5)


def test_a_re_plan_at_tensor_parallel_four_counts_gpus(monkeypatch) -> None:
    """Workers of 4 GPUs (Llama-3.1-70B): the re-plan's new engines carry the size and its
    GPU count is workers times 4."""
    plans: list[Plan] = []
    twin = FakeTwin(rejections=0)

    def check(plan: Plan, predictor: Predictor, **kw: object) -> FakeTwin.Verdict:
        plans.append(plan)
        return twin(plan, predictor, **kw)

    monkeypatch.setattr(pipeline, "validate", check)
    engine = EngineConfig(max_loras=8, max_cpu_loras=8, max_lora_rank=8,
                          tensor_parallel_size=4)
    job = replace(_job(fresh=True), model="llama-3.1-70b", tensor_parallel_size=4,
                  workers=(RunningWorker("w0", engine, frozenset()),))
    result = run_job(job)
    assert result.planned_gpus == 4 * len(result.gpus) >= 4
    assert plans and all(g.engine.tensor_parallel_size == 4 for g in plans[-1].gpus)
