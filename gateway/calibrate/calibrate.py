"""``lorafleet calibrate``: sweep running servers and fit a profile the twin can load."""

from __future__ import annotations

import datetime
import platform
from collections.abc import Callable, Sequence
from typing import Any

from gateway.calibrate.client import ServerClient
from gateway.calibrate.sweep import AdapterSource, SweepPlan, SweepResult, run_sweep
from twin.fit import fit_linear, fit_load_times
from twin.profile import CalibrationProfile
from twin.specs import ModelSpec

__all__ = ["build_profile", "calibrate"]


def build_profile(results: SweepResult | Sequence[SweepResult], model: ModelSpec, *,
                  name: str, hardware: str | None = None) -> CalibrationProfile:
    """The profile fitted to one sweep or to the pooled sweeps of servers started with
    different ``--max-loras`` (step rows marked ``used_in_fit``, all by default; load times
    by the twin's adapter sizes for ``model``). The request overhead is the one measured on a
    busy engine when the sweep has such rows."""
    runs = [results] if isinstance(results, SweepResult) else list(results)
    if not runs:
        raise ValueError("no sweep to fit")
    steps = [s for r in runs for s in r.steps]
    fit = fit_linear([s for s in steps if s.get("used_in_fit", 1.0)])
    swap_loads = [x for r in runs for x in r.swap_loads]
    disk_loads = [x for r in runs for x in r.disk_loads]
    swap = fit_load_times([], [(model.adapter_bytes(r), s) for r, s in swap_loads])
    # vLLM's load_lora_adapter loads into the CPU tier and activates the adapter in a slot;
    # the twin charges that as disk + CPU->GPU for the CPU tier plus CPU->GPU for the
    # activation (twin.lora_cache.add_adapter, twin.simulation.build_engine): take both
    # CPU->GPU loads off the measured call to leave the disk part.
    disk = [(size, max(0.0, s - 2 * swap.cpu_to_gpu_s(size)))
            for size, s in ((model.adapter_bytes(r), s) for r, s in disk_loads)]
    load = fit_load_times(disk, [(model.adapter_bytes(r), s) for r, s in swap_loads])
    facts = runs[0].facts
    servers = sorted({r.facts.max_loras for r in runs})
    source: dict[str, Any] = {
        "hardware": hardware or f"{platform.machine()} CPU ({platform.node()})",
        "model": f"{facts.base_model} (served), twin spec {model.name}",
        "vllm_version": facts.vllm_version,
        "date": datetime.date.today().isoformat(),
        "fitted_by": "lorafleet calibrate",
        "server": {"max_loras": servers if len(servers) > 1 else servers[0],
                   "max_model_len": facts.max_model_len},
        "fit": {"mean_relative_error": fit.mean_relative_error, "rows_used": fit.rows_used,
                "rows_dropped": fit.rows_dropped,
                "http_rtt_s": sum(r.http_rtt_s for r in runs) / len(runs),
                "columns": list(fit.columns_fitted),
                "idle_overhead_s": fit.request_overhead_s,
                "overhead_floor_s": fit.overhead_floor_s,
                "busy_overhead_s": fit.busy_overhead_s, "request_cpu_s": fit.request_cpu_s},
        "load_samples": {"disk": disk_loads, "cpu_to_gpu": swap_loads},
        "note": "step rows: mean decode step of a burst (vLLM's inter-token latency "
                "histogram) of base-model, LoRA and mixed requests; first-token rows: client "
                "time to first token = overhead + one prefill step, on an idle server and "
                "(busy 1) with decodes running, less half a step of wait; the request "
                "overhead is idle + busy, the idle one at least the median time of requests "
                "sent alone outside vLLM's own time to first token (overhead_floor_s); "
                "arrival rows: decode steps while short requests arrive (arrivals per "
                "step), which give request_cpu_s; slot terms are "
                "fitted when the sweeps cover several max_loras, else folded into base_s.",
    }
    return CalibrationProfile(name=name, kind="linear", source=source,
                              linear=fit.coefficients, load=load,
                              request_overhead_s=fit.request_overhead_s
                              + fit.busy_overhead_s, request_cpu_s=fit.request_cpu_s,
                              samples=steps)


async def calibrate(urls: str | Sequence[str], sources: list[AdapterSource], plan: SweepPlan,
                    model: ModelSpec, *, name: str, max_loras: int | None = None,
                    hardware: str | None = None,
                    progress: Callable[[str], None] = lambda _: None) -> CalibrationProfile:
    """Sweep the server(s) at ``urls`` (one after the other) and fit one profile."""
    results = []
    for url in [urls] if isinstance(urls, str) else urls:
        async with ServerClient(url) as client:
            results.append(await run_sweep(client, plan, sources, max_loras=max_loras,
                                           progress=progress))
    return build_profile(results, model, name=name, hardware=hardware)
