"""The demo's load: open-loop Poisson arrivals sent through the official ``openai`` client.

Each arrival becomes a request at its (time-scaled) arrival time whether or not earlier ones
have finished; at most ``concurrency`` are on the wire, the rest wait in the client, and
their wait counts in their latency (open loop: the clock starts at arrival). A share of the
requests streams (chat or text completions, time to first token measured on the first
content chunk); the rest are plain text completions.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

import openai

from gateway.demo.stats import DemoStats
from gateway.demo.workload import Arrivals
from planner import AdapterDemand

__all__ = ["LoadSpec", "drive", "make_client", "send"]


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadSpec:
    """How the load is sent."""

    time_scale: float = 2.0
    stream_fraction: float = 0.3
    concurrency: int = 400
    drain_timeout_s: float = 15.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.stream_fraction <= 1:
            raise ValueError(f"stream_fraction must be in [0, 1], got {self.stream_fraction!r}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")


def make_client(base_url: str, concurrency: int) -> openai.AsyncOpenAI:
    """An ``AsyncOpenAI`` on the gateway with no retries (a failure shows); the caller closes
    it. Its default pool keeps 100 connections alive, so ``concurrency`` above 100 churns
    connections (the client's HTTP library differs across openai releases: left as is)."""
    del concurrency
    return openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0,
                              timeout=600.0)


async def send(client: openai.AsyncOpenAI, adapter: AdapterDemand, *, stream: bool,
                chat: bool) -> float | None:
    """One request; the wall time of its first content chunk when streamed."""
    loop = asyncio.get_running_loop()
    prompt = "abcd" * int(adapter.input_tokens)  # the emulator counts 4 bytes a token
    tokens = int(adapter.output_tokens)
    if not stream:
        done = await client.completions.create(model=adapter.name, prompt=prompt,
                                               max_tokens=tokens)
        if not done.choices:
            raise ValueError("a completion without choices")
        return None
    first: float | None = None
    if chat:
        chunks = await client.chat.completions.create(
            model=adapter.name, messages=[{"role": "user", "content": prompt}],
            max_tokens=tokens, stream=True)
        async with chunks:
            async for c in chunks:
                if first is None and c.choices and c.choices[0].delta.content:
                    first = loop.time()
    else:
        pieces = await client.completions.create(model=adapter.name, prompt=prompt,
                                                 max_tokens=tokens, stream=True)
        async with pieces:
            async for p in pieces:
                if first is None and p.choices and p.choices[0].text:
                    first = loop.time()
    if first is None:
        raise ValueError("a stream without content")
    return first


async def _one(client: openai.AsyncOpenAI, adapter: AdapterDemand, stats: DemoStats,
               gate: asyncio.Semaphore, *, stream: bool, chat: bool) -> None:
    loop = asyncio.get_running_loop()
    arrived = loop.time()
    async with gate:
        stats.in_flight += 1
        try:
            first = await send(client, adapter, stream=stream, chat=chat)
        except (openai.APIError, ValueError) as exc:
            stats.fail(now=loop.time(), error=type(exc).__name__)
        else:
            now = loop.time()
            stats.record(now=now, e2e_s=now - arrived,
                         ttft_s=None if first is None else first - arrived)
        finally:
            stats.in_flight -= 1


async def drive(client: openai.AsyncOpenAI, adapters: Sequence[AdapterDemand],
                arrivals: Arrivals, stats: DemoStats, spec: LoadSpec,
                stop: asyncio.Event) -> int:
    """Send arrivals until ``stop`` is set, then wait for the requests in flight (at most
    ``drain_timeout_s``); returns how many were abandoned at the drain deadline."""
    loop = asyncio.get_running_loop()
    rng = random.Random(spec.seed)
    gate = asyncio.Semaphore(spec.concurrency)
    tasks: set[asyncio.Task[None]] = set()
    start = loop.time()
    while not stop.is_set():
        t_sim, index = arrivals.next()
        delay = start + t_sim / spec.time_scale - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
            if stop.is_set():
                break
        stream = rng.random() < spec.stream_fraction
        task = loop.create_task(_one(client, adapters[index], stats, gate, stream=stream,
                                     chat=rng.random() < 0.5))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if not tasks:
        return 0
    _, pending = await asyncio.wait(set(tasks), timeout=spec.drain_timeout_s)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return len(pending)
