"""The fleet benchmark's load (``bench/fleet.py``): one seeded schedule of requests, sent
open-loop through the official ``openai`` client, one record per request.

The schedule is the demo's workload (``gateway.demo.workload``: Zipf-skewed adapters whose
popularity order rotates every ``shift_every_s`` simulated seconds) drawn once, so every
policy sees the same adapters and the same arrival sequence. Each arrival notes the
adapter's popularity rank when it is sent; a request is *rare* when that rank is among the
lowest-rate 20% of adapters. Rare requests all stream (their time to first token is the
starvation figure); the others stream with probability ``stream_fraction`` (streaming costs
client CPU per token, and the 2-core machine is shared).

Times in records are simulated seconds (wall seconds times the time scale).

Examples
--------
>>> from gateway.demo.workload import demo_adapters
>>> ads = demo_adapters(10, total_rate=20.0, seed=0)
>>> plan = schedule(ads, seconds=30.0, seed=1, shift_every_s=10.0, stream_fraction=0.0)
>>> plan == schedule(ads, seconds=30.0, seed=1, shift_every_s=10.0, stream_fraction=0.0)
True
>>> all(a.stream == a.rare for a in plan), {a.rare for a in plan} == {True, False}
(True, True)
>>> rec = [Record(plan[0], ok=True, ttft_s=0.5, done_s=1.0)]
>>> summarize(rec, adapters=10, seconds=30.0, grace_s=5.0, ttft_bound_s=10.0)["failed"]
0
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import openai

from gateway.demo.load import send
from gateway.demo.workload import Arrivals
from planner import AdapterDemand

RARE_SHARE = 0.2  # the rare adapters: this share of them, with the lowest rates


@dataclass(frozen=True, slots=True, kw_only=True)
class Arrival:
    """One request of the schedule (times in simulated seconds)."""

    at_s: float
    adapter: int
    rank: int  # the adapter's popularity rank when sent (0: the hottest)
    rare: bool
    stream: bool
    chat: bool


@dataclass(slots=True)
class Record:
    """What became of one arrival (times in simulated seconds since the start)."""

    arrival: Arrival
    ok: bool = False
    error: str = ""
    sent_late_s: float = 0.0
    ttft_s: float | None = None
    done_s: float | None = None


def schedule(adapters: Sequence[AdapterDemand], *, seconds: float, seed: int,
             shift_every_s: float | None, stream_fraction: float,
             shift_by: int = 3) -> list[Arrival]:
    """The arrivals of ``seconds`` simulated seconds; the same for the same arguments."""
    arrivals = Arrivals(adapters, seed=seed, shift_every_s=shift_every_s, shift_by=shift_by)
    rng = random.Random(seed + 1)
    n = len(adapters)
    rare_from = n - max(1, round(n * RARE_SHARE))
    out: list[Arrival] = []
    while True:
        t, index = arrivals.next()
        if t >= seconds:
            return out
        rank = (index + arrivals.phase(t) * shift_by) % n
        rare = rank >= rare_from
        stream = rare or rng.random() < stream_fraction
        out.append(Arrival(at_s=t, adapter=index, rank=rank, rare=rare, stream=stream,
                           chat=rng.random() < 0.5))


def make_client(base_url: str) -> openai.AsyncOpenAI:
    """The official client on ``base_url`` with no retries (a failure shows)."""
    return openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0,
                              timeout=600.0)


async def _send(client: openai.AsyncOpenAI, adapter: AdapterDemand, a: Arrival) -> float | None:
    """One request, as the demo sends it; the loop time of its first content chunk when
    streamed."""
    return await send(client, adapter, stream=a.stream, chat=a.chat)


async def _one(client: openai.AsyncOpenAI, adapter: AdapterDemand, record: Record,
               start: float, scale: float, gate: asyncio.Semaphore) -> None:
    loop = asyncio.get_running_loop()
    arrived = start + record.arrival.at_s / scale
    async with gate:
        record.sent_late_s = max(0.0, loop.time() - arrived) * scale
        try:
            first = await _send(client, adapter, record.arrival)
        except (openai.APIError, ValueError) as exc:
            record.error = type(exc).__name__
        else:
            record.ok = True
            record.ttft_s = None if first is None else (first - arrived) * scale
        record.done_s = (loop.time() - start) * scale


async def drive(client: openai.AsyncOpenAI, adapters: Sequence[AdapterDemand],
                plan: Sequence[Arrival], *, time_scale: float, concurrency: int,
                drain_timeout_s: float) -> tuple[list[Record], int]:
    """Send ``plan`` open-loop (each request at its time, whether or not earlier ones are
    done); wait for the last ones at most ``drain_timeout_s`` wall seconds. Returns the
    records and how many requests were abandoned at that deadline (counted as failed)."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(concurrency)
    records = [Record(a) for a in plan]
    tasks: list[asyncio.Task[None]] = []
    start = loop.time()
    for record in records:
        delay = start + record.arrival.at_s / time_scale - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(_one(client, adapters[record.arrival.adapter], record,
                                           start, time_scale, gate)))
    if not tasks:
        return records, 0
    _, pending = await asyncio.wait(tasks, timeout=drain_timeout_s)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for record in records:
        if record.done_s is None:
            record.error = record.error or "abandoned"
    return records, len(pending)


