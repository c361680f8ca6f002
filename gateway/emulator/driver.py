"""The asyncio driver: the twin's engine core on a wall clock.

The engine clock is the wall clock since start, times ``time_scale`` (engine ns =
``(perf_counter() - t0) * time_scale * 1e9``). Each turn of the loop runs every step that
starts before now, delivers the events that are due, and sleeps until the earlier of the next
step start (``engine.now_ns``, the end of the last step), the next undelivered event, or a new
request. A step may end after now; its events are delivered at their own times.

Requests are stamped with their arrival time and join the engine when its clock reaches it,
i.e. at the start of the first step that begins after they arrived, as in the SimPy driver
(``twin.simulation.Worker``): while the engine is idle a request starts at its arrival time.
So the step schedule depends only on arrival stamps, never on how late the loop wakes up.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from twin.engine import EngineCore
from twin.events import EngineEvent, EngineStats, EventKind
from twin.request import FinishReason, Request

__all__ = ["EngineDriver", "MetricsSink", "RequestHandle"]

_LIFECYCLE = (EventKind.SCHEDULED, EventKind.PREEMPTED, EventKind.FINISHED)


class RequestHandle:
    """One request's events, in order: FIRST_TOKEN, TOKEN... (streaming only), FINISHED."""

    __slots__ = ("_queue", "request")

    def __init__(self, request: Request) -> None:
        self.request = request
        self._queue: asyncio.Queue[EventKind] = asyncio.Queue()

    async def next_event(self) -> EventKind:
        return await self._queue.get()

    async def finished(self) -> Request:
        """Wait for the end of the request (tokens of a streaming request are skipped)."""
        while await self._queue.get() is not EventKind.FINISHED:
            pass
        return self.request

    def _put(self, kind: EventKind) -> None:
        self._queue.put_nowait(kind)


class MetricsSink:
    """What the driver reports as requests progress (``gateway.emulator.metrics`` implements
    it; the base class ignores everything)."""

    def first_token(self, ttft_s: float, queue_s: float) -> None:
        """A request's first token."""

    def finished(self, e2e_s: float, reason: str) -> None:
        """A request's end, normal or aborted."""

    def inter_token(self, values_s: np.ndarray, weights: np.ndarray) -> None:
        """Decode step durations, each weighted by the requests that got a token."""

    def lora_state(self, running: tuple[str, ...], waiting: tuple[str, ...]) -> None:
        """The adapters with requests running and waiting."""


