"""Each vLLM scheduling rule the twin copies (vllm/v1/core/sched/scheduler.py, schedule())."""

from __future__ import annotations

import pytest

from tests.twin.factories import make_engine, make_request, run_to_completion
from twin.engine import EngineCore
from twin.events import EventKind
from twin.request import Request, RequestStatus


def first_step(engine):
    engine._step()
    return engine.steps.record(len(engine.steps) - 1)


def test_running_first_then_waiting_within_token_budget() -> None:
    engine = make_engine(max_num_batched_tokens=16, max_num_seqs=16)
    a = make_request(prompt=10, max_tokens=50)
    engine.add_request(a)
    first_step(engine)  # a's prompt fits: a decodes from the next step
    b = make_request(prompt=40, max_tokens=5)
    engine.add_request(b)
    rec = first_step(engine)
    # a's decode is scheduled first (1 token); b gets the remaining 15 as a chunk.
    assert rec.decode_seqs == 1 and rec.prefill_tokens == 15
    assert engine.prefilling is b and b.num_computed_tokens == 15
    rec = first_step(engine)
    assert rec.decode_seqs == 1 and rec.prefill_tokens == 15


def test_partial_prefill_blocks_later_admissions_until_done() -> None:
    engine = make_engine(max_num_batched_tokens=16, max_num_seqs=16)
    big, small = make_request(prompt=40), make_request(prompt=4)
    engine.add_request(big)
    engine.add_request(small)
    first_step(engine)
    assert small.status is RequestStatus.WAITING  # budget exhausted by big's chunk
    first_step(engine)
    rec = first_step(engine)  # big finishes its prompt (8 left) and small is admitted
    assert rec.prefill_tokens == 8 + 4
    assert small.status is RequestStatus.RUNNING


def test_max_loras_skips_and_scan_goes_on() -> None:
    engine = make_engine(max_loras=1, max_num_batched_tokens=64)
    a1 = make_request("a", prompt=8, max_tokens=20)
    engine.add_request(a1)
    first_step(engine)
    b = make_request("b", prompt=8)
    a2 = make_request("a", prompt=8)
    engine.add_request(b)
    engine.add_request(a2)
    first_step(engine)
    # b's LoRA would be a second in the step: skipped; a2, behind it, is admitted.
    assert b.status is RequestStatus.WAITING
    assert a2.status is RequestStatus.RUNNING
    # b stays at the front of the queue and counts as deferred.
    assert engine.waiting.first() is b
    assert engine.stats().num_waiting_deferred == 1


def test_lora_count_starts_from_scheduled_running_requests() -> None:
    engine = make_engine(max_loras=1)
    a = make_request("a", prompt=8, max_tokens=2)
    engine.add_request(a)
    run_to_completion(engine)
    b = make_request("b", prompt=8)
    engine.add_request(b)
    first_step(engine)  # a finished: the step's LoRA set is empty, b is admitted
    assert b.status is RequestStatus.RUNNING


def test_kv_shortage_stops_admission_at_the_head() -> None:
    # 12 usable blocks of 4 tokens; the head needs 10 blocks, then 3 are left.
    engine = make_engine(num_blocks=13, block_size=4, max_model_len=48)
    first = make_request(prompt=40, max_tokens=4)
    engine.add_request(first)
    first_step(engine)
    head = make_request(prompt=40)
    small = make_request(prompt=4)
    engine.add_request(head)
    engine.add_request(small)
    first_step(engine)
    # The head cannot fit its whole prompt: the scan stops there, small waits behind it.
    assert head.status is RequestStatus.WAITING and small.status is RequestStatus.WAITING
    run_to_completion(engine)
    assert head.finish_ns is not None and small.finish_ns is not None
    assert head.first_scheduled_ns <= small.first_scheduled_ns


def test_max_num_seqs_caps_running() -> None:
    engine = make_engine(max_num_seqs=2, max_num_batched_tokens=64)
    reqs = [make_request(prompt=4, max_tokens=10) for _ in range(3)]
    for r in reqs:
        engine.add_request(r)
    first_step(engine)
    assert [r.status for r in reqs] == [RequestStatus.RUNNING] * 2 + [RequestStatus.WAITING]


