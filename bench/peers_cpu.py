"""lorafleet against the Rust vllm-router, measured round after round: CPU and added p50.

Two figures of ``bench/peers.py`` are differences or ratios of noisy numbers: CPU seconds per
1000 requests (concurrency 32, non-streaming; on this shared 2-core VM the router's own figure
moved by 2x between runs) and added p50 latency at concurrency 1 (against calling the workers
directly). Here both peers stay up in front of the same backend (``--backend``) and each round
measures, in turn, the workers directly and each peer: added p50 at concurrency 1, then CPU at
concurrency 32 (3 s closed-loop runs; peers pinned to core 0, backend and client to core 1).
The medians over ``--rounds`` rounds are reported, with the per-round CPU ratios. Writes
``bench/results/peers_cpu.json`` (``peers_cpu_<backend>.json`` for another backend).

Run: ``.venv-peers/bin/python bench/peers_cpu.py [--rounds 7] [--backend a100-llama8b]``
(about 3 minutes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from peers_load import ROOT, LoadSpec, measure
from peers_services import BACKENDS, PEERS

PEERS_COMPARED = ("lorafleet", "vllm-router-rr")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--backend", default="instant", choices=list(BACKENDS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.out is None:
        suffix = "" if args.backend == "instant" else f"_{args.backend}"
        args.out = ROOT / f"bench/results/peers_cpu{suffix}.json"
    with tempfile.TemporaryDirectory(prefix="bench-peers-cpu-") as tmp:
        log = Path(tmp)
        backend = BACKENDS[args.backend](2, log, "1")
        services = {}
        try:
            for name in PEERS_COMPARED:
                starter = PEERS[name]
                if starter is None:
                    print(f"{name} is not installed (make peers-env)", file=sys.stderr)
                    return 1
                services[name] = starter(backend.urls, log, "0")
            runs: dict[str, list[float]] = {name: [] for name in PEERS_COMPARED}
            added: dict[str, list[float]] = {name: [] for name in PEERS_COMPARED}
            for k in range(args.rounds + 1):  # round 0 warms both up, unrecorded
                direct = measure(LoadSpec(kind="closed", urls=backend.urls, model="base",
                                          seconds=args.seconds, concurrency=1), cpus="1")
                for name, svc in services.items():
                    c1 = measure(LoadSpec(kind="closed", urls=svc.urls, model="base",
                                          seconds=args.seconds, concurrency=1,
                                          headers=svc.headers), cpus="1")
                    spec = LoadSpec(kind="closed", urls=svc.urls, model="base",
                                    seconds=args.seconds, concurrency=32,
                                    headers=svc.headers)
                    cpu = measure(spec, watched=svc, cpus="1")["cpu_s_per_1k"]
                    if k:
                        runs[name].append(cpu)
                        added[name].append(c1["p50_ms"] - direct["p50_ms"])
                        print(f"round {k}: {name} {cpu:.3f} CPU s / 1000 requests, added p50 "
                              f"{added[name][-1]:.3f} ms", flush=True)
        finally:
            for svc in services.values():
                svc.stop()
            backend.stop()
    lf, rr = runs["lorafleet"], runs["vllm-router-rr"]
    ratios = [a / b for a, b in zip(lf, rr, strict=True)]
    medians = {n: statistics.median(v) for n, v in added.items()}
    out = {"backend": args.backend, "concurrency": 32, "seconds": args.seconds,
           "rounds": args.rounds, "cpu_s_per_1k": runs,
           "median_cpu_s_per_1k": {n: statistics.median(v) for n, v in runs.items()},
           "ratio_per_round": ratios, "median_ratio": statistics.median(ratios),
           "target_ratio": 3.0, "p50_added_ms_c1": added, "median_p50_added_ms_c1": medians,
           "p50_added_gap_ms": medians["lorafleet"] - medians["vllm-router-rr"],
           "target_gap_ms": 0.5}
    print(f"median: lorafleet {out['median_cpu_s_per_1k']['lorafleet']:.3f}, vllm-router-rr "
          f"{out['median_cpu_s_per_1k']['vllm-router-rr']:.3f} CPU s / 1000 requests; "
          f"ratio {out['median_ratio']:.2f} (per round {min(ratios):.2f}-{max(ratios):.2f}; "
          "target <= 3)")
    print(f"median added p50 at concurrency 1: lorafleet {medians['lorafleet']:.3f} ms, "
          f"vllm-router-rr {medians['vllm-router-rr']:.3f} ms (gap {out['p50_added_gap_ms']:.3f}"
          " ms; target <= 0.5)")
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
