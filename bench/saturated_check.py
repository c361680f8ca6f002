"""The twin against the reference's one saturated run with many slots (a check, not a fit).

The reference's ``find_max_batch_small`` run (``saturated_mixed_run`` in
``bench/data/h100_reference.json``): a server with 300 slots, 4096 requests of 407 prompt and
200 output tokens sent at once over 300 rank-8 adapters (13 or 14 each, in a seeded shuffle:
the reference's order is not recorded). The batch stays at 256 while prefill chunks of new
requests join the decodes, so most of the time is decode-only steps (their length is the
median inter-token latency) and the rest is mixed steps (they lift the mean). The H100
profile is fitted to decode-only and prefill-only steps; this run tells how well it carries
to mixed steps. It is a microbenchmark of the reference (not one of its held-out serving runs)
and nothing is fitted to it.

Prints a table and writes ``bench/results/saturated_check.json``.
Run: ``PYTHONPATH=. .venv/bin/python bench/saturated_check.py [--profile NAME]``
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.reference_steps import load_reference  # noqa: E402
from twin.scenario import parse_scenario  # noqa: E402
from twin.simulation import simulate  # noqa: E402


def scenario(run: dict[str, Any], profile: str, trace: Path, seed: int) -> dict[str, Any]:
    """The run as a twin scenario; writes its requests (all at t=0) to ``trace``."""
    n, adapters = run["num_prompts"], run["adapters"]
    order = [i % adapters for i in range(n)]
    random.Random(seed).shuffle(order)
    trace.write_text("".join(json.dumps({
        "timestamp": 0.0, "adapter": f"dummy-{a}", "input_tokens": run["input_tokens_per_request"],
        "output_tokens": run["output_tokens_per_request"]}) + "\n" for a in order))
    return {"name": "reference-saturated-300-slots", "model": "llama-3.1-8b", "gpu": "h100-64gb",
            "profile": profile,
            "engine": {"max_num_seqs": run["max_num_seqs_observed"],
                       "max_num_batched_tokens": run["max_num_batched_tokens"],
                       "max_loras": run["max_loras"], "max_cpu_loras": adapters,
                       "max_lora_rank": run["max_lora_rank"], "max_model_len": 131072},
            "adapters": [{"name": f"dummy-{i}", "rank": run["adapter_rank"], "rate": 1e-6}
                         for i in range(adapters)],
            "arrivals": {"trace": str(trace)}, "duration_s": 4 * run["duration_s"],
            "seed": seed}


def check(profile: str, seed: int) -> dict[str, Any]:
    run = load_reference()["saturated_mixed_run"]
    with tempfile.TemporaryDirectory() as tmp:
        sc = parse_scenario(scenario(run, profile, Path(tmp) / "trace.jsonl", seed))
        result, engine = simulate(sc, record_steps=True)
    assert engine.steps is not None and result.finished == run["num_prompts"]
    starts = np.asarray(engine.steps.start_ns, dtype=np.float64)
    durations = np.asarray(engine.steps.duration_ns, dtype=np.float64)
    prefill = np.asarray(engine.steps.prefill_tokens)
    decode = np.asarray(engine.steps.decode_seqs)
    itl, weights = engine.itl_arrays()
    twin = {"duration_s": float(starts[-1] + durations[-1]) / 1e9,
            "mean_itl_ms": float(np.average(itl, weights=weights)) / 1e6,
            "median_itl_ms": result.itl_p50_s * 1e3,
            "decode_step_ms": float(np.median(durations[prefill == 0])) / 1e6,
            "mixed_step_ms": float(np.mean(durations[(prefill > 0) & (decode > 0)])) / 1e6,
            "mixed_share": float(np.mean((prefill > 0) & (decode > 0)))}
    real = {k: run[k] for k in ("duration_s", "mean_itl_ms", "median_itl_ms")}
    return {"profile": profile, "seed": seed, "source": run["path"], "real": real, "twin": twin,
            "errors": {k: twin[k] / real[k] - 1 for k in real}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="h100-64gb-llama-3.1-8b")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = check(args.profile, args.seed)
    for key, err in out["errors"].items():
        print(f"{key:>14}: real {out['real'][key]:9.2f}  twin {out['twin'][key]:9.2f}  "
              f"({err:+.1%})")
    print(f"twin: decode-only step {out['twin']['decode_step_ms']:.1f} ms, mixed step "
          f"{out['twin']['mixed_step_ms']:.1f} ms ({out['twin']['mixed_share']:.0%} of steps)")
    (ROOT / "bench/results/saturated_check.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
