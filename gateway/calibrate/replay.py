"""Send a scenario's arrivals to a real server open-loop and record what it did, in the
twin's own ``Request`` form, so ``twin.results.summarize`` scores both runs alike.

Each arrival is sent at its time (streamed, ``ignore_eos``, random prompt ids of its length);
at ``duration_s`` every request still in flight is cancelled (vLLM aborts it), as the twin's
run ends there too. A request counts its prompt as processed once its first token came and
the output tokens it received; latencies run from when the client sent it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.calibrate.client import RequestTiming, ServerClient
from twin.request import FinishReason, Request, RequestStatus
from twin.workload import Arrival

__all__ = ["ReplayResult", "replay", "to_requests"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplayResult:
    requests: list[Request]
    errors: list[str]
    late_sends: int  # requests sent more than 10 ms after their arrival time
    wall_s: float


def to_requests(timings: Sequence[RequestTiming], adapters: Mapping[str, str | None],
                t0: float, end_s: float) -> list[Request]:
    """Client timings as twin requests (times in ns since ``t0``; nothing after ``end_s``).

    Examples
    --------
    >>> t = RequestTiming("a", 10, 4, sent=1.0, first=1.5, end=2.0, tokens=4, finished=True)
    >>> r = to_requests([t], {"a": "a"}, t0=1.0, end_s=5.0)[0]
    >>> r.first_token_ns, r.finish_ns, r.num_output_tokens, r.num_computed_tokens
    (500000000, 1000000000, 4, 10)
    """
    out = []
    for i, t in enumerate(timings):
        r = Request(f"real-{i}", adapters[t.model], t.prompt_tokens, t.max_tokens,
                    round((t.sent - t0) * 1e9))
        if t.first is not None and t.first - t0 <= end_s:
            r.first_token_ns = r.first_scheduled_ns = round((t.first - t0) * 1e9)
            r.num_computed_tokens = t.prompt_tokens
            r.num_output_tokens = t.tokens
            r.status = RequestStatus.RUNNING
        if t.finished and t.end is not None and t.end - t0 <= end_s:
            r.finish_ns = r.last_token_ns = round((t.end - t0) * 1e9)
            r.status = RequestStatus.FINISHED_LENGTH_CAPPED
            r.finish_reason = FinishReason.LENGTH
        out.append(r)
    return out


async def replay(client: ServerClient, arrivals: Sequence[Arrival], duration_s: float,
                 models: Mapping[str | None, str]) -> ReplayResult:
    """Replay ``arrivals`` (``models`` maps an arrival's adapter, None for the base model,
    to the name the server serves it under)."""
    timings: list[RequestTiming] = []
    tasks: list[asyncio.Task[RequestTiming]] = []
    late = 0
    t0 = time.perf_counter()
    for a in arrivals:
        delay = t0 + a.time_ns / 1e9 - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -0.01:
            late += 1
        tasks.append(asyncio.create_task(client.complete(
            models[a.adapter], a.prompt_tokens, a.max_tokens, sink=timings)))
    remaining = t0 + duration_s - time.perf_counter()
    if remaining > 0:
        await asyncio.wait(tasks, timeout=remaining) if tasks else await asyncio.sleep(
            remaining)
    wall = time.perf_counter() - t0
    for task in tasks:
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.gather(*tasks, return_exceptions=True)
    names = {name: adapter for adapter, name in models.items()}
    errors = [t.error for t in timings if t.error]
    return ReplayResult(requests=to_requests(timings, names, t0, duration_s), errors=errors,
                        late_sends=late, wall_s=wall)
