"""Gateway replicas on one Redis: what fleet-wide per-key limits cost a request, and what a
second replica adds to throughput (issue 25).

Processes on loopback: a Redis (``redis-server``, nothing saved), an emulated worker with the
``instant`` profile (no engine time: ``lorafleet fleet --emulate 1 --profile instant``) and
gateways (``python -m gateway.cli serve --config``, base-model requests, one static worker,
round-robin placement, no periodic re-planning: each replica runs on its own placement, as
there is no leader election yet). Every request carries a key with a rate limit too high to
refuse anything (1e6/s): what is measured is the cost of checking it. Load: the closed-loop
aiohttp client of ``bench/peers_load.py`` in a process of its own.

(a) Latency at concurrency 1: the key's bucket on the gateway itself (no ``redis:``) against
the bucket in Redis (taken a few tokens at a time: the gateway leases them,
``gateway/shared/token_lease.py``, and asks Redis again in the background when half are
used), two gateways up at once, and the worker called directly, the three interleaved request
by request by one client (aiohttp, in this process): load from other work on a shared machine
falls on all three alike. Redis's cost is the p50 (p99) of the Redis gateway less the local
one's, per round, then the median over rounds; beside it, the Redis gateway's EVALSHAs per
request (Redis's ``INFO commandstats``: 1.0 would be one call a request).
Nothing is pinned by default: on a machine shared with other work a pinned Redis cannot move
off a core another job holds, and each request's extra wake-up of Redis then waits for that
job's time slice (with another job running here: 2.6 ms added at p50 pinned, 0.8 to 0.9 ms
unpinned, in runs minutes apart); ``--pin`` puts the gateways on CPU 0 and the worker,
Redis and the client on CPU 1, as ``bench/gateway_overhead.py`` does, for a quiet machine.
Beside it, ``SharedBuckets.take`` alone in this process (uvloop): the round trip a request
waits for when its key's lease is empty (the key's first request, or a key at its limit).
Target: Redis adds at most 0.3 ms at p50.

(b) Throughput: 1 replica against 2 (each its own ``serve`` process on the same ``redis:``),
``--concurrency`` client connections spread evenly over the replicas, unpinned. On a 2-core
machine the client, the worker, Redis and the replicas share the same two cores: the figure
says what a second replica buys here, not on a fleet of hosts.

Run: ``.venv/bin/python bench/replicas.py [--quick]``; writes ``bench/results/replicas.json``
(about 2 minutes; ``--quick`` about 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from peers_load import (
    CLK_TCK,
    ROOT,
    LoadSpec,
    Service,
    cpu_seconds,
    free_port,
    measure,
    pct,
    start_service,
    taskset,
)
from redis import Redis as SyncRedis
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(ROOT))
from gateway.config.redis import RedisConfig
from gateway.shared.client import connect
from gateway.shared.limits import SharedBuckets
from tests.redis_server import RedisServer

TARGET_REDIS_P50_ADDED_MS = 0.3
KEY = "sk-bench-replicas"
RATE = 1e6  # the key's limit: never reached, every request checks it
LATENCY_WARMUP = 50  # requests per target and round in (a), not timed
PYTHON = [sys.executable, "-m", "gateway.cli"]
T = TypeVar("T")
ENV = {"PYTHONPATH": str(ROOT)}  # this checkout's gateway, whatever the venv has installed


def start_worker(log_dir: Path, cpus: str | None) -> Service:
    return start_service("worker-instant", [
        *taskset(cpus), *PYTHON, "fleet", "--emulate", "1", "--base-port", "0",
        "--profile", "instant", "--served-model-name", "base", "--max-model-len", "4096",
        "--max-num-seqs", "256"], log_dir=log_dir, urls_on_stdout=1, env=ENV)


def start_gateway(name: str, worker: str, redis_url: str | None, log_dir: Path,
                  cpus: str | None) -> Service:
    """``serve`` in front of ``worker`` with the rate-limited key; on Redis if given."""
    port = free_port()
    config: dict[str, Any] = {
        "base_model": "base", "workers": [{"url": worker, "name": "w0"}], "adapters": [],
        "placement": "round-robin", "replan_interval_s": 0, "port": port,
        "keys": [{"key": KEY, "name": "bench", "rate_limit": RATE}]}
    if redis_url is not None:
        config["redis"] = {"url": redis_url, "prefix": "bench"}
    path = log_dir / f"{name}.yaml"
    path.write_text(json.dumps(config))
    return start_service(name, [*taskset(cpus), *PYTHON, "serve", "--config", str(path),
                                "--log-level", "WARNING"],
                         log_dir=log_dir, urls_on_stdout=1, env=ENV)


def evalsha_calls(url: str) -> int:
    """EVALSHAs Redis has run since it started (``INFO commandstats``)."""
    client = SyncRedis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def pin(pid: int, cpus: str | None) -> None:
    """Pin a running process (all its threads) to ``cpus`` (nothing if unset or absent)."""
    if cpus is not None and shutil.which("taskset") is not None:
        subprocess.run(["taskset", "-apc", cpus, str(pid)], check=True, capture_output=True)


async def _take_loop(url: str, n: int) -> dict[str, float]:
    cfg = RedisConfig(url=url, prefix="bench-direct")
    client = connect(cfg)
    try:
        buckets = SharedBuckets(client, cfg)
        for _ in range(200):  # warm-up: connection, script loaded
            await buckets.take("bench", RATE, RATE)
        lat = []
        for _ in range(n):
            t0 = time.perf_counter()
            await buckets.take("bench", RATE, RATE)
            lat.append((time.perf_counter() - t0) * 1e3)
    finally:
        await client.aclose()
    return {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "takes": n}


def run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """``coro`` run on uvloop (as the gateway runs), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def take_round_trip(url: str, n: int, cpus: str | None) -> dict[str, float]:
    """``SharedBuckets.take`` ``n`` times in a row in this process (on ``cpus``, the
    gateways' CPU): ms per take."""
    everywhere = os.sched_getaffinity(0)
    if cpus is not None:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    try:
        return run_loop(_take_loop(url, n))
    finally:
        os.sched_setaffinity(0, everywhere)