def two_requests_on_six_blocks() -> tuple[EngineCore, Request, Request]:
    """6 usable blocks of 4 tokens and two requests of 8 + 12 tokens: 10 blocks at the end."""
    engine = make_engine(num_blocks=7, block_size=4, max_num_batched_tokens=64,
                         max_model_len=24)
    a = make_request(prompt=8, max_tokens=12)
    b = make_request(prompt=8, max_tokens=12)
    engine.add_request(a)
    engine.add_request(b)
    return engine, a, b


def test_preemption_of_last_running_with_recompute_and_no_admission() -> None:
    # 6 usable blocks of 4 tokens. Two requests of 8 prompt tokens take 2 blocks each;
    # decoding grows both until blocks run out, and the last admitted is preempted.
    engine, a, b = two_requests_on_six_blocks()
    preempted_at = None
    while preempted_at is None:
        engine._step()
        events = engine.take_events()
        if any(e.kind is EventKind.PREEMPTED for e in events):
            preempted_at = len(engine.steps)
            waiting_after = list(engine.waiting)
    assert b.num_preemptions == 1 and a.num_preemptions == 0
    assert b.status is RequestStatus.PREEMPTED and b.num_computed_tokens == 0
    assert waiting_after[0] is b  # prepended to waiting
    # No admission in the step that preempted: b is only rescheduled in a later step.
    assert b.status is not RequestStatus.RUNNING
    run_to_completion(engine)
    assert a.num_output_tokens == 12 and b.num_output_tokens == 12
    assert engine.free_blocks == engine.num_blocks - 1


def test_recompute_costs_prompt_plus_generated_tokens() -> None:
    engine, _, _ = two_requests_on_six_blocks()
    run_to_completion(engine)
    prefill = sum(engine.steps.prefill_tokens)
    # Both prompts once, plus b's recompute of its prompt and generated tokens.
    assert prefill > 16
    assert engine.num_preemptions >= 1


def test_lora_load_stalls_the_whole_step() -> None:
    engine = make_engine(load_ns=50_000_000)
    engine.add_request(make_request("a", prompt=8, max_tokens=3))
    rec = first_step(engine)
    # Cold: read from disk into the CPU tier, then copied into a GPU slot (50 ms each here).
    assert rec.lora_load_ns == 100_000_000
    assert rec.duration_ns >= 100_000_000 + 10_000_000
    rec = first_step(engine)
    assert rec.lora_load_ns == 0  # resident now


def test_max_tokens_capped_by_max_model_len() -> None:
    engine = make_engine(max_model_len=32)
    r = make_request(prompt=30, max_tokens=100)
    engine.add_request(r)
    run_to_completion(engine)
    assert r.num_output_tokens == 2
    with pytest.raises(ValueError, match="max_model_len"):
        engine.add_request(make_request(prompt=32))


def test_abort_frees_blocks_everywhere() -> None:
    engine = make_engine()
    running, queued = make_request(prompt=8, max_tokens=50), make_request(prompt=8)
    engine.add_request(running)
    first_step(engine)
    engine.add_request(queued)
    engine._step()
    engine._step()
    assert engine.abort_request(running.request_id)
    assert engine.abort_request(queued.request_id) or queued.is_finished
    assert running.status is RequestStatus.FINISHED_ABORTED
    run_to_completion(engine)
    assert engine.free_blocks == engine.num_blocks - 1
    assert not engine.abort_request("nope")


def test_streaming_requests_get_every_token_event() -> None:
    engine = make_engine()
    r = make_request(prompt=8, max_tokens=6, stream=True)
    engine.add_request(r)
    events = engine.advance_until(10**12)
    kinds = [e.kind for e in events if e.request_id == r.request_id]
    assert kinds.count(EventKind.FIRST_TOKEN) == 1
    assert kinds.count(EventKind.TOKEN) == 5
    assert kinds[-1] is EventKind.FINISHED
    times = [e.time_ns for e in events if e.request_id == r.request_id]
    assert times == sorted(times)
