"""vLLM's waiting queue, indexed by adapter so the ``max_loras`` scan costs O(max_loras).

vLLM scans ``waiting`` in order and *skips* a request whose LoRA is new to the step once the
step holds ``max_loras`` LoRAs; skipped requests go back to the front in their order
(``v1/core/sched/scheduler.py``, ``skip_request`` and ``prepend_requests``). Skipping leaves the
relative order unchanged, so the scan is equivalent to: while fewer than ``max_loras`` LoRAs are
in the step take the first request; afterwards take the first request whose LoRA is already in
the step (or that has none). Keeping one FIFO per adapter and a sequence number per request
answers both in O(number of LoRAs in the step) instead of O(queue length).
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Iterator

from twin.request import Request

__all__ = ["WaitingQueue"]


class WaitingQueue:
    """FCFS queue with O(1) append/prepend and per-adapter heads.

    Examples
    --------
    >>> from twin.request import Request
    >>> q = WaitingQueue()
    >>> for i, lora in enumerate([1, 2, 1]):
    ...     q.append(Request(str(i), "a", 8, 4, 0, lora_int_id=lora))
    >>> q.first().request_id, q.first_among({2}).request_id, len(q)
    ('0', '1', 3)
    """

    def __init__(self) -> None:
        self._queues: dict[int, deque[Request]] = {}
        self._heads: list[tuple[int, int, int]] = []
        self._back = 0
        self._front = -1
        self._len = 0
        self._deferred_mark: dict[int, int] = {}
        self._last_mark: tuple[int, frozenset[int]] | None = None

    def __len__(self) -> int:
        return self._len

    def __bool__(self) -> bool:
        return self._len > 0

    def __iter__(self) -> Iterator[Request]:
        """Requests in queue order (O(n log n); for metrics and tests, not the hot path)."""
        merged = [r for q in self._queues.values() for r in q]
        return iter(sorted(merged, key=lambda r: r.queue_seq))

    def append(self, request: Request) -> None:
        request.queue_seq = self._back
        self._back += 1
        self._push(request, front=False)

    def prepend(self, request: Request) -> None:
        """Put ``request`` at the very front (a preempted request, vLLM ``prepend_request``)."""
        request.queue_seq = self._front
        self._front -= 1
        self._push(request, front=True)

    def _push(self, request: Request, *, front: bool) -> None:
        q = self._queues.get(request.lora_int_id)
        if q is None:
            q = self._queues[request.lora_int_id] = deque()
        if front:
            q.appendleft(request)
        else:
            q.append(request)
        if front or len(q) == 1:
            heapq.heappush(self._heads, (request.queue_seq, id(q), request.lora_int_id))
        self._len += 1

    def first(self) -> Request | None:
        """The request at the front of the queue."""
        heads = self._heads
        while heads:
            seq, _, adapter = heads[0]
            q = self._queues.get(adapter)
            if q and q[0].queue_seq == seq:
                return q[0]
            heapq.heappop(heads)  # stale: that head was admitted or aborted
        return None

    def first_among(self, adapters: Iterable[int]) -> Request | None:
        """The first request whose LoRA is in ``adapters`` or that has none (id 0)."""
        best: Request | None = None
        base = self._queues.get(0)
        if base:
            best = base[0]
        for adapter in adapters:
            q = self._queues.get(adapter)
            if q and (best is None or q[0].queue_seq < best.queue_seq):
                best = q[0]
        return best

    def pop(self, request: Request) -> None:
        """Remove ``request``, which must be the head of its adapter's FIFO."""
        q = self._queues[request.lora_int_id]
        assert q[0] is request
        q.popleft()
        self._len -= 1
        if q:
            heapq.heappush(self._heads, (q[0].queue_seq, id(q), request.lora_int_id))
        else:
            del self._queues[request.lora_int_id]

    def remove(self, request: Request) -> bool:
        """Remove ``request`` wherever it is (abort); False if it is not queued."""
        q = self._queues.get(request.lora_int_id)
        if not q or request not in q:
            return False
        if q[0] is request:
            self.pop(request)
            return True
        q.remove(request)
        self._len -= 1
        return True

    def adapters(self) -> Iterator[int]:
        """Adapters with at least one waiting request."""
        return iter(self._queues)

    # -- vLLM's "deferred" waiting requests (skipped by the LoRA rule at least once) --------

    def mark_skipped(self, stop_seq: int, in_step: frozenset[int]) -> None:
        """Record that a scan skipped every request before ``stop_seq`` whose LoRA is not in
        ``in_step`` (``scheduler.py`` adds each to ``deferred_waiting``)."""
        if self._last_mark == (stop_seq, in_step):
            return
        self._last_mark = (stop_seq, in_step)
        for adapter, q in self._queues.items():
            if adapter != 0 and adapter not in in_step and q[0].queue_seq < stop_seq:
                mark = self._deferred_mark.get(adapter, stop_seq)
                self._deferred_mark[adapter] = max(mark, stop_seq)

    def num_deferred(self) -> int:
        """Waiting requests that a scan has skipped (``vllm:num_requests_waiting_by_reason``)."""
        total = 0
        for adapter, mark in list(self._deferred_mark.items()):
            q = self._queues.get(adapter)
            if not q:
                del self._deferred_mark[adapter]
                continue
            total += sum(1 for r in q if r.queue_seq < mark)
        return total
