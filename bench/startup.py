"""How soon lorafleet is useful on a fresh machine: an empty cache, nothing trained.

Each round runs with ``XDG_CACHE_HOME`` pointing at a new empty folder and times, from the
process's start (wall clock, as a user waits):

- ``help``: ``lorafleet --help``;
- ``plan_50``: ``lorafleet plan examples/adapters-50.yaml`` (placed, checked in the twin,
  baselines and bounds), to its exit;
- ``plan_1000``: the same for 1000 adapters (``bench/placement.py``'s Zipf set, 600 req/s);
- ``ready``: ``lorafleet serve --emulate 2 --adapters examples/adapters-50.yaml`` until
  ``/ready`` answers 200 (the placement is made and installed: the first plan);

and checks that the cache folder is still empty afterwards (the shipped surrogate was used,
nothing was trained). Targets (issue 23): help <= 0.5 s, plan_50 <= 5 s, plan_1000 <= 15 s,
ready <= 10 s. Before the shipped surrogate (same machine, issue 23): plan_50 2 min 18 s,
ready 4.3 min, help 1.9 s. Run: ``.venv/bin/python bench/startup.py [--rounds 3]``; writes
``bench/results/startup.json``. The medians are the figures; 2 cores shared with whatever
else runs make single rounds swing by a second.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.placement import adapters as zipf_adapters  # noqa: E402

TARGETS = {"help": 0.5, "plan_50": 5.0, "plan_1000": 15.0, "ready": 10.0}
LORAFLEET = [sys.executable, "-m", "gateway.cli"]


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "XDG_CACHE_HOME": str(cache)}


def _timed(argv: list[str], cache: Path) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=_env(cache), cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(cache: Path, timeout_s: float = 120.0) -> float:
    port = _free_port()
    started = time.perf_counter()
    proc = subprocess.Popen([*LORAFLEET, "serve", "--emulate", "2", "--adapters",
                             "examples/adapters-50.yaml", "--port", str(port)],
                            env=_env(cache), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - started < timeout_s:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - started
            except (urllib.error.URLError, OSError):
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"lorafleet serve exited with {proc.returncode}")
            time.sleep(0.05)
        raise RuntimeError(f"/ready not 200 within {timeout_s} s")
    finally:
        proc.terminate()
        proc.wait(30)


def one_round(folder: Path, big: Path) -> dict[str, Any]:
    caches = {name: folder / name for name in TARGETS}
    row = {
        "help": _timed([*LORAFLEET, "--help"], caches["help"]),
        "plan_50": _timed([*LORAFLEET, "plan", "examples/adapters-50.yaml"],
                          caches["plan_50"]),
        "plan_1000": _timed([*LORAFLEET, "plan", str(big)], caches["plan_1000"]),
        "ready": _ready(caches["ready"]),
    }
    row["cache_left_empty"] = all(not c.exists() or not any(c.rglob("*"))
                                  for c in caches.values())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/startup.json")
    args = parser.parse_args()
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "adapters-1000.yaml"
        big.write_text(yaml.safe_dump({"adapters": [
            {"name": a.name, "rank": a.rank, "rate": round(a.rate, 6),
             "input_tokens": a.input_tokens, "output_tokens": a.output_tokens}
            for a in zipf_adapters(1000, total_rate=600.0)]}, sort_keys=False))
        for r in range(args.rounds):
            rounds.append(one_round(Path(tmp) / f"round-{r}", big))
    medians = {k: statistics.median(r[k] for r in rounds) for k in TARGETS}
    table = Table(title=f"fresh start, empty cache (median of {args.rounds} rounds)")
    for col in ("what", "median s", "rounds s", "target s", "met"):
        table.add_column(col, justify="right")
    for k, target in TARGETS.items():
        table.add_row(k, f"{medians[k]:.2f}", " ".join(f"{r[k]:.2f}" for r in rounds),
                      f"{target:g}", "yes" if medians[k] <= target else "NO")
    Console().print(table)
    empty = all(r["cache_left_empty"] for r in rounds)
    Console().print(f"cache left empty (nothing trained): {empty}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "targets_s": TARGETS, "median_s": {k: round(v, 3) for k, v in medians.items()},
        "met": {k: medians[k] <= t for k, t in TARGETS.items()},
        "cache_left_empty": empty, "cpus": os.cpu_count(),
        "rounds": [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}
                   for r in rounds]}, indent=1) + "\n")


if __name__ == "__main__":
    main()
