"""The calibration sweep: what ``lorafleet calibrate`` sends a running server, and what it reads.

Every measurement goes through vLLM's HTTP API and ``/metrics`` (``ServerClient``):

- **Decode steps** (per batch size, prompt length, share of LoRA requests and number of
  distinct adapters): a burst of ``B`` requests whose prompts fit one prefill step, each
  generating ``output_tokens``, base-model and LoRA requests mixed by ``lora_shares``; the
  mean step is the growth of ``vllm:inter_token_latency_seconds``'s sum over the growth of its
  count across the burst (vLLM observes one inter-token latency per request per decode step,
  so this is the step time weighted by the batch). Context per request is its prompt plus
  half its output, on average over the burst.
- **Prefill and per-request overhead**: requests sent one at a time (and bursts that fill the
  token budget, base, LoRA and mixed) with ``max_tokens=1``; the client's time to first token
  is the overhead plus one prefill step (median of the repeats). Of each request sent alone,
  the part outside vLLM's own clock (the client's time to first token less the growth of
  ``vllm:time_to_first_token_seconds``'s sum) is a floor for the overhead (``twin.fit``).
- **Overhead on a busy engine**: single requests sent at random moments while ``B`` others
  decode (``busy_batches``); their time to first token is the overhead, the wait for the step
  under way (half a step on average, as the twin waits) and a prefill step that carries the
  ``B`` decodes. On one CPU core the API server and the engine share, this overhead is larger
  than on an idle server; the twin charges the busy one.
- **Engine time per request**: decode steps of ``B`` requests while short requests arrive
  (``arrival_rate``); beyond the arrivals' prefill tokens, each request takes engine time
  (on one CPU core the API server handles it beside the engine).
- **Adapter loads**: ``/v1/load_lora_adapter`` loads into vLLM's CPU LoRA cache, so its time
  less an HTTP round trip is the disk->CPU load, per rank; the CPU->GPU load is the time to
  first token of requests that cycle through ``max_loras + 1`` adapters (each needs a slot
  swap) less that of requests repeating one adapter.

Every row carries the server's ``max_loras``, so sweeps of servers started with different
``--max-loras`` pool into one fit (``twin.fit``).
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.calibrate.client import CalibrationError, RequestTiming, ServerClient

__all__ = ["QUICK", "STANDARD", "AdapterSource", "ServerFacts", "SweepPlan", "SweepResult",
           "discover", "run_sweep"]

ITL = "vllm:inter_token_latency_seconds"
TTFT = "vllm:time_to_first_token_seconds"


@dataclass(frozen=True, slots=True, kw_only=True)
class SweepPlan:
    """Which points the sweep measures."""

    batches: tuple[int, ...] = (1, 4, 16, 32, 64, 96, 128)
    output_tokens: int = 32
    prefill_prompts: tuple[int, ...] = (16, 128, 256, 480)
    repeats: int = 5
    load_repeats: int = 3
    token_budget: int = 2048  # prompts of one burst fit vLLM's CPU default budget
    lora_shares: tuple[float, ...] = (0.0, 0.5, 1.0)  # LoRA requests' share of a batch
    busy_batches: tuple[int, ...] = (4, 16)  # decodes running while busy probes are sent
    busy_prompt: int = 96
    busy_probes: int = 12
    arrival_batches: tuple[int, ...] = (16, 48)  # decodes running while requests arrive
    arrival_rate: float = 40.0  # short requests per second sent meanwhile
    arrival_output: int = 120


STANDARD = SweepPlan()
QUICK = SweepPlan(batches=(1, 8, 32, 96), prefill_prompts=(16, 256), repeats=3,
                  load_repeats=2, busy_batches=(8,), busy_probes=6, arrival_batches=(16,))


@dataclass(frozen=True, slots=True)
class AdapterSource:
    """An adapter folder the server can load, and its rank."""

    path: str
    rank: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerFacts:
    """What the server says about itself."""

    base_model: str
    max_model_len: int
    max_loras: int
    vllm_version: str


@dataclass(slots=True)
class SweepResult:
    facts: ServerFacts
    steps: list[dict[str, float]] = field(default_factory=list)
    disk_loads: list[tuple[int, float]] = field(default_factory=list)  # (rank, seconds)
    swap_loads: list[tuple[int, float]] = field(default_factory=list)
    http_rtt_s: float = 0.0


async def discover(client: ServerClient, max_loras: int | None = None,
                   probe: AdapterSource | None = None) -> ServerFacts:
    """The base model and ``max_model_len`` from ``/v1/models``; ``max_loras`` from the
    ``max_lora`` label of ``vllm:lora_requests_info`` unless given. vLLM exports that
    series only once a LoRA request has run: if it is missing, ``probe`` is loaded, sent one
    request and unloaded, and ``/metrics`` read again."""
    cards = await client.models()
    base = next((c for c in cards if not c.get("parent")), None)
    if base is None:
        raise CalibrationError(f"{client.url}/v1/models lists no base model")
    if max_loras is None:
        label = (await client.scrape()).lora_info().get("max_lora")
        if label is None and probe is not None:
            await client.load_adapter("lorafleet-probe", probe.path)
            await client.complete("lorafleet-probe", 8, 2)
            await client.unload_adapter("lorafleet-probe")
            label = (await client.scrape()).lora_info().get("max_lora")
        if label is None:
            raise CalibrationError(f"{client.url}/metrics has no vllm:lora_requests_info: is "
                                   "the server started with --enable-lora?")
        max_loras = int(label)
    return ServerFacts(base_model=str(base["id"]), max_model_len=int(str(base.get(
        "max_model_len") or 2048)), max_loras=max_loras, vllm_version=await client.version())


async def _burst(client: ServerClient, models: list[str], batch: int, prompt: int,
                 output: int) -> tuple[float, list[RequestTiming]]:
    before = (await client.scrape()).histogram(ITL)
    timings = await asyncio.gather(*(client.complete(models[i % len(models)], prompt, output)
                                     for i in range(batch)))
    after = (await client.scrape()).histogram(ITL)
    failed = [t.error for t in timings if t.error]
    if failed:
        raise CalibrationError(f"a sweep request failed: {failed[0]}")
    count = after[1] - before[1]
    return ((after[0] - before[0]) / count if count > 0 else float("nan")), list(timings)


def _row(prefill: float, decode: float, context: float, adapters: int, seconds: float, *,
         lora_tokens: float, max_loras: int, overhead: bool, busy: bool = False,
         arrivals: float = 0.0, outside: list[float] | None = None) -> dict[str, float]:
    row = {"prefill_tokens": prefill, "decode_seqs": decode, "context_tokens": context,
           "distinct_adapters": float(adapters), "lora_tokens": lora_tokens,
           "max_loras": float(max_loras), "step_time_s": seconds,
           "includes_overhead": float(overhead), "busy": float(busy), "arrivals": arrivals}
    if outside:
        row["outside_engine_s"] = statistics.median(outside)
    return row


def _mix(names: list[str], base: str, batch: int, share: float, k: int) -> list[str] | None:
    """``batch`` model names, ``round(batch * share)`` of them cycling ``k`` adapters (None
    when the batch cannot hold that mix)."""
    n_lora = round(batch * share)
    if (0 < share < 1 and not 0 < n_lora < batch) or n_lora < k:
        return None
    return [names[i % k] for i in range(n_lora)] + [base] * (batch - n_lora)


async def _decode_rows(client: ServerClient, plan: SweepPlan, facts: ServerFacts,
                       names: list[str], out: SweepResult,
                       progress: Callable[[str], None]) -> None:
    out_tokens = plan.output_tokens
    longest = facts.max_model_len - out_tokens
    for share in plan.lora_shares:
        ks = [0] if share == 0 else [1] if share < 1 else sorted({1, min(2, facts.max_loras)})
        for k in ks:
            for batch in plan.batches:
                models = _mix(names, facts.base_model, batch, share, k)
                if models is None:
                    continue
                n_lora = sum(m != facts.base_model for m in models)
                for prompt in sorted({16, max(16, min(longest, plan.token_budget // batch))}):
                    itl, _ = await _burst(client, models, batch, prompt, out_tokens)
                    out.steps.append(_row(0.0, batch, batch * (prompt + out_tokens / 2), k,
                                          itl, lora_tokens=float(n_lora),
                                          max_loras=facts.max_loras, overhead=False))
                    progress(f"decode B={batch} prompt={prompt} lora={n_lora} adapters={k}: "
                             f"{itl * 1e3:.2f} ms/step")


async def _first_token_rows(client: ServerClient, plan: SweepPlan, facts: ServerFacts,
                            names: list[str], out: SweepResult,
                            progress: Callable[[str], None]) -> None:
    longest = facts.max_model_len - 1
    prompts = sorted({min(p, longest) for p in plan.prefill_prompts})
    for k in (0, 1):
        model = names[0] if k else facts.base_model
        for prompt in prompts:
            ttft, outside = await _alone(client, model, prompt, plan.repeats)
            out.steps.append(_row(prompt, 0.0, prompt, k, statistics.median(ttft),
                                  lora_tokens=float(prompt * k), max_loras=facts.max_loras,
                                  overhead=True, arrivals=1.0, outside=outside))
            progress(f"first token prompt={prompt} adapters={k}: "
                     f"{statistics.median(ttft) * 1e3:.1f} ms")
    batch = max(1, plan.token_budget // prompts[-1])
    for share in sorted({0.0, 1.0, *plan.lora_shares}):
        models = _mix(names, facts.base_model, batch, share, 1 if share else 0)
        if batch < 2 or models is None:
            continue
        n_lora = sum(m != facts.base_model for m in models)
        ttft = []
        for _ in range(plan.repeats):
            timings = await asyncio.gather(*(client.complete(m, prompts[-1], 1)
                                             for m in models))
            ttft.append(statistics.median(t.ttft or 0.0 for t in timings))
        tokens = batch * prompts[-1]
        out.steps.append(_row(tokens, 0.0, tokens, int(n_lora > 0), statistics.median(ttft),
                              lora_tokens=float(n_lora * prompts[-1]),
                              max_loras=facts.max_loras, overhead=True, arrivals=float(batch)))


async def _alone(client: ServerClient, model: str, prompt: int,
                 repeats: int) -> tuple[list[float], list[float]]:
    """Times to first token of ``repeats`` requests sent one at a time, and of each the part
    outside vLLM's own time to first token (which starts when the API server takes the
    request and ends when it has the token): the HTTP exchange and the client's loop."""
    ttft, outside = [], []
    before = (await client.scrape()).histogram(TTFT)
    for _ in range(repeats):
        ttft.append(await _ttft(client, model, prompt))
        after = (await client.scrape()).histogram(TTFT)
        if after[1] - before[1] == 1:  # nothing else ran meanwhile
            outside.append(ttft[-1] - (after[0] - before[0]))
        before = after
    return ttft, outside


