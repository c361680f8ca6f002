"""``lorafleet calibrate``: sweep a running server and fit a profile the twin can load."""

from __future__ import annotations

import datetime
import platform
from collections.abc import Callable
from typing import Any

from gateway.calibrate.client import ServerClient
from gateway.calibrate.sweep import AdapterSource, SweepPlan, SweepResult, run_sweep
from twin.fit import fit_linear, fit_load_times
from twin.profile import CalibrationProfile
from twin.specs import ModelSpec

__all__ = ["build_profile", "calibrate"]


def build_profile(result: SweepResult, model: ModelSpec, *, name: str,
                  hardware: str | None = None) -> CalibrationProfile:
    """The profile fitted to a sweep (step rows marked ``used_in_fit``; load times by the
    twin's adapter sizes for ``model``)."""
    fitted = [s for s in result.steps if s.get("used_in_fit", 1.0)]
    fit = fit_linear(fitted)
    swap = fit_load_times([], [(model.adapter_bytes(r), s) for r, s in result.swap_loads])
    # vLLM's load_lora_adapter loads into the CPU tier and activates the adapter in a slot;
    # the twin charges that as disk + CPU->GPU for the CPU tier plus CPU->GPU for the
    # activation (twin.lora_cache.add_adapter, twin.simulate.build_engine): take both
    # CPU->GPU loads off the measured call to leave the disk part.
    disk = [(size, max(0.0, s - 2 * swap.cpu_to_gpu_s(size)))
            for size, s in ((model.adapter_bytes(r), s) for r, s in result.disk_loads)]
    load = fit_load_times(disk, [(model.adapter_bytes(r), s) for r, s in result.swap_loads])
    facts = result.facts
    source: dict[str, Any] = {
        "hardware": hardware or f"{platform.machine()} CPU ({platform.node()})",
        "model": f"{facts.base_model} (served), twin spec {model.name}",
        "vllm_version": facts.vllm_version,
        "date": datetime.date.today().isoformat(),
        "fitted_by": "lorafleet calibrate",
        "server": {"max_loras": facts.max_loras, "max_model_len": facts.max_model_len},
        "fit": {"mean_relative_error": fit.mean_relative_error, "rows_used": fit.rows_used,
                "rows_dropped": fit.rows_dropped, "http_rtt_s": result.http_rtt_s},
        "load_samples": {"disk": result.disk_loads, "cpu_to_gpu": result.swap_loads},
        "note": "step rows: mean decode step of a burst (vLLM's inter-token latency "
                "histogram); first-token rows: client time to first token = overhead + one "
                "prefill step; base-model rows (distinct_adapters 0, used_in_fit 0) are kept "
                "for reference but not fitted: the twin's step features have no LoRA-token "
                "count, and adapters are what the twin is for. LoRA slot terms are folded "
                "into base_s: the profile holds for the server's own max_loras and rank.",
    }
    return CalibrationProfile(name=name, kind="linear", source=source,
                              linear=fit.coefficients, load=load,
                              request_overhead_s=fit.request_overhead_s,
                              samples=list(result.steps))


async def calibrate(url: str, sources: list[AdapterSource], plan: SweepPlan,
                    model: ModelSpec, *, name: str, max_loras: int | None = None,
                    hardware: str | None = None,
                    progress: Callable[[str], None] = lambda _: None) -> CalibrationProfile:
    """Sweep the server at ``url`` and fit its profile."""
    async with ServerClient(url) as client:
        result = await run_sweep(client, plan, sources, max_loras=max_loras,
                                 progress=progress)
    return build_profile(result, model, name=name, hardware=hardware)
