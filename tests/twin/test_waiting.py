"""The waiting queue: FCFS with prepend, and the per-adapter heads the max_loras scan uses."""

from __future__ import annotations

import itertools
from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st

from twin.request import Request
from twin.waiting import WaitingQueue

_ids = itertools.count()


def req(lora: int, name: str | None = None) -> Request:
    rid = name if name is not None else f"r{next(_ids)}"
    return Request(rid, None if lora == 0 else f"a{lora}", 8, 4, 0, lora_int_id=lora)


def queue_of(*loras: int) -> tuple[WaitingQueue, list[Request]]:
    q = WaitingQueue()
    reqs = [req(lora, f"r{i}") for i, lora in enumerate(loras)]
    for r in reqs:
        q.append(r)
    return q, reqs


def ids(q: WaitingQueue) -> list[str]:
    return [r.request_id for r in q]


def test_empty_queue() -> None:
    q = WaitingQueue()
    assert len(q) == 0 and not q
    assert q.first() is None
    assert q.first_among({1, 2}) is None
    assert list(q) == []


def test_append_is_fcfs_across_adapters() -> None:
    q, reqs = queue_of(3, 1, 3, 2, 0)
    assert ids(q) == ["r0", "r1", "r2", "r3", "r4"]
    assert q.first() is reqs[0]
    assert len(q) == 5 and q
    assert sorted(q.adapters()) == [0, 1, 2, 3]


def test_popping_heads_yields_arrival_order() -> None:
    q, reqs = queue_of(2, 1, 2, 1, 1)
    popped = []
    while (head := q.first()) is not None:
        q.pop(head)
        popped.append(head)
    assert popped == reqs
    assert len(q) == 0


def test_prepend_puts_a_request_at_the_very_front() -> None:
    q, _reqs = queue_of(1, 2, 3)
    early, late = req(3, "early"), req(2, "late")
    q.prepend(early)
    q.prepend(late)  # a later prepend goes before an earlier one
    assert ids(q) == ["late", "early", "r0", "r1", "r2"]
    assert q.first() is late
    q.pop(late)
    assert q.first() is early


def test_prepend_to_an_adapter_with_waiting_requests() -> None:
    q, reqs = queue_of(1, 1)
    front = req(1, "front")
    q.prepend(front)
    assert q.first() is front
    assert q.first_among({1}) is front
    q.pop(front)
    assert q.first() is reqs[0]


def test_first_among_picks_the_earliest_request_of_the_given_adapters() -> None:
    q, reqs = queue_of(5, 3, 4, 3, 4)
    assert q.first_among({4}) is reqs[2]
    assert q.first_among({4, 3}) is reqs[1]
    assert q.first_among({7}) is None
    assert q.first_among(set()) is None


def test_first_among_always_admits_base_model_requests() -> None:
    q, reqs = queue_of(5, 0, 3)
    assert q.first_among({3}) is reqs[1]
    assert q.first_among(set()) is reqs[1]
    q.pop(reqs[1])
    assert q.first_among({3}) is reqs[2]


def test_pop_of_a_head_exposes_the_next_request() -> None:
    q, reqs = queue_of(1, 2, 1)
    q.pop(reqs[1])  # the head of adapter 2, not of the queue
    assert ids(q) == ["r0", "r2"]
    assert q.first() is reqs[0]
    q.pop(reqs[0])
    assert q.first() is reqs[2]
    assert sorted(q.adapters()) == [1]


def test_remove_of_a_middle_element() -> None:
    q, reqs = queue_of(1, 1, 1, 2)
    assert q.remove(reqs[1])
    assert ids(q) == ["r0", "r2", "r3"]
    assert len(q) == 3
    assert q.first() is reqs[0]
    assert not q.remove(reqs[1])  # no longer queued
    assert not q.remove(req(9))  # never queued
    assert len(q) == 3


def test_remove_of_a_head_exposes_the_next_request() -> None:
    q, reqs = queue_of(1, 2, 1)
    assert q.remove(reqs[0])
    assert q.first() is reqs[1]
    assert q.first_among({1}) is reqs[2]


def test_iteration_follows_queue_order_after_mixed_operations() -> None:
    q, reqs = queue_of(1, 2, 3)
    p = req(2, "p")
    q.prepend(p)
    q.append(req(1, "tail"))
    q.remove(reqs[1])
    assert ids(q) == ["p", "r0", "r2", "tail"]


# -- property test against a plain deque ----------------------------------------------------------

LORAS = st.integers(min_value=0, max_value=4)
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), LORAS),
        st.tuples(st.just("prepend"), LORAS),
        st.tuples(st.just("pop_first"), st.just(0)),
        st.tuples(st.just("pop_among"), st.integers(0, 15)),  # bitmask of adapters 1..4
    ),
    max_size=80,
)


def _subset(mask: int) -> set[int]:
    return {a for a in range(1, 5) if mask >> (a - 1) & 1}


@settings(max_examples=300, deadline=None)
@given(ops=OPS, probe=st.integers(0, 15))
def test_matches_a_reference_deque(ops: list[tuple[str, int]], probe: int) -> None:
    q = WaitingQueue()
    model: deque[Request] = deque()

    def expected_among(adapters: set[int]) -> Request | None:
        return next((r for r in model if r.lora_int_id in adapters or r.lora_int_id == 0), None)

    for op, arg in ops:
        if op == "append":
            r = req(arg)
            q.append(r)
            model.append(r)
        elif op == "prepend":
            r = req(arg)
            q.prepend(r)
            model.appendleft(r)
        elif op == "pop_first" and model:
            head = q.first()
            assert head is model[0]
            q.pop(head)
            model.popleft()
        elif op == "pop_among":
            chosen = q.first_among(_subset(arg))
            assert chosen is expected_among(_subset(arg))
            if chosen is not None:
                q.pop(chosen)
                model.remove(chosen)
        assert len(q) == len(model)
        assert q.first() is (model[0] if model else None)
        assert q.first_among(_subset(probe)) is expected_among(_subset(probe))
    assert list(q) == list(model)