async def _busy_rows(client: ServerClient, plan: SweepPlan, facts: ServerFacts,
                     names: list[str], out: SweepResult, progress: Callable[[str], None],
                     rng: random.Random) -> None:
    """First tokens of single requests sent while ``B`` long requests decode."""
    prompt, bg_prompt = plan.busy_prompt, 16
    bg_tokens = facts.max_model_len - bg_prompt - 1
    for batch in plan.busy_batches:
        for k in (0, 1):
            model = names[0] if k else facts.base_model
            background = [asyncio.create_task(client.complete(model, bg_prompt, bg_tokens))
                          for _ in range(batch)]
            try:
                started = time.perf_counter()
                await asyncio.sleep(0.2)  # past their prefills
                before = (await client.scrape()).histogram(ITL)
                ttft, at = [], []
                for _ in range(plan.busy_probes):
                    await asyncio.sleep(rng.uniform(0.01, 0.04))
                    at.append(time.perf_counter() - started)
                    ttft.append(await _ttft(client, model, prompt))
                after = (await client.scrape()).histogram(ITL)
            finally:
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
            if any(t.done() and not t.cancelled() for t in background):
                progress(f"busy first token B={batch}: background ended early, row skipped")
                continue
            count = after[1] - before[1]
            itl = (after[0] - before[0]) / count if count > 0 else float("nan")
            decoded = bg_prompt + statistics.mean(at) / itl  # tokens per background request
            wait = itl / 2  # the step under way when a probe arrives, on average
            out.steps.append(_row(prompt, batch, prompt + batch * decoded, k,
                                  statistics.median(ttft) - wait,
                                  lora_tokens=float((prompt + batch) * k),
                                  max_loras=facts.max_loras, overhead=True, busy=True,
                                  arrivals=1.0))
            progress(f"busy first token B={batch} adapters={k}: "
                     f"{statistics.median(ttft) * 1e3:.1f} ms (step {itl * 1e3:.2f} ms)")
            await asyncio.sleep(0.3)  # the aborted requests leave


