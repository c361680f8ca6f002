"""lorafleet's gateway against other proxies in front of the same backends (issue 10).

For each backend (``bench/peers_services.py``: two emulated workers with the ``instant``
profile, two with an A100-80GB + Llama-3.1-8B profile in real time; one real vLLM CPU server
with the integration tests' tiny Llama, ``vllm-cpu-tiny``, where ``make test-vllm`` has built
``.venv-vllm`` and the model, else reported as skipped) and each peer (``direct``: the client
calls the workers in turn; ``lorafleet``; the Rust ``vllm-router`` with round-robin and
cache-aware policies; ``litellm``), in one run:

- added latency, p50 and p99, at concurrency 1 and 32 (closed loop), non-streaming (16 tokens)
  and time to first token streaming: the peer's percentile minus ``direct``'s;
- max requests/s at which p99 stays under 2x idle: a fixed-rate open-loop sweep at doubling
  rates (25 req/s, the first point, is idle), up to two failing points in a row (p99 over
  twice idle's, a failed request, or under 90% of the offered requests answered in time);
- CPU seconds per 1000 requests (the peer's process tree, ``/proc``, over the concurrency-32
  non-streaming run) and its resident memory after the run.

The peer is pinned to CPU 0, the backend and the client to CPU 1 (``--no-pin``: the kernel
places them); on two cores shared with other work the CPU per request is the fairer figure.
``--repeat-noise`` repeats one measurement (lorafleet, instant backend, concurrency 1) to show
the run-to-run noise. Peers come from ``.venv-peers`` (``make peers-env``); a missing one is
reported and skipped. Output: a rich table, ``bench/results/peers.json`` (one row per peer and
backend) and ``bench/results/peers.png`` (latency against offered load).

Sections (``--sections``, both by default): ``peers`` (the above) and ``fleet``: GPUs after
re-planning against fixed-fleet policies on emulated A100s (``bench/fleet.py``, run in the
project's ``.venv`` as a subprocess, ``--fleet-args`` passed on; ``bench/results/fleet.json``).

Run: ``.venv-peers/bin/python bench/peers.py [--quick]`` (``make bench-peers``; ``make bench``
runs it after the twin, placement and gateway-overhead benchmarks).
``--vllm-client``: the same peers measured by vLLM's own ``bench serve`` client instead
(``bench/peers_vllm_client.py``, ``bench/results/peers_vllm_client.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peers_load import ROOT, LoadSpec, Service, clean_json, measure
from peers_services import BACKENDS, PEERS, backend_available, peer_available

RATES = (25, 50, 100, 200, 400, 800, 1600)
P99_FACTOR = 2.0
MIN_ANSWERED = 0.9
WORKERS = 2


class Bench:
    """Settings of one run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.seconds = 1.5 if args.quick else args.seconds
        self.sweep_seconds = 1.5 if args.quick else args.sweep_seconds
        self.rates = RATES[:5] if args.quick else RATES
        pin = not args.no_pin and (os.cpu_count() or 1) >= 2
        self.peer_cpus = "0" if pin else None
        self.other_cpus = "1" if pin else None


def _closed(bench: Bench, urls: list[str], peer: Service | None, *, concurrency: int,
            stream: bool) -> dict[str, Any]:
    spec = LoadSpec(kind="closed", urls=urls, model="base", seconds=bench.seconds,
                    concurrency=concurrency, stream=stream, warmup=10,
                    headers=peer.headers if peer else {})
    return measure(spec, watched=peer, cpus=bench.other_cpus)


def _sweep(bench: Bench, urls: list[str], peer: Service | None
           ) -> tuple[list[dict[str, Any]], float]:
    """Fixed-rate points at doubling rates. Idle is the first (lowest-rate) point, measured by
    the same open-loop generator (its timer lateness included); a point passes with no failed
    request, at least 90% answered within the run and p99 under twice idle's. The sweep stops
    after two failing points in a row (one failure on shared cores may be noise)."""
    points: list[dict[str, Any]] = []
    best = 0.0
    idle_p99 = math.nan
    for rate in bench.rates:
        spec = LoadSpec(kind="open", urls=urls, model="base", seconds=bench.sweep_seconds,
                        rate=rate, headers=peer.headers if peer else {})
        point = measure(spec, watched=peer, cpus=bench.other_cpus)
        if not points:
            idle_p99 = point["p99_ms"]
        point["passed"] = bool(point["failed"] == 0
                               and point["measured"] >= MIN_ANSWERED * point["sent"]
                               and point["p99_ms"] < P99_FACTOR * idle_p99)
        points.append(point)
        print(f"    {rate:5d} req/s: p50 {point['p50_ms']:8.2f} p99 {point['p99_ms']:8.2f} ms "
              f"{'pass' if point['passed'] else 'FAIL'}", flush=True)
        if point["passed"]:
            best = rate
        elif len(points) >= 2 and not points[-2]["passed"]:
            break
    return points, best