async def _paired(urls: dict[str, str], seconds: float, warmup: int) -> dict[str, list[float]]:
    """One request at a time, to each target in turn: latencies (ms) by target."""
    import aiohttp

    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "base", "prompt": "Say something about LoRA adapters. " * 8,
            "max_tokens": 16}
    lat: dict[str, list[float]] = {name: [] for name in urls}
    async with aiohttp.ClientSession() as session:
        async def one(url: str) -> float:
            t0 = time.perf_counter()
            async with session.post(f"{url}/v1/completions", json=body,
                                    headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{url}: status {resp.status}")
            return (time.perf_counter() - t0) * 1e3

        for _ in range(warmup):
            for url in urls.values():
                await one(url)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            for name, url in urls.items():
                lat[name].append(await one(url))
    return lat


def latency(targets: dict[str, Service], rounds: int, seconds: float,
            warmup: int = 50) -> list[dict[str, Any]]:
    """Concurrency 1, the targets interleaved request by request (so that load from other
    work on the machine falls on all of them alike): p50 and p99 per target and round, and
    each target's CPU milliseconds per request (warm-up included), which scheduling delays
    do not touch."""
    rows = []
    for i in range(rounds):
        cpu0 = {name: svc.cpu_s() for name, svc in targets.items()}
        lat = run_loop(_paired({n: s.url for n, s in targets.items()}, seconds, warmup))
        for target, values in lat.items():
            cpu = targets[target].cpu_s() - cpu0[target]
            row = {"round": i, "target": target, "requests": len(values),
                   "p50_ms": pct(values, 50), "p99_ms": pct(values, 99),
                   "cpu_ms_per_request": cpu / (len(values) + warmup) * 1e3}
            rows.append(row)
            print(f"  round {i + 1} {target:6s} p50={row['p50_ms']:.3f} ms "
                  f"p99={row['p99_ms']:.3f} ms cpu={row['cpu_ms_per_request']:.3f} ms/req "
                  f"({len(values)} requests)", flush=True)
    return rows


def throughput(replicas: list[Service], rounds: int, seconds: float,
               concurrency: int) -> list[dict[str, Any]]:
    rows = []
    headers = {"Authorization": f"Bearer {KEY}"}
    for i in range(rounds):
        for n in (1, 2):
            spec = LoadSpec(kind="closed", urls=[r.url for r in replicas[:n]], model="base",
                            seconds=seconds, concurrency=concurrency, headers=headers,
                            warmup=100)
            result = measure(spec)
            rows.append({"round": i, "replicas": n, **result})
            print(f"  round {i + 1} replicas={n} {result['achieved_rps']:.0f} req/s "
                  f"p50={result['p50_ms']:.2f} ms failed={result['failed']}", flush=True)
    return rows


def summarize(lat_rows: list[dict[str, Any]], tput_rows: list[dict[str, Any]],
              take: dict[str, float], evalsha_per_request: float) -> dict[str, float]:
    def med(rows: list[dict[str, Any]], field: str, **match: Any) -> float:
        return statistics.median(r[field] for r in rows
                                 if all(r[k] == v for k, v in match.items()))
    out: dict[str, float] = {}
    for q in ("p50", "p99"):
        direct = med(lat_rows, f"{q}_ms", target="direct")
        local = med(lat_rows, f"{q}_ms", target="local")
        shared = med(lat_rows, f"{q}_ms", target="redis")
        out[f"gateway_local_{q}_added_ms"] = local - direct
        out[f"gateway_redis_{q}_added_ms"] = shared - direct
        # per round, then the median: both gateways measured back to back
        out[f"redis_{q}_added_ms"] = statistics.median(
            next(r[f"{q}_ms"] for r in lat_rows if r["round"] == i and r["target"] == "redis")
            - next(r[f"{q}_ms"] for r in lat_rows if r["round"] == i and r["target"] == "local")
            for i in sorted({r["round"] for r in lat_rows}))
    out["redis_cpu_ms_per_request"] = (med(lat_rows, "cpu_ms_per_request", target="redis")
                                       - med(lat_rows, "cpu_ms_per_request", target="local"))
    out["redis_evalsha_per_request"] = evalsha_per_request
    out["take_round_trip_p50_ms"] = take["p50_ms"]
    out["take_round_trip_p99_ms"] = take["p99_ms"]
    one = med(tput_rows, "achieved_rps", replicas=1)
    two = med(tput_rows, "achieved_rps", replicas=2)
    out["rps_1_replica"], out["rps_2_replicas"], out["speedup_2_vs_1"] = one, two, two / one
    return out


def print_table(summary: dict[str, float]) -> None:
    table = Table(title="lorafleet replicas: Redis-backed per-key limits, 1 vs 2 replicas")
    table.add_column("figure")
    table.add_column("median", justify="right")
    table.add_column("target", justify="right")
    targets = {"redis_p50_added_ms": f"<= {TARGET_REDIS_P50_ADDED_MS}"}
    for key, value in summary.items():
        table.add_row(key, f"{value:.3f}", targets.get(key, ""))
    Console(width=120).print(table)


def busy_s() -> float:
    """CPU seconds the machine's CPUs have spent busy since boot (``/proc/stat``)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


class Neighbours:
    """The share of the machine's CPUs that work other than this bench's used over a phase:
    busy time less this process's (and its finished clients') and ``pids``' CPU time."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.start = self._now()

    def _now(self) -> tuple[float, float, float]:
        t = os.times()
        ours = t.user + t.system + t.children_user + t.children_system
        return time.monotonic(), busy_s(), ours + sum(cpu_seconds(p) for p in self.pids)

    def share(self) -> float:
        (w0, b0, o0), (w1, b1, o1) = self.start, self._now()
        return max(0.0, (b1 - b0) - (o1 - o0)) / ((w1 - w0) * (os.cpu_count() or 1))


