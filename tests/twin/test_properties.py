"""Conservation properties under random workloads (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.twin.factories import make_engine, make_request
from twin.events import EventKind

request_st = st.tuples(
    st.sampled_from([None, "a", "b", "c", "d"]),  # adapter
    st.integers(1, 60),  # prompt tokens
    st.integers(1, 40),  # max tokens
    st.integers(0, 2_000_000_000),  # arrival ns
)


@settings(max_examples=60, deadline=None)
@given(reqs=st.lists(request_st, min_size=1, max_size=40),
       num_blocks=st.integers(33, 200), max_loras=st.integers(1, 3),
       budget=st.sampled_from([16, 32, 64]), fast=st.booleans(), cut=st.integers(1, 4000))
def test_every_request_finishes_or_is_queued_and_no_limit_breaks(
        reqs: list[tuple[str | None, int, int, int]], num_blocks: int, max_loras: int,
        budget: int, fast: bool, cut: int) -> None:
    engine = make_engine(num_blocks=num_blocks, max_loras=max_loras, max_cpu_loras=3,
                         max_num_batched_tokens=budget, max_num_seqs=8, fast_path=fast,
                         max_model_len=128)
    arrivals = sorted(reqs, key=lambda r: r[3])
    requests = []
    finished = set()
    for adapter, prompt, out, at in arrivals:
        events = engine.advance_until(at)
        finished |= {e.request_id for e in events if e.kind is EventKind.FINISHED}
        r = make_request(adapter, prompt=prompt, max_tokens=out, arrival_ns=at)
        engine.add_request(r)
        requests.append(r)
    # Stop somewhere in the middle: every request is finished, running or waiting.
    events = engine.advance_until(arrivals[-1][3] + cut * 1_000_000)
    finished |= {e.request_id for e in events if e.kind is EventKind.FINISHED}
    running, waiting = set(engine.running), set(engine.waiting)
    assert not running & waiting
    for r in requests:
        assert (r.request_id in finished) + (r in running) + (r in waiting) == 1
    held = sum(engine.computed_tokens(r) and _blocks(engine, r) for r in running)
    assert engine.free_blocks + held == engine.num_blocks - 1
    assert len(engine.running) <= 8
    if engine.steps is not None and len(engine.steps):
        assert max(engine.steps.distinct_adapters) <= max_loras
        assert max(p + d for p, d in zip(engine.steps.prefill_tokens,
                                         engine.steps.decode_seqs, strict=True)) <= budget
    # Drained, everything finishes with all its tokens and every block comes back.
    engine.advance_until(10**15)
    assert all(r.num_output_tokens == r.max_tokens for r in requests)
    assert engine.free_blocks == engine.num_blocks - 1


def _blocks(engine, r) -> int:
    bs = engine.config.block_size
    if r in engine.decoding:
        return -(-engine.computed_tokens(r) // bs)
    return int(r.num_blocks)