def measure_peer(bench: Bench, peer_name: str, backend: Service,
                 log_dir: Path) -> dict[str, Any]:
    """Every figure of one peer in front of ``backend``."""
    starter = PEERS[peer_name]
    peer = starter(backend.urls, log_dir, bench.peer_cpus) if starter else None
    urls = peer.urls if peer else backend.urls
    try:
        runs = {}
        for stream in (False, True):
            for c in (1, 32):
                key = f"{'ttft' if stream else 'req'}_c{c}"
                runs[key] = _closed(bench, urls, peer, concurrency=c, stream=stream)
                r = runs[key]
                print(f"  {peer_name:18s} {key:8s} p50 {r['p50_ms']:8.3f} p99 "
                      f"{r['p99_ms']:8.3f} ms  failed {r['failed']}", flush=True)
        sweep, max_rps = _sweep(bench, urls, peer)
        watched = peer or backend  # direct: the backend's own CPU, for scale
        return {"runs": runs, "sweep": sweep, "max_rps": max_rps,
                "cpu_s_per_1k": runs["req_c32"]["cpu_s_per_1k"] if peer else None,
                "backend_cpu_s_per_1k": None if peer else runs["req_c32"].get("cpu_s_per_1k"),
                "rss_mb": watched.rss_mb() if peer else None}
    finally:
        if peer is not None:
            peer.stop()


def _rows(backend: str, results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    direct = results.get("direct")
    rows = []
    for peer, res in results.items():
        row: dict[str, Any] = {"peer": peer, "backend": backend}
        if "error" in res:
            rows.append({**row, "error": res["error"]})
            continue
        for key, run in res["runs"].items():
            for q in ("p50", "p99"):
                row[f"{key}_{q}_ms"] = run[f"{q}_ms"]
                if direct is not None and "error" not in direct:
                    row[f"{key}_{q}_added_ms"] = run[f"{q}_ms"] - direct["runs"][key][f"{q}_ms"]
        row["p50_added_ms"] = row.get("req_c1_p50_added_ms")
        row["p99_added_ms"] = row.get("req_c1_p99_added_ms")
        row.update(max_rps=res["max_rps"], cpu_s_per_1k=res["cpu_s_per_1k"],
                   rss_mb=res["rss_mb"], failed=sum(r["failed"] for r in res["runs"].values()),
                   sweep=[{k: p[k] for k in ("rate", "achieved_rps", "p50_ms", "p99_ms",
                                                "failed", "passed")} for p in res["sweep"]])
        rows.append(row)
    return rows


def run_peers(bench: Bench, backends: list[str], peers: list[str],
              log_dir: Path) -> dict[str, Any]:
    """The ``peers`` section: every peer in front of every backend."""
    rows: list[dict[str, Any]] = []
    skipped = {}
    for name in backends:
        why = backend_available(name)
        if why:
            skipped[f"backend {name}"] = why
            continue
        print(f"backend {name}", flush=True)
        backend = BACKENDS[name](WORKERS, log_dir, bench.other_cpus)
        results: dict[str, dict[str, Any]] = {}
        try:
            for peer in peers:
                why = peer_available(peer)
                if why:
                    skipped[peer] = why
                    continue
                try:
                    results[peer] = measure_peer(bench, peer, backend, log_dir)
                except RuntimeError as exc:  # a peer that would not start or broke down
                    print(f"  {peer}: {exc}", flush=True)
                    results[peer] = {"error": str(exc).splitlines()[0]}
        finally:
            backend.stop()
        rows.extend(_rows(name, results))
    return {"rows": rows, "skipped": skipped}


def repeat_noise(bench: Bench, log_dir: Path, times: int) -> list[dict[str, float]]:
    """One measurement (lorafleet, instant backend, concurrency 1) ``times`` times."""
    backend = BACKENDS["instant"](WORKERS, log_dir, bench.other_cpus)
    starter = PEERS["lorafleet"]
    assert starter is not None
    peer = starter(backend.urls, log_dir, bench.peer_cpus)
    try:
        out = []
        for _ in range(times):
            r = _closed(bench, peer.urls, peer, concurrency=1, stream=False)
            d = _closed(bench, backend.urls, None, concurrency=1, stream=False)
            out.append({"p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"],
                        "direct_p50_ms": d["p50_ms"], "p50_added_ms": r["p50_ms"] - d["p50_ms"],
                        "cpu_s_per_1k": r["cpu_s_per_1k"]})
            print(f"  noise: {out[-1]}", flush=True)
        return out
    finally:
        peer.stop()
        backend.stop()


SECTIONS: dict[str, Callable[..., dict[str, Any]]] = {"peers": run_peers}


