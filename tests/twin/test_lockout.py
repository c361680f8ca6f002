"""vLLM's ``max_loras`` skip rule under load: with more adapters than slots, one is locked out.

A waiting request whose LoRA would be one too many for the step is skipped and put back at the
front (``v1/core/sched/scheduler.py``); the step's LoRAs are those of the running requests it
schedules. So an adapter keeps its slot for as long as one of its requests runs, new requests
of a resident adapter are admitted, and the skipped adapter gets in only when a resident
adapter's running set empties, ahead of that adapter's own newer requests, which locks that
adapter out in turn. Under load the running sets rarely empty and one adapter is kept out for
the whole run, as on the real CPU server (issue 26).
"""

from __future__ import annotations

import math
from typing import Any

import pytest

from tests.twin.factories import make_engine, make_request
from twin.engine import EngineCore
from twin.request import Request, RequestStatus
from twin.results import SimulationResult
from twin.scenario import parse_scenario
from twin.simulation import simulate


def cpu_run(adapters: int, rate: float, seed: int) -> SimulationResult:
    """The fidelity bench's CPU tiny-model worker (``max_loras`` 2, shipped profile), with
    ``adapters`` at equal Poisson rates summing to ``rate`` req/s, for 30 s."""
    scenario: dict[str, Any] = {
        "name": "lockout", "model": "tiny-llama", "profile": "cpu-tiny-llama",
        "gpu": {"name": "cpu", "memory_gib": 24, "kv_cache_space_gib": 1},
        "engine": {"max_loras": 2, "max_cpu_loras": 4, "max_lora_rank": 16,
                   "max_model_len": 512},
        "adapters": [{"name": f"a{i}", "rank": 8, "rate": rate / adapters}
                     for i in range(adapters)],
        "arrivals": {"process": "poisson"},
        "lengths": {"input": {"dist": "uniform", "low": 32, "high": 160},
                    "output": {"dist": "uniform", "low": 16, "high": 48}},
        "duration_s": 30.0, "seed": seed}
    result, _ = simulate(parse_scenario(scenario))
    return result


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_three_adapters_on_two_slots_lock_one_out(seed: int) -> None:
    result = cpu_run(3, 60.0, seed)
    by_fraction = sorted(result.adapters, key=lambda a: a.served_fraction)
    out, served = by_fraction[0], by_fraction[1:]
    assert out.served_fraction < 0.05
    assert all(a.served_fraction > 0.95 for a in served)
    assert result.locked_out_adapters == [out.name]
    assert result.starved and result.starved_adapters == [out.name]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_two_adapters_on_two_slots_are_never_locked_out(seed: int) -> None:
    same_per_adapter = cpu_run(2, 40.0, seed)
    assert all(a.served_fraction > 0.95 for a in same_per_adapter.adapters)
    overloaded = cpu_run(2, 90.0, seed)  # short of capacity: both share the shortfall
    fractions = [a.served_fraction for a in overloaded.adapters]
    assert overloaded.starved and min(fractions) > 0.4
    assert max(fractions) - min(fractions) < 0.1
    assert same_per_adapter.locked_out_adapters == overloaded.locked_out_adapters == []


def step(engine: EngineCore) -> None:
    engine.step_run(math.inf)


def lockout_engine() -> tuple[EngineCore, Request, Request, Request]:
    """a1 (3 tokens) and b1 (20) run; c1 (20) arrived third and is skipped."""
    engine = make_engine(fast_path=False, max_num_seqs=8)
    a1 = make_request("A", max_tokens=3)
    b1, c1 = make_request("B", max_tokens=20), make_request("C", max_tokens=20)
    for r in (a1, b1, c1):
        engine.add_request(r)
    step(engine)
    assert a1.status is b1.status is RequestStatus.RUNNING
    assert c1.status is RequestStatus.WAITING
    return engine, a1, b1, c1


def test_the_skipped_adapter_takes_the_slot_of_the_first_adapter_whose_requests_all_end() -> None:
    engine, a1, b1, c1 = lockout_engine()
    step(engine)
    step(engine)  # a1's last token: A has nothing running after this step
    assert a1.is_finished
    a2 = make_request("A", arrival_ns=engine.now_ns)  # arrived during that step
    engine.add_request(a2)
    step(engine)
    # The scan meets c1 first (skipped requests go back to the front): C takes A's slot
    # and A's newer request is skipped in turn.
    assert c1.status is RequestStatus.RUNNING and a2.status is RequestStatus.WAITING
    assert engine.stats().num_waiting_deferred == 1  # vLLM's "deferred" waiting request
    while b1.status is RequestStatus.RUNNING:
        step(engine)
        assert a2.status is RequestStatus.WAITING
    step(engine)  # B's slot is free: A gets in
    assert a2.status is RequestStatus.RUNNING and b1.finish_ns is not None
    assert a2.first_scheduled_ns == b1.finish_ns


def test_a_resident_adapter_keeps_its_slot_while_one_of_its_requests_runs() -> None:
    engine, a1, _, c1 = lockout_engine()
    a2 = make_request("A", max_tokens=10, arrival_ns=engine.now_ns)  # arrives while a1 runs
    engine.add_request(a2)
    step(engine)
    assert a2.status is RequestStatus.RUNNING  # A is in the step: admitted past c1
    while a2.status is RequestStatus.RUNNING:
        step(engine)
        assert c1.status is RequestStatus.WAITING
    step(engine)  # A's last request ended: C gets A's slot
    assert a1.is_finished and c1.status is RequestStatus.RUNNING
    assert c1.first_scheduled_ns == a2.finish_ns
