"""Online re-plan and migration diff: GPUs, moves and time under load swings.

For 50, 200 and 1000 adapters (Zipf-skewed rates, A100-80GB + Llama-3.1-8B, the bundled
surrogate): a cold start (``replan`` with no workers) against ``place``; re-plans at the same
rates until one moves nothing; then from that fleet, re-plans at rates wobbled by ±5% per
adapter (10 draws), with one worker down, at +20%, at twice and at half the rates (half:
re-planned round after round until nothing moves). For +20% the moves of a fresh ``place``
mapped onto the fleet by ``diff`` are shown beside the re-plan's. Prints a table and writes
``bench/results/replan.json``.
Run: ``.venv/bin/python bench/replan.py [--sizes 50 200]`` (the adapters are
``bench/placement.py``'s).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from placement import adapters  # bench/placement.py's Zipf fleets (bench/ is on sys.path)
from rich.console import Console
from rich.table import Table

from gateway.pretrained import default_surrogate
from planner import (
    AdapterDemand,
    Plan,
    Predictor,
    RunningWorker,
    Target,
    apply,
    diff,
    place_with,
    replan,
)

ROOT = Path(__file__).resolve().parent.parent


SHARES: dict[str, dict[str, float]] = {}  # the routing split of the fleet carried out last


def carry_out(workers: Sequence[RunningWorker], plan: Plan, *, keep: bool = True,
              ) -> tuple[list[RunningWorker], int, int, int]:
    """The fleet after the migration to ``plan`` (from ``replan``); moved, retired, added.
    With ``keep``, its routing split is what the next re-plan starts from (as the gateway's
    routing table is)."""
    names = [w.name for w in workers]
    current = {w.name: w.adapters for w in workers}
    m = diff(current, plan, names)
    after = apply(current, m)
    engines = dict(zip([*names, *m.added], [g.engine for g in plan.gpus], strict=True))
    fleet = [RunningWorker(n, engines[n], after[n]) for n in [*names, *m.added] if n in after]
    if keep:
        SHARES.clear()
        SHARES.update({n: dict(s) for n, s in m.shares.items()})
    return fleet, len(m.moved), len(m.retired), len(m.added)


def fresh_moves(workers: Sequence[RunningWorker], plan: Plan) -> int:
    """Adapters moved if a fresh plan were mapped onto ``workers`` (settings aside)."""
    return len(diff({w.name: w.adapters for w in workers}, plan, [w.name for w in workers])
               .moved)


def timed(ads: Sequence[AdapterDemand], workers: Sequence[RunningWorker],
          predictor: Predictor) -> tuple[Plan, float]:
    started = time.perf_counter()
    plan = replan(ads, workers, predictor, shares=SHARES or None)
    return plan, time.perf_counter() - started


def scaled(ads: Sequence[AdapterDemand], factor: float) -> list[AdapterDemand]:
    return [replace(a, rate=a.rate * factor) for a in ads]


def run(n: int, predictor: Predictor) -> list[dict[str, object]]:
    ads = adapters(n, total_rate=0.6 * n)
    rows: list[dict[str, object]] = []
    fresh = place_with(ads, predictor)
    plan, secs = timed(ads, [], predictor)
    fleet, *_ = carry_out([], plan)
    rows.append({"adapters": n, "case": "cold start", "gpus": len(fleet), "moved": 0,
                 "retired": 0, "added": len(fleet), "seconds": secs,
                 "note": f"place: {fresh.num_gpus} GPUs"})
    rounds = 0
    while rounds < 5:
        rounds += 1
        plan, secs = timed(ads, fleet, predictor)
        fleet, moved, retired, added = carry_out(fleet, plan)
        if not moved and not retired:
            break
    rows.append({"adapters": n, "case": "settle", "gpus": len(fleet), "moved": 0,
                 "retired": 0, "added": 0, "seconds": secs, "note": f"{rounds} re-plans"})
    unstable, worst = 0, 0.0
    for seed in range(10):
        rng = random.Random(seed)
        wobble = [replace(a, rate=a.rate * rng.uniform(0.95, 1.05)) for a in ads]
        plan, secs = timed(wobble, fleet, predictor)
        worst = max(worst, secs)
        _, moved, retired, added = carry_out(fleet, plan, keep=False)
        unstable += bool(moved or retired or added)
    rows.append({"adapters": n, "case": "±5% x10", "gpus": len(fleet), "moved": 0,
                 "retired": 0, "added": 0, "seconds": worst,
                 "note": f"{unstable}/10 re-plans changed anything"})
    down = [replace(w, up=False) if i == 1 else w for i, w in enumerate(fleet)]
    plan, secs = timed(ads, down, predictor)
    after, moved, retired, added = carry_out(down, plan, keep=False)
    rows.append({"adapters": n, "case": "worker 1 down", "gpus": len(after), "moved": moved,
                 "retired": retired, "added": added, "seconds": secs,
                 "note": f"it held {len(fleet[1].adapters)}"})
    up20 = scaled(ads, 1.2)
    plan, secs = timed(up20, fleet, predictor)
    after, moved, retired, added = carry_out(fleet, plan, keep=False)
    fresh_moved = fresh_moves(fleet, place_with(up20, predictor))
    rows.append({"adapters": n, "case": "+20%", "gpus": len(after), "moved": moved,
                 "retired": retired, "added": added, "seconds": secs,
                 "note": f"fresh place + diff: {fresh_moved} moved, "
                         f"{place_with(up20, predictor).num_gpus} GPUs"})
    plan, secs = timed(scaled(ads, 2.0), fleet, predictor)
    after, moved, retired, added = carry_out(fleet, plan, keep=False)
    rows.append({"adapters": n, "case": "x2", "gpus": len(after), "moved": moved,
                 "retired": retired, "added": added, "seconds": secs,
                 "note": f"place: {place_with(scaled(ads, 2.0), predictor).num_gpus} GPUs"})
    half, current, total = scaled(ads, 0.5), fleet, [0, 0, 0.0]
    rounds = 0
    while rounds < 30:
        rounds += 1
        plan, secs = timed(half, current, predictor)
        current, moved, retired, _ = carry_out(current, plan)
        total = [total[0] + moved, total[1] + retired, max(total[2], secs)]
        if not moved and not retired:
            break
    rows.append({"adapters": n, "case": "x0.5 until still", "gpus": len(current),
                 "moved": total[0], "retired": total[1], "added": 0, "seconds": total[2],
                 "note": f"{rounds} re-plans (budget 8); place: "
                         f"{place_with(half, predictor).num_gpus} GPUs"})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 200, 1000])
    args = parser.parse_args()
    predictor = Target.resolve().predictor(default_surrogate())
    rows = [row for n in args.sizes for row in run(n, predictor)]
    table = Table(title="online re-plan (seconds: the slowest re-plan of the case)")
    for col in ("adapters", "case", "gpus", "moved", "retired", "added", "seconds", "note"):
        table.add_column(col)
    for r in rows:
        table.add_row(*(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values()))
    Console().print(table)
    out = ROOT / "bench" / "results" / "replan.json"
    out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