def run_fleet(args: argparse.Namespace) -> int:
    """The ``fleet`` section: ``bench/fleet.py`` in the project's venv (it runs the gateway
    in-process); its table goes to this terminal, its rows to ``fleet.json``."""
    cmd = [str(ROOT / ".venv/bin/python"), "-m", "bench.fleet",
           *(["--quick"] if args.quick else []), *shlex.split(args.fleet_args),
           "--out", str(args.out / "fleet.json")]
    print(f"fleet section: {' '.join(cmd)}", flush=True)
    return subprocess.run(cmd, cwd=ROOT, check=False).returncode


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="peers: added latency over calling the backend directly (ms)")
    cols = [("peer", "peer"), ("backend", "backend"), ("p50 +c1", "req_c1_p50_added_ms"),
            ("p99 +c1", "req_c1_p99_added_ms"), ("p50 +c32", "req_c32_p50_added_ms"),
            ("p99 +c32", "req_c32_p99_added_ms"), ("TTFT p50 +c1", "ttft_c1_p50_added_ms"),
            ("TTFT p50 +c32", "ttft_c32_p50_added_ms"), ("max req/s", "max_rps"),
            ("CPU s/1k", "cpu_s_per_1k"), ("RSS MiB", "rss_mb")]
    for title, _ in cols:
        table.add_column(title, justify="left" if title in ("peer", "backend") else "right")
    for row in rows:
        if "error" in row:
            table.add_row(row["peer"], row["backend"], f"error: {row['error'][:60]}")
            continue
        table.add_row(*(_fmt(row.get(key), 3 if "ms" in key else 2) for _, key in cols))
    Console(width=180).print(table)


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """p50 (dotted) and p99 (solid) latency against offered load, one panel per backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    backends = list(dict.fromkeys(r["backend"] for r in rows))
    fig, axes = plt.subplots(1, len(backends), figsize=(6.5 * len(backends), 4.8),
                             squeeze=False)
    for ax, backend in zip(axes[0], backends, strict=True):
        for i, row in enumerate(r for r in rows if r["backend"] == backend and "sweep" in r):
            pts = [p for p in row["sweep"] if not math.isnan(p["p99_ms"])]
            color = f"C{i}"
            ax.plot([p["rate"] for p in pts], [p["p99_ms"] for p in pts], "o-", color=color,
                    label=f"{row['peer']} p99")
            ax.plot([p["rate"] for p in pts], [p["p50_ms"] for p in pts], ":", color=color)
        ax.set(xscale="log", yscale="log", xlabel="offered load (requests/s, fixed rate)",
               ylabel="latency (ms; p99 solid, p50 dotted)", title=f"backend: {backend}")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("latency against offered load, per peer (2 shared cores; a sweep stops after "
                 "two points in a row whose p99 > 2x idle)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="lorafleet's gateway against other proxies")
    parser.add_argument("--quick", action="store_true", help="short runs, rates up to 400/s")
    parser.add_argument("--seconds", type=float, default=3.0, help="per closed-loop run")
    parser.add_argument("--sweep-seconds", type=float, default=2.5, help="per sweep point")
    parser.add_argument("--backends", nargs="+",
                        default=["instant", "a100-llama8b", "vllm-cpu-tiny"],
                        choices=list(BACKENDS))
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=list(PEERS))
    parser.add_argument("--repeat-noise", type=int, default=3,
                        help="repeat one measurement this many times (0: none)")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results")
    parser.add_argument("--vllm-client", action="store_true",
                        help="measure with vLLM's own bench serve client instead "
                             "(bench/peers_vllm_client.py; instant backend)")
    parser.add_argument("--sections", nargs="+", default=["peers", "fleet"],
                        choices=["peers", "fleet"])
    parser.add_argument("--fleet-args", default="",
                        help="arguments for bench/fleet.py, one string (e.g. '--adapters 20')")
    args = parser.parse_args(argv)
    if args.vllm_client:
        from peers_vllm_client import main as vllm_client_main
        return vllm_client_main([*(["--quick"] if args.quick else []), "--peers", *args.peers,
                                 *(["--no-pin"] if args.no_pin else []), "--out",
                                 str(args.out)])
    if "peers" in args.sections:
        run_peers_section(args)
    return run_fleet(args) if "fleet" in args.sections else 0


def run_peers_section(args: argparse.Namespace) -> None:
    if "direct" not in args.peers:
        args.peers.insert(0, "direct")  # added latency is measured against it
    bench = Bench(args)
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        section = SECTIONS["peers"](bench, args.backends, args.peers, Path(tmp))
        noise = repeat_noise(bench, Path(tmp), args.repeat_noise) if args.repeat_noise else []
    print_table(section["rows"])
    for what, why in section["skipped"].items():
        print(f"skipped {what}: {why}")
    args.out.mkdir(parents=True, exist_ok=True)
    plot(section["rows"], args.out / "peers.png")
    (args.out / "peers.json").write_text(json.dumps(clean_json({
        "setup": {"workers_per_backend": WORKERS, "request": "POST /v1/completions, model "
                  "'base', ~70-token prompt, max_tokens 16 (streaming: TTFT)",
                  "closed_loop_seconds": bench.seconds, "sweep_seconds": bench.sweep_seconds,
                  "sweep_rates": list(bench.rates), "p99_factor_of_idle": P99_FACTOR,
                  "idle": "the peer's own p99 at the first (lowest) sweep rate",
                  "pinned": {"peer": bench.peer_cpus, "backend_and_client": bench.other_cpus},
                  "cpu_count": os.cpu_count(), "quick": args.quick},
        "rows": section["rows"], "skipped": section["skipped"], "noise": noise}),
        indent=1, allow_nan=False, default=str) + "\n")


if __name__ == "__main__":
    sys.exit(main())