def _p(values: Sequence[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def summarize(records: Sequence[Record], *, adapters: int, seconds: float, grace_s: float,
              ttft_bound_s: float) -> dict[str, Any]:
    """Counts, latencies and the starvation verdict of one run.

    An adapter starves when fewer than 90% of its requests are answered by ``seconds +
    grace_s`` (the paper's verdict, served below 0.9x offered, with a grace for the requests
    sent last); the run starves when an adapter does or the rare requests' p99 time to first
    token exceeds ``ttft_bound_s``.
    """
    ok = [r for r in records if r.ok]
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    rare = [r.ttft_s for r in ok if r.ttft_s is not None and r.arrival.rare]
    deadline = seconds + grace_s
    sent = [0] * adapters
    served = [0] * adapters
    for r in records:
        sent[r.arrival.adapter] += 1
        if r.ok and r.done_s is not None and r.done_s <= deadline:
            served[r.arrival.adapter] += 1
    starved = [i for i in range(adapters) if sent[i] and served[i] < 0.9 * sent[i]]
    ttft_rare = _p(rare, 99)
    late = [r.sent_late_s for r in records]
    return {
        "requests": len(records), "ok": len(ok), "failed": len(records) - len(ok),
        "rare_requests": sum(1 for r in records if r.arrival.rare),
        "ttft_p50_s": _p(ttft, 50), "ttft_p99_s": _p(ttft, 99),
        "ttft_p50_s_rare": _p(rare, 50), "ttft_p99_s_rare": ttft_rare,
        "served_by_deadline": round(sum(served) / max(1, len(records)), 4),
        "starved_adapters": starved,
        "starved": bool(starved) or ttft_rare is None or ttft_rare > ttft_bound_s,
        "throughput_rps": round(sum(served) / seconds, 3),
        "client_late_p99_s": _p(late, 99),
        "errors": dict(Counter(r.error for r in records if r.error)),
        "ttft_p99_s_by_window": windows(records, seconds),
    }


def windows(records: Sequence[Record], seconds: float, width_s: float = 10.0,
            ) -> list[float | None]:
    """The p99 time to first token of the streamed requests sent in each ``width_s``
    simulated seconds (how latency moves as the hot set rotates)."""
    out: list[list[float]] = [[] for _ in range(max(1, math.ceil(seconds / width_s)))]
    for r in records:
        if r.ok and r.ttft_s is not None:
            out[min(len(out) - 1, int(r.arrival.at_s // width_s))].append(r.ttft_s)
    return [_p(v, 99) for v in out]


def finite(value: float | None) -> float | None:
    """``value``, or None when it is missing or not finite (strict JSON)."""
    return value if value is not None and math.isfinite(value) else None