async def _arrival_rows(client: ServerClient, plan: SweepPlan, facts: ServerFacts,
                        names: list[str], out: SweepResult,
                        progress: Callable[[str], None]) -> None:
    """Decode steps of ``B`` LoRA requests while short LoRA requests (16-token prompt, one
    token, so no inter-token latency of their own) arrive at ``arrival_rate``: per step,
    their prefill tokens and the engine time each takes from the step (``request_cpu_s``)."""
    prompt, short = 16, 16
    for batch in plan.arrival_batches:
        before = (await client.scrape()).histogram(ITL)
        background = [asyncio.create_task(client.complete(names[0], prompt,
                                                          plan.arrival_output))
                      for _ in range(batch)]
        extra: list[asyncio.Task[RequestTiming]] = []
        start = time.perf_counter()
        while not all(t.done() for t in background):
            await asyncio.sleep(max(0.0, start + (len(extra) + 1) / plan.arrival_rate
                                    - time.perf_counter()))
            extra.append(asyncio.create_task(client.complete(names[0], short, 1)))
        done = await asyncio.gather(*background, *extra)
        after = (await client.scrape()).histogram(ITL)
        failed = [t.error for t in done if t.error]
        if failed:
            raise CalibrationError(f"a sweep request failed: {failed[0]}")
        count = after[1] - before[1]
        steps = count / batch
        if steps <= 0:
            continue
        itl = (after[0] - before[0]) / count
        per_step = len(extra) / steps  # arrivals per step
        context = batch * (prompt + plan.arrival_output / 2) + per_step * short
        out.steps.append(_row(per_step * short, batch, context, 1, itl,
                              lora_tokens=batch + per_step * short,
                              max_loras=facts.max_loras, overhead=False, arrivals=per_step))
        progress(f"decode B={batch} with {len(extra)} arrivals ({per_step:.2f}/step): "
                 f"{itl * 1e3:.2f} ms/step")


