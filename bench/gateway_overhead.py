"""The gateway's own cost: added latency and CPU in front of a zero-latency worker.

Three processes on loopback: an emulated worker with the ``instant`` profile (no step time, no
request overhead: ``lorafleet worker --emulate --profile instant``), the gateway in front of it
(``lorafleet serve --config``, one static worker, base-model requests) and the aiohttp client
of ``bench/peers_load.py`` (closed loop). Each round measures, with the client calling the
worker directly and then through the gateway: non-streaming completions (16 tokens) at
concurrency 1 and 32, and streaming ones (64 chunks) at concurrency 32. Added latency is the
gateway's percentile minus the direct one; the gateway's CPU seconds come from
``/proc/<pid>/stat`` before and after each run (warm-up requests included in the count).

By default the gateway is pinned to CPU 0 and the worker and the client to CPU 1 (``taskset``):
on two cores shared with other work this keeps the gateway from being descheduled by its own
load and steadies the figures; ``--no-pin`` leaves placement to the kernel. ``--rounds``
repeats the whole set (the JSON keeps every round; the table shows the median).

Targets: p50 added under 1 ms; under 0.5 CPU seconds per 1000 non-streaming requests.
Run: ``.venv/bin/python bench/gateway_overhead.py [--quick]``; writes
``bench/results/gateway.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from peers_load import ROOT, LoadSpec, Service, measure
from peers_services import BACKENDS, start_lorafleet
from rich.console import Console
from rich.table import Table

TARGET_P50_ADDED_MS = 1.0
TARGET_CPU_S_PER_1K = 0.5
STREAM_TOKENS = 64


def _round(worker: Service, gateway: Service, seconds: float,
           pins: dict[str, str | None]) -> list[dict[str, Any]]:
    rows = []
    for stream, concurrency in ((False, 1), (False, 32), (True, 32)):
        for target, svc in (("direct", worker), ("gateway", gateway)):
            spec = LoadSpec(kind="closed", urls=[svc.url], model="base", seconds=seconds,
                            concurrency=concurrency, stream=stream,
                            max_tokens=STREAM_TOKENS if stream else 16)
            result = measure(spec, watched=gateway if target == "gateway" else worker,
                             cpus=pins["client"])
            rows.append({"target": target, **result})
            print(f"  {target:8s} c={concurrency:<3d} stream={stream!s:5s} "
                  f"p50={result['p50_ms']:.3f} ms p99={result['p99_ms']:.3f} ms "
                  f"cpu/1k={result['cpu_s_per_1k']:.3f} s", flush=True)
    return rows


def summarize(rounds: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Per round and median over rounds: added p50/p99 per case, CPU per 1k and per chunk."""
    per_round = []
    for rows in rounds:
        def pick(target: str, stream: bool, c: int, rows: list[dict[str, Any]] = rows
                 ) -> dict[str, Any]:
            return next(r for r in rows if r["target"] == target and r["stream"] == stream
                        and r["concurrency"] == c)
        out: dict[str, float] = {}
        for stream, c in ((False, 1), (False, 32), (True, 32)):
            d, g = pick("direct", stream, c), pick("gateway", stream, c)
            key = f"{'ttft' if stream else 'req'}_c{c}"
            out[f"{key}_p50_added_ms"] = g["p50_ms"] - d["p50_ms"]
            out[f"{key}_p99_added_ms"] = g["p99_ms"] - d["p99_ms"]
        out["cpu_s_per_1k_c1"] = pick("gateway", False, 1)["cpu_s_per_1k"]
        out["cpu_s_per_1k_c32"] = pick("gateway", False, 32)["cpu_s_per_1k"]
        s = pick("gateway", True, 32)
        out["cpu_us_per_chunk"] = s["cpu_us_per_chunk"]
        # Less the per-request cost of a non-streaming request: the cost of a chunk itself.
        out["cpu_us_per_chunk_marginal"] = (s["cpu_s"] - s["sent"] * out["cpu_s_per_1k_c32"]
                                            / 1000) / s["chunks"] * 1e6
        out["worker_cpu_s_per_1k_c32"] = pick("direct", False, 32)["cpu_s_per_1k"]
        out["gateway_rss_mb"] = s["rss_mb"]
        per_round.append(out)
    median = {k: statistics.median(r[k] for r in per_round) for k in per_round[0]}
    return {"median": median, "rounds": per_round}


def print_table(summary: dict[str, Any]) -> None:
    rounds = summary["rounds"]
    table = Table(title="lorafleet gateway vs calling a zero-latency worker directly")
    table.add_column("figure")
    table.add_column("median", justify="right")
    for i in range(len(rounds)):
        table.add_column(f"round {i + 1}", justify="right")
    table.add_column("target", justify="right")
    targets = {"req_c1_p50_added_ms": f"< {TARGET_P50_ADDED_MS}",
               "req_c32_p50_added_ms": f"< {TARGET_P50_ADDED_MS}",
               "cpu_s_per_1k_c1": f"< {TARGET_CPU_S_PER_1K}",
               "cpu_s_per_1k_c32": f"< {TARGET_CPU_S_PER_1K}"}
    for key, value in summary["median"].items():
        table.add_row(key, f"{value:.3f}", *(f"{r[key]:.3f}" for r in rounds),
                      targets.get(key, ""))
    Console(width=140).print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="one round of 2 s runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="per run, after warm-up")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/gateway.json")
    args = parser.parse_args(argv)
    rounds, seconds = (1, 2.0) if args.quick else (args.rounds, args.seconds)
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    pins = {"gateway": "0" if pin else None, "worker": "1" if pin else None,
            "client": "1" if pin else None}
    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        log_dir = Path(tmp)
        worker = BACKENDS["instant"](1, log_dir, pins["worker"])
        try:
            gateway = start_lorafleet([worker.url], log_dir, pins["gateway"])
            try:
                all_rows = []
                for i in range(rounds):
                    print(f"round {i + 1}/{rounds}", flush=True)
                    all_rows.append(_round(worker, gateway, seconds, pins))
            finally:
                gateway.stop()
        finally:
            worker.stop()
    summary = summarize(all_rows)
    print_table(summary)
    med = summary["median"]
    verdict = {"p50_added_under_1ms": max(med["req_c1_p50_added_ms"],
                                          med["req_c32_p50_added_ms"]) < TARGET_P50_ADDED_MS,
               "cpu_under_0.5s_per_1k": med["cpu_s_per_1k_c32"] < TARGET_CPU_S_PER_1K}
    print(verdict)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "setup": {"worker": "lorafleet fleet --emulate 1 --profile instant", "model": "base",
                  "non_streaming_max_tokens": 16, "stream_max_tokens": STREAM_TOKENS,
                  "seconds_per_run": seconds, "rounds": rounds, "pinned": pins,
                  "cpu_count": os.cpu_count(), "load": "closed loop, aiohttp, own process",
                  "cpu_per_1k_counts_warmup": True},
        "targets": {"p50_added_ms": TARGET_P50_ADDED_MS, "cpu_s_per_1k": TARGET_CPU_S_PER_1K},
        "verdict": verdict, **summary, "runs": all_rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
