"""How many emulated workers, at what request rate, one core sustains with event-loop lag
under 10 ms.

A child process pinned to one core serves N emulated workers (``lorafleet fleet``'s setup:
one uvloop, separate engines, time scale 1, Llama-3.1-8B on A100-80GB, 4 adapters each) and
probes its loop lag (a 5 ms sleep, minus 5 ms). This process, pinned to the other core, sends
an open-loop Poisson load of short non-streaming completions (256 prompt / 64 output tokens)
spread over the workers, at increasing total rates. A point passes when the p99 loop lag is
under 10 ms and every request succeeds. Prints a table and writes
``bench/results/worker_capacity.json``. Run: ``.venv/bin/python bench/worker_capacity.py``.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import random
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
WORKERS = (16, 64)
RATES = (50, 100, 200, 400, 800)  # total requests/s over all workers
SECONDS = 6.0
LAG_LIMIT_S = 0.010
ADAPTERS = 4


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and cpu < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {cpu})


async def _fleet(n: int, conn: Connection) -> None:
    from gateway.emulator.adapters import scaffold_adapter
    from gateway.emulator.app import create_app, serve
    from gateway.emulator.config import LoraModule, WorkerConfig
    from twin.catalog import get_gpu, get_model
    from twin.profile import load_profile
    from twin.specs import default_engine_for

    gpu = get_gpu("a100-80gb")
    folder = Path(tempfile.mkdtemp(prefix="capacity-"))
    modules = tuple(LoraModule(f"a{i}", str(scaffold_adapter(folder / f"a{i}", rank=8)))
                    for i in range(ADAPTERS))
    cfg = WorkerConfig(model=get_model("llama-3.1-8b"), gpu=gpu,
                       profile=load_profile("roofline-default"),
                       engine=default_engine_for(gpu, max_loras=ADAPTERS, max_model_len=4096),
                       served_model_name="base", lora_modules=modules)
    runners = [await serve(create_app(cfg), "127.0.0.1", 0) for _ in range(n)]
    conn.send([f"http://127.0.0.1:{r.addresses[0][1]}" for r in runners])
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    measuring = False

    async def probe() -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            if measuring:
                lags.append(time.perf_counter() - t - 0.005)

    task = asyncio.create_task(probe())
    while True:
        command = await loop.run_in_executor(None, conn.recv)
        if command == "start":
            lags.clear()
            cpu0 = time.process_time()
            wall0 = time.perf_counter()
            measuring = True
        elif command == "stop":
            measuring = False
            arr = np.array(lags or [0.0])
            conn.send({"lag_p50_ms": float(np.percentile(arr, 50)) * 1e3,
                       "lag_p99_ms": float(np.percentile(arr, 99)) * 1e3,
                       "lag_max_ms": float(arr.max()) * 1e3,
                       "cpu_util": (time.process_time() - cpu0)
                       / (time.perf_counter() - wall0)})
        else:
            break
    task.cancel()
    for r in runners:
        await r.cleanup()


def _fleet_main(n: int, conn: Connection) -> None:
    _pin(0)
    import uvloop
    uvloop.run(_fleet(n, conn))


async def _load(urls: list[str], rate: float, seconds: float) -> dict[str, Any]:
    rng = random.Random(0)
    ok = failed = 0

    async def one(session: aiohttp.ClientSession, url: str, model: str) -> None:
        nonlocal ok, failed
        body = {"model": model, "prompt": [1] * 256, "max_tokens": 64}
        try:
            async with session.post(url + "/v1/completions", json=body) as resp:
                await resp.read()
                ok += resp.status == 200
                failed += resp.status != 200
        except aiohttp.ClientError:
            failed += 1

    tasks = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        start = time.perf_counter()
        t = 0.0
        while True:
            t += rng.expovariate(rate)
            if t > seconds:
                break
            await asyncio.sleep(max(0.0, start + t - time.perf_counter()))
            model = rng.choice(["base", *(f"a{i}" for i in range(ADAPTERS))])
            tasks.append(asyncio.create_task(one(session, rng.choice(urls), model)))
        sent_s = time.perf_counter() - start
        await asyncio.gather(*tasks)
    return {"sent": len(tasks), "ok": ok, "failed": failed,
            "offered_rps": len(tasks) / seconds, "send_lag_s": sent_s - seconds}


def main() -> None:
    _pin(1)
    rows = []
    for n in WORKERS:
        parent, child = mp.Pipe()
        proc = mp.get_context("spawn").Process(target=_fleet_main, args=(n, child))
        proc.start()
        urls = parent.recv()
        for rate in RATES:
            parent.send("start")
            load = asyncio.run(_load(urls, rate, SECONDS))
            parent.send("stop")
            lag = parent.recv()
            passed = lag["lag_p99_ms"] < LAG_LIMIT_S * 1e3 and load["failed"] == 0
            rows.append({"workers": n, "rate_rps": rate, **load, **lag, "passed": passed})
            print(rows[-1], flush=True)
            if not passed:
                break
        parent.send("quit")
        proc.join(timeout=30)
    best = {n: max((r["rate_rps"] for r in rows if r["workers"] == n and r["passed"]),
                   default=0) for n in WORKERS}
    table = Table(title="emulated workers on one core: event-loop lag (p99 < 10 ms passes)")
    for col in ("workers", "req/s", "ok", "failed", "lag p50 ms", "lag p99 ms", "lag max ms",
                "core busy", "pass"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["workers"]), str(r["rate_rps"]), str(r["ok"]), str(r["failed"]),
                      f"{r['lag_p50_ms']:.2f}", f"{r['lag_p99_ms']:.2f}",
                      f"{r['lag_max_ms']:.1f}", f"{r['cpu_util']:.0%}", str(r["passed"]))
    Console(width=140).print(table)
    for n, rate in best.items():
        print(f"{n} workers: sustained {rate} req/s total with p99 loop lag < 10 ms")
    out = ROOT / "bench/results"
    out.mkdir(exist_ok=True)
    (out / "worker_capacity.json").write_text(json.dumps({
        "setup": {"model": "llama-3.1-8b", "gpu": "a100-80gb", "profile": "roofline-default",
                  "time_scale": 1.0, "adapters_per_worker": ADAPTERS, "prompt_tokens": 256,
                  "max_tokens": 64, "seconds_per_point": SECONDS,
                  "lag_limit_ms": LAG_LIMIT_S * 1e3, "cpu_count": os.cpu_count()},
        "rows": rows, "max_sustained_rps": {str(k): v for k, v in best.items()}},
        indent=1) + "\n")


if __name__ == "__main__":
    main()
