"""The starvation guard's evidence and hysteresis, on a clock the tests move."""

from __future__ import annotations

import itertools

import pytest

from gateway.fleet.guard import Evidence, GuardConfig, StarvationGuard

CFG = GuardConfig(ttft_bound_s=10.0, window_s=10.0, min_ttfts=20, relax_s=120.0)


def _kinds(guard: StarvationGuard, now: float, queues: dict | None = None) -> list[tuple]:
    return [(f.worker, f.evidence, f.adapter) for f in guard.check(now=now, queues=queues or {})]


def test_a_streamed_request_without_a_token_for_lockout_s_is_a_lockout() -> None:
    guard = StarvationGuard(CFG)
    guard.sent("w0", "c", streamed=True, now=0.0)
    assert _kinds(guard, 4.9) == []
    assert _kinds(guard, 5.1) == [("w0", Evidence.LOCKOUT, "c")]


def test_no_lockout_while_the_adapter_is_served_or_the_request_started() -> None:
    guard = StarvationGuard(CFG)
    waiting = guard.sent("w0", "a", streamed=True, now=0.0)
    other = guard.sent("w0", "a", streamed=True, now=0.0)
    guard.ended(other, now=3.0, ttft_s=0.2)  # the adapter's requests are being served
    assert _kinds(guard, 6.0) == []
    assert _kinds(guard, 8.1) == [("w0", Evidence.LOCKOUT, "a")]
    guard.first_token(waiting, now=8.2)
    assert _kinds(guard, 30.0) == []
    # not streamed: the gateway sees no first token, so its age says nothing
    guard.sent("w1", "b", streamed=False, now=0.0)
    assert _kinds(guard, 60.0) == []


def test_ttft_p99_over_the_bound_with_enough_requests() -> None:
    guard = StarvationGuard(CFG)
    for i in range(19):
        guard.ended(guard.sent("w0", "a", streamed=True, now=float(i) / 4), now=5.0,
                    ttft_s=0.5)
    late = guard.sent("w0", "a", streamed=True, now=0.0)
    guard.first_token(late, now=4.0)
    guard.ended(late, now=5.0, ttft_s=12.0)
    assert _kinds(guard, 6.0) == [("w0", Evidence.TTFT, None)]
    assert _kinds(guard, 15.5) == []  # the window moved past them


def test_nineteen_requests_are_too_few_for_a_p99() -> None:
    guard = StarvationGuard(CFG)
    for _ in range(19):
        guard.ended(guard.sent("w0", "a", streamed=True, now=0.0), now=5.0, ttft_s=12.0)
    assert _kinds(guard, 6.0) == []


def _series(values: list[float], start: float = 0.0, step: float = 2.0) -> list[tuple]:
    return [(start + step * i, v) for i, v in enumerate(values)]


@pytest.mark.parametrize(("values", "found"), [
    ([1, 2, 3, 4, 5, 6], True),
    ([3, 3, 2, 4, 5, 6], True),  # a dip: still grown over the window
    ([4, 4, 4, 4, 4, 4], False),  # a steady queue
    ([6, 5, 4, 3, 2, 1], False),  # draining
    ([0, 2, 3, 4, 5, 6], False),  # empty at one scrape: not a whole window
    ([1, 2, 2], False),  # grew by 1: noise
])
def test_a_queue_that_grows_over_a_whole_window(values: list[float], found: bool) -> None:
    guard = StarvationGuard(CFG)
    guard.ended(guard.sent("w0", "a", streamed=False, now=0.0), now=5.0)  # one finished
    queues = {"w0": _series(values)}
    now = 2.0 * (len(values) - 1)
    assert _kinds(guard, now, queues) == ([("w0", Evidence.QUEUE, None)] if found else [])


@pytest.mark.parametrize(("finished", "found"), [(0, False), (1, True), (11, True),
                                                  (13, False)])
def test_a_growing_queue_counts_when_it_takes_lockout_s_to_clear(finished: int,
                                                                  found: bool) -> None:
    """6 waiting, 5 s to clear at most: 12 requests finished in the 10 s window or fewer (at
    least one: a worker that finished none is filling up, or hung)."""
    guard = StarvationGuard(CFG)
    for _ in range(finished):
        guard.ended(guard.sent("w0", "a", streamed=False, now=0.0), now=5.0)
    queues = {"w0": _series([1, 2, 3, 4, 5, 6])}
    assert bool(_kinds(guard, 10.0, queues)) is found


def test_too_short_a_span_of_scrapes_is_no_window() -> None:
    guard = StarvationGuard(CFG)
    assert _kinds(guard, 4.0, {"w0": _series([1, 3, 5])}) == []  # 4 s of a 10 s window


def test_after_a_finding_only_newer_evidence_counts() -> None:
    guard = StarvationGuard(CFG)
    guard.sent("w0", "c", streamed=True, now=0.0)
    findings = guard.check(now=6.0, queues={})
    assert findings
    guard.fired(findings, now=6.0)
    assert _kinds(guard, 20.0) == []  # the same request, still waiting, counted once
    guard.sent("w0", "c", streamed=True, now=7.0)  # a new one locked out as well
    assert _kinds(guard, 11.9) == []
    assert _kinds(guard, 12.1) == [("w0", Evidence.LOCKOUT, "c")]
    # queue growth needs a whole window after the finding
    queues = {"w0": _series([1, 2, 3, 4, 5, 6], start=4.0)}
    assert [f.evidence for f in guard.check(now=14.0, queues=queues)
            if f.evidence is Evidence.QUEUE] == []


def test_penalty_compounds_to_the_floor_and_relaxes_one_step_per_period() -> None:
    guard = StarvationGuard(CFG)
    assert guard.factor("w0", now=0.0) == 1.0
    guard.ended(guard.sent("w0", "a", streamed=False, now=0.0), now=1.0)
    finding = guard.check(now=6.0, queues={"w0": _series([1, 2, 3, 4, 5, 6], start=-4.0)})
    assert finding
    guard.fired(finding, now=6.0)
    assert guard.factor("w0", now=6.0) == pytest.approx(0.8)
    for t in (12.0, 18.0, 24.0, 30.0):
        guard.fired(finding, now=t)
    assert guard.factor("w0", now=30.0) == pytest.approx(0.5)  # the floor
    assert guard.factor("w0", now=30.0 + 119.0) == pytest.approx(0.5)
    assert guard.factor("w0", now=30.0 + 121.0) == pytest.approx(0.625)
    assert guard.factor("w0", now=30.0 + 4 * 120.0 + 1) == 1.0  # back: no penalty left


def test_guard_replans_are_spaced_and_back_off_while_they_follow_closely() -> None:
    guard = StarvationGuard(CFG)
    assert guard.due(now=0.0)
    guard.fired([], now=0.0)
    assert not guard.due(now=4.9)
    assert guard.due(now=5.0)
    fired = [0.0]
    t = 0.0
    while len(fired) < 7:  # evidence at every check: the spacing doubles up to relax_s / 2
        t += 0.5
        if guard.due(now=t):
            guard.fired([], now=t)
            fired.append(t)
    gaps = [b - a for a, b in itertools.pairwise(fired)]
    assert gaps == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
    assert guard.due(now=t + 60.0)
    guard.fired([], now=t + 200.0)  # quiet for a while: back to lockout_s
    assert guard.due(now=t + 205.0)


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError, match="floor"):
        GuardConfig(penalty=0.4, floor=0.5)
    with pytest.raises(ValueError, match="ttft_bound_s"):
        GuardConfig(ttft_bound_s=0)