def run(log_dir: Path, rounds: int, seconds: float, concurrency: int, pinned: bool
        ) -> dict[str, Any]:
    """Both parts on one Redis and one worker: their rows, the take round trip and how much
    of the machine other work used meanwhile."""
    gw_cpus, side_cpus = ("0", "1") if pinned else (None, None)
    redis = RedisServer(log_dir).start()
    assert redis.proc is not None
    services: list[Service] = []
    try:
        pin(redis.proc.pid, side_cpus)
        worker = start_worker(log_dir, side_cpus)
        services.append(worker)
        print("(a) latency at concurrency 1, key checked locally vs in Redis", flush=True)
        take = take_round_trip(redis.url, 5000, gw_cpus)
        local = start_gateway("gateway-local", worker.url, None, log_dir, gw_cpus)
        shared = start_gateway("gateway-redis", worker.url, redis.url, log_dir, gw_cpus)
        services += [local, shared]
        everywhere = os.sched_getaffinity(0)
        if side_cpus is not None:  # this process is the client of (a)
            os.sched_setaffinity(0, {int(side_cpus)})
        others = Neighbours([redis.proc.pid, *(svc.proc.pid for svc in services)])
        calls0 = evalsha_calls(redis.url)
        lat_rows = latency({"direct": worker, "local": local, "redis": shared}, rounds,
                           seconds, warmup=LATENCY_WARMUP)
        sent = sum(r["requests"] + LATENCY_WARMUP for r in lat_rows if r["target"] == "redis")
        evalsha_per_request = (evalsha_calls(redis.url) - calls0) / sent
        others_a = others.share()
        os.sched_setaffinity(0, everywhere)
        local.stop()
        print(f"(b) throughput, 1 vs 2 replicas, {concurrency} connections", flush=True)
        second = start_gateway("gateway-redis-2", worker.url, redis.url, log_dir, None)
        services.append(second)
        for pid in (shared.proc.pid, worker.proc.pid, redis.proc.pid):  # unpinned for (b)
            pin(pid, "0,1" if pinned else None)
        others = Neighbours([redis.proc.pid, *(svc.proc.pid for svc in services)])
        tput_rows = throughput([shared, second], rounds, seconds, concurrency)
        others_b = others.share()
    finally:
        for svc in reversed(services):
            svc.stop()
        redis.stop()
    return {"take": take, "latency": lat_rows, "throughput": tput_rows,
            "evalsha_per_request": evalsha_per_request,
            "others_cpu_share": {"a": others_a, "b": others_b},
            "pinned_a": {"gateways": gw_cpus, "worker_redis_client": side_cpus}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="one round of 2 s runs")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="per run, after warm-up")
    parser.add_argument("--concurrency", type=int, default=32, help="client connections (b)")
    parser.add_argument("--pin", action="store_true",
                        help="pin the gateways to CPU 0, the rest to CPU 1 (a quiet machine)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/replicas.json")
    args = parser.parse_args(argv)
    rounds, seconds = (1, 2.0) if args.quick else (args.rounds, args.seconds)
    started, load_before = time.monotonic(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
        result = run(Path(tmp), rounds, seconds, args.concurrency,
                     pinned=args.pin and (os.cpu_count() or 1) >= 2)
    summary = summarize(result["latency"], result["throughput"], result["take"],
                        result["evalsha_per_request"])
    print_table(summary)
    verdict = {"redis_p50_added_at_most_0.3ms":
               summary["redis_p50_added_ms"] <= TARGET_REDIS_P50_ADDED_MS}
    others = result["others_cpu_share"]
    print(verdict, f"({time.monotonic() - started:.0f} s; other work used "
          f"{others['a']:.0%} of the CPUs during (a), {others['b']:.0%} during (b))")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "setup": {"worker": "lorafleet fleet --emulate 1 --profile instant", "model": "base",
                  "max_tokens": 16, "key_rate_limit": RATE,
                  "shared_limits": "leased tokens (gateway/shared/token_lease.py)",
                  "seconds_per_run": seconds,
                  "rounds": rounds, "concurrency_b": args.concurrency,
                  "pinned_a": result["pinned_a"], "pinned_b": None,
                  "cpu_count": os.cpu_count(),
                  "placement": "round-robin, replan_interval_s 0 (static, per replica)",
                  "load_a": "concurrency 1, targets interleaved, aiohttp, this process",
                  "load_b": "closed loop, aiohttp, own process",
                  "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                  "others_cpu_share": others},
        "targets": {"redis_p50_added_ms": TARGET_REDIS_P50_ADDED_MS},
        "verdict": verdict, "median": summary, "take_round_trip": result["take"],
        "latency_runs": result["latency"], "throughput_runs": result["throughput"]},
        indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
