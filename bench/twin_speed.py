"""How fast the twin runs: one simulated hour of a saturated A100 worker with 64 adapters.

Prints a table and writes ``bench/results/twin_speed.json``. Target: at least 1000x faster
than real time on one core. Run: ``make bench`` (or ``.venv/bin/python bench/twin_speed.py``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from twin.scenario import parse_scenario
from twin.simulation import simulate

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = {
    "name": "a100-64-adapters-1h", "model": "llama-3.1-8b", "gpu": "a100-80gb",
    "profile": "roofline-default",
    "engine": {"max_num_seqs": 256, "max_num_batched_tokens": 2048, "max_loras": 16,
               "max_cpu_loras": 64, "max_lora_rank": 16, "max_model_len": 8192},
    "adapters": {"count": 64, "ranks": [8, 16], "rate_total": 20.0, "zipf": 1.0},
    "arrivals": {"process": "poisson"},
    "lengths": {"input": {"dist": "lognormal", "mean": 512, "std": 256},
                "output": {"dist": "lognormal", "mean": 192, "std": 96}},
    "duration_s": 3600, "seed": 0}


def main() -> None:
    rows = []
    for fast in (True, False):
        scenario = parse_scenario(SCENARIO)
        started = time.perf_counter()
        result, engine = simulate(scenario, fast_path=fast, record_steps=True)
        wall = time.perf_counter() - started
        assert engine.steps is not None
        busy = sum(engine.steps.duration_ns) / 1e9
        events = result.requests * 2 + result.finished + engine.g
        rows.append({"fast_path": fast, "sim_seconds": result.sim_seconds, "wall_seconds": wall,
                     "speedup": result.sim_seconds / wall, "events_per_s": events / wall,
                     "engine_steps": engine.g, "steps_in_decode_runs": engine.fast_steps,
                     "requests": result.requests, "utilisation": busy / result.sim_seconds,
                     "starved": result.starved, "throughput_tps": result.throughput_tps,
                     "ideal_tps": result.ideal_tps})
    table = Table(title="twin speed: 1 simulated hour, A100-80GB, 64 adapters (one core)")
    for col in ("fast path", "wall s", "sim/wall", "events/s", "steps", "in runs",
                "requests", "utilisation", "starved"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["fast_path"]), f"{r['wall_seconds']:.2f}", f"{r['speedup']:,.0f}x",
                      f"{r['events_per_s']:,.0f}", f"{r['engine_steps']:,}",
                      f"{r['steps_in_decode_runs']:,}", f"{r['requests']:,}",
                      f"{r['utilisation']:.1%}", str(r["starved"]))
    Console(width=140).print(table)
    out = ROOT / "bench/results"
    out.mkdir(exist_ok=True)
    (out / "twin_speed.json").write_text(json.dumps({"scenario": SCENARIO, "rows": rows,
                                                     "target_speedup": 1000}, indent=1) + "\n")


if __name__ == "__main__":
    main()