async def _ttft(client: ServerClient, model: str, prompt: int) -> float:
    t = await client.complete(model, prompt, 1)
    if t.error or t.ttft is None:
        raise CalibrationError(f"a sweep request failed: {t.error or 'no token'}")
    return t.ttft


async def _loads(client: ServerClient, plan: SweepPlan, sources: list[AdapterSource],
                 out: SweepResult) -> None:
    out.http_rtt_s = statistics.median([await client.timed_get() for _ in range(7)])
    for rep in range(plan.load_repeats):
        for src in sources:
            name = f"lorafleet-calib-disk-r{src.rank}-{rep}"
            took = await client.load_adapter(name, src.path)
            await client.unload_adapter(name)
            out.disk_loads.append((src.rank, max(0.0, took - out.http_rtt_s)))


async def _swaps(client: ServerClient, plan: SweepPlan, names: list[str], rank: int,
                 out: SweepResult) -> None:
    """Time to first token cycling ``max_loras + 1`` adapters (a slot swap each) against
    repeating one (a hit each), interleaved so that drift hits both alike."""
    hits, misses = [], []
    for i in range(plan.repeats * 2):
        hits.append(await _ttft(client, names[0], 16))
        hits.append(await _ttft(client, names[0], 16))
        for name in names[1:]:
            misses.append(await _ttft(client, name, 16))
        misses.append(await _ttft(client, names[0], 16))
        del i
    out.swap_loads.append((rank, max(0.0, statistics.median(misses)
                                     - statistics.median(hits))))


async def run_sweep(client: ServerClient, plan: SweepPlan, sources: list[AdapterSource],
                    *, max_loras: int | None = None, seed: int = 0,
                    progress: Callable[[str], None] = lambda _: None) -> SweepResult:
    """Measure the server; the adapters it loads are unloaded again at the end."""
    if not sources:
        raise CalibrationError("calibration needs at least one adapter to load (--adapter)")
    facts = await discover(client, max_loras, sources[0])
    out = SweepResult(facts)
    await _loads(client, plan, sources, out)
    progress(f"adapter loads: {len(out.disk_loads)} timed")
    first = sources[0]
    names = [f"lorafleet-calib-{i}" for i in range(facts.max_loras + 1)]
    for name in names:
        await client.load_adapter(name, first.path)
    try:
        # Warm-up: first requests pay one-off costs (allocation, caches).
        await _burst(client, names[:1], 8, 16, 8)
        await _burst(client, [facts.base_model], 8, 16, 8)
        await _swaps(client, plan, names, first.rank, out)
        progress("slot swaps timed")
        await _decode_rows(client, plan, facts, names, out, progress)
        await _first_token_rows(client, plan, facts, names, out, progress)
        await _busy_rows(client, plan, facts, names, out, progress, random.Random(seed))
        await _arrival_rows(client, plan, facts, names, out, progress)
    finally:
        for name in names:
            await client.unload_adapter(name)
    return out