class EngineDriver:
    """Runs ``engine`` in real time (scaled by ``time_scale``) inside the running loop.

    Parameters
    ----------
    engine
        The twin's engine core, fresh (clock at 0).
    time_scale
        Engine seconds per wall second.
    metrics
        Told about first tokens, finishes, inter-token latencies and adapter sets.
    """

    def __init__(self, engine: EngineCore, *, time_scale: float = 1.0,
                 metrics: MetricsSink | None = None, request_overhead_ns: int = 0) -> None:
        self.engine = engine
        # The profile's per-request overhead (HTTP, tokenising) before vLLM's engine sees a
        # request, as the offline twin applies it (twin.simulation.ArrivalSource).
        self.request_overhead_ns = request_overhead_ns
        self.time_scale = time_scale
        self._ns_per_s = 1e9 * time_scale
        self._metrics = metrics or MetricsSink()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0
        self._pending: deque[tuple[int, Request]] = deque()  # (reaches the engine, request)
        self._handles: dict[str, RequestHandle] = {}
        self._due: list[tuple[int, int, EngineEvent]] = []
        self._seq = itertools.count()
        self._ids = itertools.count()
        self._waiter: asyncio.Future[None] | None = None
        self._timer_ns = -1
        self._task: asyncio.Task[None] | None = None
        self._lora_dirty = False
        self.wakeups = 0

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the clock (engine time 0 is now) and the loop task."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._t0 = time.perf_counter()
        self._task = loop.create_task(self._run(), name="emulator-driver")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- clock -----------------------------------------------------------------------------

    def now_ns(self) -> int:
        """The engine clock now."""
        # perf_counter, not loop.time(): uvloop's clock is cached per loop turn, in ms.
        return max(0, int((time.perf_counter() - self._t0) * self._ns_per_s))

    def wall_s(self, engine_ns: float) -> float:
        """An engine duration in wall seconds."""
        return engine_ns / self._ns_per_s

    # -- requests --------------------------------------------------------------------------

    def submit(self, *, adapter: str | None, prompt_tokens: int, max_tokens: int,
               stream: bool, request_id: str | None = None) -> RequestHandle:
        """Queue a request arriving now; ``max_tokens`` must leave room in ``max_model_len``."""
        rid = request_id or f"req-{next(self._ids)}"
        request = Request(rid, adapter, prompt_tokens, max_tokens, self.now_ns(), stream=stream)
        handle = RequestHandle(request)
        self._handles[rid] = handle
        self._pending.append((request.arrival_ns + self.request_overhead_ns, request))
        self._kick()
        return handle

    def abort(self, request_id: str) -> None:
        """Abort a request (a client went away); its FINISHED event follows."""
        now = self.now_ns()
        for item in self._pending:
            request = item[1]
            if request.request_id == request_id:
                self._pending.remove(item)
                # Never reached the engine: finish it here as the engine would.
                self.engine.add_request(request)
                break
        self.engine.abort_request(request_id, max(now, self.engine.now_ns))
        self._kick()

    async def load_lora(self, name: str) -> None:
        """vLLM's ``add_lora``: returns when the load is done (the profile's load time)."""
        now = self.now_ns()
        self._advance(now)
        duration = self.engine.add_lora(name, now)
        self._kick()
        if duration:
            await asyncio.sleep(self.wall_s(duration))

    def stats(self) -> EngineStats:
        """The engine's state, counting arrived requests not yet in the engine as waiting."""
        stats = self.engine.stats()
        if self._pending:
            stats = replace(stats, num_waiting=stats.num_waiting + len(self._pending))
        return stats

    # -- the loop --------------------------------------------------------------------------

    def _kick(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _fire(self, at_ns: int) -> None:
        self._timer_ns = at_ns
        self._kick()

    async def _run(self) -> None:
        loop = self._loop
        assert loop is not None
        while True:
            self.wakeups += 1
            now = max(self.now_ns(), self._timer_ns)
            self._advance(now)
            self._deliver(now)
            wake = self._next_wake_ns()
            self._waiter = loop.create_future()
            timer = None
            if wake is not None:
                delay = self._t0 + wake / self._ns_per_s - time.perf_counter()
                timer = loop.call_later(max(0.0, delay), self._fire, wake)
            try:
                await self._waiter
            finally:
                if timer is not None:
                    timer.cancel()
                self._waiter = None

    def _advance(self, now: int) -> None:
        """Run every step that starts before ``now``, adding arrivals as the clock passes."""
        engine = self.engine
        pending = self._pending
        while True:
            if not engine.has_unfinished_requests:
                if not pending or pending[0][0] > now:
                    break
                engine.now_ns = max(engine.now_ns, pending[0][0])
            start = engine.now_ns
            while pending and pending[0][0] <= start:
                engine.add_request(pending.popleft()[1])
            if start >= now:
                break
            if engine.has_unfinished_requests:
                engine.step_run(now, pending[0][0] if pending else math.inf)
        self._collect()

    def _collect(self) -> None:
        engine = self.engine
        for event in engine.take_events():
            if event.request_id is None:
                continue
            if event.kind is EventKind.FINISHED:
                engine.requests.pop(event.request_id, None)  # keep a long run's memory flat
            heapq.heappush(self._due, (event.time_ns, next(self._seq), event))
        if engine.itl_ns or engine.itl_one_ns:
            values, weights = engine.itl_arrays(clear=True)
            self._metrics.inter_token(values / self._ns_per_s, weights)

    def _deliver(self, now: int) -> None:
        due = self._due
        while due and due[0][0] <= now:
            _, _, event = heapq.heappop(due)
            assert event.request_id is not None
            handle = self._handles.get(event.request_id)
            if handle is None:
                continue
            kind = event.kind
            request = handle.request
            if kind in _LIFECYCLE:
                self._lora_dirty = True
            if kind is EventKind.FIRST_TOKEN:
                assert request.first_token_ns is not None
                self._metrics.first_token(
                    self.wall_s(request.first_token_ns - request.arrival_ns),
                    self.wall_s((request.first_scheduled_ns or request.first_token_ns)
                                - request.arrival_ns))
                handle._put(kind)
            elif kind is EventKind.TOKEN:
                handle._put(kind)
            elif kind is EventKind.FINISHED:
                del self._handles[event.request_id]
                reason = request.finish_reason or FinishReason.ABORT
                if reason is not FinishReason.ABORT:
                    # vLLM 0.32 records no finished-request stats for a client's abort
                    # (v1/engine/output_processor.py abort_requests): a disconnect leaves
                    # vllm:request_success and the E2E histogram as they were.
                    self._metrics.finished(self.wall_s(event.time_ns - request.arrival_ns),
                                           str(reason))
                handle._put(kind)
        if self._lora_dirty:
            self._lora_dirty = False
            self._metrics.lora_state(*self.lora_names())

    def lora_names(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """Adapters with running and with waiting requests."""
        engine = self.engine
        name: Callable[[int], str] = engine.lora_name
        running = sorted({r.lora_int_id for r in engine.running if r.lora_int_id})
        waiting = sorted(i for i in engine.waiting.adapters() if i)
        return tuple(name(i) for i in running), tuple(name(i) for i in waiting)

    def _next_wake_ns(self) -> int | None:
        wake: int | None = self._due[0][0] if self._due else None
        step: int | None = None
        if self.engine.has_unfinished_requests:
            step = self.engine.now_ns + 1  # the next step starts then: run it just after
        elif self._pending:
            step = self._pending[0][0] + 1
        if step is not None:
            wake = step if wake is None else min(wake, step)
        return wake
