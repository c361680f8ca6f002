"""The twin's scheduler against vLLM 0.32's own ``Scheduler``, step by step, on one clock.

Each case (adapters against ``max_loras``, a Poisson load, a KV pool) is run twice on the same
arrivals and the same linear step-time function: by the twin's ``EngineCore`` (driven as the
emulated worker drives it: arrivals added when a step starts, runs of decode steps stopped at
an arrival while one could be admitted) and by vLLM's ``Scheduler`` class in the vLLM venv
(``bench/vllm_scheduler_replay.py``, no model: a step samples one token per finished prompt or
decode). Timing is taken out of the comparison, so what is left is the scheduling rule: which
requests each step admits, skips, preempts and retires. The two must agree on every step
(start, duration, prefill tokens, decodes, distinct LoRAs) and on every request's first
schedule, first token and finish time; the served fraction of each adapter (tokens processed
over tokens offered) shows which adapter the ``max_loras`` skip rule locks out.

Prints a table and writes ``bench/results/scheduler_lockstep.json``.
Run: ``LORAFLEET_VLLM_PYTHON=.venv-vllm/bin/python .venv/bin/python bench/scheduler_lockstep.py``
(about a minute; the tiny model's config must be built: ``make vllm-env``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twin.engine import EngineCore  # noqa: E402
from twin.request import Request  # noqa: E402
from twin.scenario import Scenario, parse_scenario  # noqa: E402
from twin.workload import Arrival  # noqa: E402

REPLAY = ROOT / "bench/vllm_scheduler_replay.py"
OUT = ROOT / "bench/results/scheduler_lockstep.json"
#: Step time: base, per prefill token, per decode sequence, per distinct LoRA (seconds); about
#: the CPU tiny model's scale.
COEFFICIENTS = (0.004, 2e-5, 3e-4, 0.0)


class LinearSteps:
    """``base + a * prefill_tokens + b * decode_seqs + c * distinct_adapters`` seconds, the same
    float arithmetic as the vLLM side (a ``twin.step_time.StepTimeModel``)."""

    def __init__(self, coefficients: tuple[float, float, float, float]) -> None:
        self.coefficients = coefficients

    def predict(self, prefill_tokens: Any, decode_seqs: Any, context_tokens: Any,
                distinct_adapters: Any, lora_tokens: Any = None) -> Any:
        base, per_prefill, per_decode, per_adapter = self.coefficients
        return base + per_prefill * prefill_tokens + per_decode * decode_seqs \
            + per_adapter * distinct_adapters


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    """One comparison: ``adapters`` at equal Poisson rates summing to ``rate``."""

    name: str
    adapters: int
    rate: float
    max_loras: int = 2
    num_blocks: int = 20000
    duration_s: float = 30.0
    seed: int = 0
    coefficients: tuple[float, float, float, float] = COEFFICIENTS


#: Steps about 2x slower: requests run longer, so the two resident adapters' running sets
#: never empty and the third adapter is locked out for the whole run.
SLOW = (0.01, 5e-5, 1e-3, 0.0)
CASES = [
    Case(name="three-on-two-spread", adapters=3, rate=45.0, seed=2),
    Case(name="three-on-two-lockout", adapters=3, rate=30.0, seed=1, coefficients=SLOW),
    Case(name="three-on-two-deep", adapters=3, rate=90.0, seed=4),
    Case(name="three-on-two-kv-bound", adapters=3, rate=60.0, num_blocks=12, seed=6,
         coefficients=(0.004, 2e-5, 3e-4, 0.002)),
    Case(name="two-on-two-slow", adapters=2, rate=20.0, seed=1, coefficients=SLOW),
    Case(name="eight-on-two", adapters=8, rate=45.0, seed=5),
]


def scenario(case: Case) -> Scenario:
    """The case's workload on the CPU tiny model (the fidelity bench's lengths)."""
    return parse_scenario({
        "name": case.name, "model": "tiny-llama",
        "gpu": {"name": "cpu", "memory_gib": 24, "kv_cache_space_gib": 1},
        "engine": {"max_loras": case.max_loras, "max_cpu_loras": max(case.max_loras, 4),
                   "max_lora_rank": 16, "max_model_len": 512},
        "adapters": [{"name": f"a{i}", "rank": 8, "rate": case.rate / case.adapters}
                     for i in range(case.adapters)],
        "arrivals": {"process": "poisson"},
        "lengths": {"input": {"dist": "uniform", "low": 32, "high": 160},
                    "output": {"dist": "uniform", "low": 16, "high": 48}},
        "duration_s": case.duration_s, "seed": case.seed})


def run_twin(case: Case, sc: Scenario, arrivals: list[Arrival]) -> dict[str, Any]:
    """The twin's engine on the arrivals; steps and requests in the replay's form."""
    engine = replace(sc.engine, max_loras=case.max_loras)
    core = EngineCore(engine, LinearSteps(case.coefficients), case.num_blocks,
                      record_steps=True)
    end = round(case.duration_s * 1e9)
    requests: list[Request] = []
    nxt = 0
    while core.now_ns < end:
        while nxt < len(arrivals) and arrivals[nxt].time_ns <= core.now_ns:
            a = arrivals[nxt]
            request = Request(f"r{nxt}", a.adapter, a.prompt_tokens, a.max_tokens, a.time_ns)
            core.add_request(request)
            requests.append(request)
            nxt += 1
        if not core.has_unfinished_requests:
            if nxt >= len(arrivals):
                break
            core.now_ns = arrivals[nxt].time_ns
            continue
        core.step_run(end, arrivals[nxt].time_ns if nxt < len(arrivals) else math.inf)
    core.settle()
    assert core.steps is not None
    log = core.steps
    steps = [list(s) for s in zip(log.start_ns, log.duration_ns, log.prefill_tokens,
                                  log.decode_seqs, log.distinct_adapters, strict=True)]
    return {"steps": steps, "requests": {r.request_id: {
        "adapter": r.adapter, "first_scheduled_ns": r.first_scheduled_ns,
        "first_token_ns": r.first_token_ns, "finish_ns": r.finish_ns,
        "output_tokens": r.num_output_tokens, "max_tokens": r.max_tokens} for r in requests},
        "preemptions": core.num_preemptions}


def case_json(case: Case, sc: Scenario, arrivals: list[Arrival], model_path: str
              ) -> dict[str, Any]:
    e = sc.engine
    return {"model_path": model_path, "coefficients": list(case.coefficients),
            "end_ns": round(case.duration_s * 1e9),
            "engine": {"max_loras": case.max_loras, "max_model_len": e.max_model_len,
                       "max_num_seqs": e.max_num_seqs,
                       "max_num_batched_tokens": e.max_num_batched_tokens,
                       "block_size": e.block_size, "num_blocks": case.num_blocks},
            "arrivals": [[a.time_ns, a.adapter, a.prompt_tokens, a.max_tokens]
                         for a in arrivals]}


def served_fractions(run: dict[str, Any], arrivals: list[Arrival]) -> dict[str, float]:
    """Per adapter: prompt tokens of requests with a first token plus output tokens, over
    prompt plus ``max_tokens`` of every request (``twin.results``' served/offered)."""
    served: dict[str, int] = {}
    offered: dict[str, int] = {}
    for i, a in enumerate(arrivals):
        r = run["requests"].get(f"r{i}")
        name = a.adapter or "<base>"
        offered[name] = offered.get(name, 0) + a.prompt_tokens + a.max_tokens
        done = 0 if r is None or r["first_token_ns"] is None else (
            a.prompt_tokens + r["output_tokens"])
        served[name] = served.get(name, 0) + done
    return {k: round(served[k] / offered[k], 4) for k in sorted(offered)}


def compare(twin: dict[str, Any], vllm: dict[str, Any]) -> dict[str, Any]:
    """Steps and request times that differ (none when the rules agree)."""
    first = next((i for i, (a, b) in enumerate(zip(twin["steps"], vllm["steps"], strict=False))
                  if list(a) != list(b)), None)
    keys = ("first_scheduled_ns", "first_token_ns", "finish_ns")
    differ = [rid for rid, r in twin["requests"].items()
              if any(r[k] != vllm["requests"][rid][k] for k in keys)]
    return {"steps_twin": len(twin["steps"]), "steps_vllm": len(vllm["steps"]),
            "first_step_differing": first, "requests_differing": len(differ),
            "identical": first is None and len(twin["steps"]) == len(vllm["steps"])
            and not differ}


def run_cases(cases: list[Case], python: str, model_path: str) -> list[dict[str, Any]]:
    """Every case in the twin and (in one subprocess) in vLLM's scheduler."""
    prepared = []
    for case in cases:
        sc = scenario(case)
        arrivals, _ = sc.workload.generate(sc.engine.max_model_len)
        prepared.append((case, sc, arrivals))
    with tempfile.TemporaryDirectory() as tmp:
        spec, out = Path(tmp) / "cases.json", Path(tmp) / "out.json"
        spec.write_text(json.dumps([case_json(c, sc, arr, model_path)
                                    for c, sc, arr in prepared]))
        subprocess.run([python, str(REPLAY), str(spec), str(out)], check=True,
                       capture_output=True, env={**os.environ, "PYTHONPATH": ""})
        vllm_runs = json.loads(out.read_text())
    rows = []
    for (case, sc, arrivals), vllm in zip(prepared, vllm_runs, strict=True):
        twin = run_twin(case, sc, arrivals)
        rows.append({"case": case.name, "vllm_version": vllm["vllm_version"],
                     "adapters": case.adapters, "max_loras": case.max_loras,
                     "rate_rps": case.rate, "num_blocks": case.num_blocks, "seed": case.seed,
                     "coefficients": list(case.coefficients),
                     "preemptions": twin["preemptions"], **compare(twin, vllm),
                     "served_fraction_twin": served_fractions(twin, arrivals),
                     "served_fraction_vllm": served_fractions(vllm, arrivals)})
    return rows


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    python = os.environ.get("LORAFLEET_VLLM_PYTHON", str(ROOT / ".venv-vllm/bin/python"))
    cache = Path(os.environ.get("LORAFLEET_TINY_MODEL_DIR", ROOT / ".cache/tiny-llama"))
    rows = run_cases(CASES, python, str(cache / "base"))
    table = Table(title="twin scheduler vs vLLM 0.32 Scheduler (same arrivals, same clock)")
    for col in ("case", "steps", "preempt", "identical", "served twin", "served vLLM"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r["case"], f"{r['steps_twin']:,}", str(r["preemptions"]),
                      str(r["identical"]),
                      " ".join(f"{v:.2f}" for v in r["served_fraction_twin"].values()),
                      " ".join(f"{v:.2f}" for v in r["served_fraction_vllm"].values()))
    Console(width=140).print(table)
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps({"coefficients": "base, per prefill token, per decode sequence, "
                              "per distinct LoRA (s)", "cases": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
