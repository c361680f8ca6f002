"""Fit the bundled profiles to the reference's published H100 measurements.

Input: ``bench/data/h100_reference.json`` (numbers copied from GitHub
FerranAgulloLopez/GPULLMAdapterOptimization at commit bae36e2d, see the README beside it).
Output: ``twin/profiles/h100-64gb-llama-3.1-8b.json`` (linear step model, memory overheads and
load times fitted to those measurements) and ``twin/profiles/roofline-default.json`` (roofline
efficiencies fitted on the same H100 data, for GPUs without measurements). Prints the fit
errors as a table and writes them to ``bench/results/profile_fit.json``.

Run: ``.venv/bin/python bench/fit_reference_profile.py``
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from twin.catalog import get_gpu, get_model
from twin.memory import MemoryOverheads
from twin.profile import CalibrationProfile, LoadTimes, save_profile
from twin.specs import GIB, EngineConfig
from twin.step_time import (
    LinearCoefficients,
    LoRACoefficients,
    RooflineCoefficients,
    RooflineStepTime,
)

ROOT = Path(__file__).resolve().parent.parent
DATA = json.loads((ROOT / "bench/data/h100_reference.json").read_text())
MODEL = get_model("llama-3.1-8b")
GPU = get_gpu("h100-64gb")
SOURCE_REPO = "github.com/FerranAgulloLopez/GPULLMAdapterOptimization@bae36e2d"
PROMPT_TOKENS = 6  # "input 1 word" prompts: chat template plus one word
# bench/roofline_check.py: the published TTFTs of all-at-once runs exceed the twin's, with the
# request overhead at 0, by a near-constant 25-27 ms on A100-80GB and H100-80GB alike (vLLM
# 0.5.4's API server: HTTP, tokenising, streaming).
REQUEST_OVERHEAD_S = 0.026


def decode_samples() -> list[dict[str, float]]:
    """Per-step samples: measured decode steps (no LoRA) and full 2048-token prefill chunks."""
    out = []
    for p in DATA["decode_sweep"]:
        if p.get("step_time_s") is None:
            continue
        b = p["mean_batch_size_prometheus"]
        ctx = b * (PROMPT_TOKENS + p["output_tokens"] / 2)
        out.append({"prefill_tokens": 0.0, "decode_seqs": b, "context_tokens": ctx,
                    "distinct_adapters": 0.0, "max_loras": 0.0, "max_lora_rank": 0.0,
                    "step_time_s": p["step_time_s"]})
    for p in DATA["prefill"]["per_step_points"]:
        out.append({"prefill_tokens": p["tokens_per_step_approx"], "decode_seqs": 0.0,
                    "context_tokens": p["tokens_per_step_approx"], "distinct_adapters": 0.0,
                    "max_loras": 0.0, "max_lora_rank": 0.0,
                    "step_time_s": p["step_time_median_s"]})
    return out


def fit_linear(samples: list[dict[str, float]]) -> LinearCoefficients:
    x = np.array([[1.0, s["prefill_tokens"] + s["decode_seqs"], s["decode_seqs"],
                   s["context_tokens"]] for s in samples])
    y = np.array([s["step_time_s"] for s in samples])
    c, *_ = np.linalg.lstsq(x, y, rcond=None)
    return LinearCoefficients(base_s=float(c[0]), per_token_s=float(c[1]),
                              per_seq_s=float(c[2]), per_context_token_s=float(c[3]),
                              lora=fit_lora())


def fit_lora() -> LoRACoefficients:
    """Slot cost from batch-1 steps vs max_loras (no adapter in the batch), adapter cost from
    the batch-220 steps vs distinct adapters (300 slots, rank 8)."""
    b1 = [p for p in DATA["decode_batch1_vs_max_loras"] if p["max_lora_rank"] == 8]
    slots = np.array([p["max_loras"] for p in b1], dtype=float)
    t = np.array([p["step_time_s"] for p in b1])
    per_slot, t0 = np.polyfit(slots, t, 1)
    r32 = {p["max_loras"]: p["step_time_s"] for p in DATA["decode_batch1_vs_max_loras"]
           if p["max_lora_rank"] == 32}
    r8 = dict(zip(slots.astype(int).tolist(), t.tolist(), strict=True))
    common = sorted(set(r32) & set(r8) - {8})
    ratio = np.mean([(r32[s] - t0) / (r8[s] - t0) for s in common])
    rank_slope = float((ratio - 1) / 3)  # rank 32 is 3 units of (r/8 - 1) above rank 8
    pts = [p for p in DATA["lora_overhead"]["raw_points"] if p.get("step_time_s")]
    distinct = np.array([p["mean_unique_adapters_per_step"] for p in pts])
    steps = np.array([p["step_time_s"] for p in pts])
    per_adapter, intercept = np.polyfit(distinct, steps, 1)
    base = DATA["lora_overhead"]["raw_points"][0]["baseline_no_lora_mean_itl_ms"] / 1e3
    batch = np.mean([p["mean_batch_size_prometheus"] for p in pts])
    slot_total = (intercept - base) / 300  # seconds per slot at this batch
    per_slot_token = max(0.0, (slot_total - per_slot) / batch)
    return LoRACoefficients(per_slot_s=float(per_slot), per_slot_token_s=float(per_slot_token),
                            rank_slope=rank_slope, per_adapter_s=float(per_adapter))


def fit_memory() -> MemoryOverheads:
    """KV bytes = A - slots * (buffers(rank) + extra): A and extra by least squares; the
    sampler's per-sequence memory from the no-LoRA sweep over max_num_seqs."""
    pts = [p for p in DATA["kv_capacity"] if p["kv_tokens"]]
    slots = np.array([p["max_loras"] for p in pts], dtype=float)
    kv = np.array([p["kv_tokens"] * MODEL.kv_bytes_per_token for p in pts], dtype=float)
    buffers = np.array([MODEL.lora_slot_bytes(p["max_lora_rank"]) for p in pts], dtype=float)
    a, extra = np.linalg.lstsq(np.c_[np.ones_like(slots), -slots], kv + slots * buffers,
                               rcond=None)[0]
    seqs = DATA["kv_capacity_no_lora_vs_max_num_seqs"]
    s = np.array([p["max_num_seqs"] for p in seqs], dtype=float)
    k = np.array([p["kv_tokens"] * MODEL.kv_bytes_per_token for p in seqs], dtype=float)
    per_seq = -np.polyfit(s, k, 1)[0]
    no_lora_kv_at = float(np.polyval(np.polyfit(s, k, 1), 2048))
    requested = np.ceil(GPU.memory_bytes * 0.9)
    act_per_token = (2 * MODEL.intermediate_size + 4 * MODEL.hidden_size) * MODEL.dtype_bytes
    non_torch = requested - MODEL.weight_bytes - no_lora_kv_at - per_seq * 2048 \
        - act_per_token * 2048
    return MemoryOverheads(
        non_torch_bytes=int(non_torch), activation_bytes_per_token=float(act_per_token),
        sampler_bytes_per_seq=float(per_seq), lora_fixed_bytes=int(no_lora_kv_at - a),
        lora_slot_extra_bytes=int(extra), cudagraph_bytes=0)


def fit_load() -> LoadTimes:
    runs = DATA["load_times"]["per_run"]
    size = np.array([MODEL.adapter_bytes(r["adapter_rank"]) for r in runs], dtype=float)
    disk = np.array([r["disk_mean_excl_first_s"] for r in runs])
    gpu = np.array([r["cpu_to_gpu_mean_after_init_ms"] / 1e3 for r in runs])
    d_slope, d0 = np.polyfit(size, disk, 1)
    g_slope, g0 = np.polyfit(size, gpu, 1)
    return LoadTimes(disk_latency_s=float(max(d0, 0.0)), disk_bytes_per_s=float(1 / d_slope),
                     cpu_to_gpu_latency_s=float(max(g0, 0.0)),
                     cpu_to_gpu_bytes_per_s=float(1 / g_slope) if g_slope > 0 else 1e12)


def published_steps() -> list[dict[str, object]]:
    """Decode steps measured by others on A100/H100 (bench/data/published_vllm.json, each
    with its source): the TPOT of a steady batch, which is the step time."""
    points = json.loads((ROOT / "bench/data/published_vllm.json").read_text())
    return [{"gpu": p["gpu"], "decode_seqs": float(p["conditions"]["batch_size"]),
             "context_tokens": float(p["conditions"]["context_tokens"]),
             "step_time_s": float(p["value"]), "source": p["id"]}
            for p in points if p["conditions"].get("twin_method") == "step"
            and not p.get("exclude_from_summary") and p["model"].lower().find("llama") >= 0]


def fit_roofline(samples: list[dict[str, float]], lora: LoRACoefficients) -> RooflineCoefficients:
    """Efficiencies that fit the reference's H100-64GB steps (decode sweep and 2048-token
    prefills) and the published A100/H100 decode steps equally: the mean relative error of
    each set, averaged."""
    engine = EngineConfig(enable_lora=False, max_num_seqs=2048, max_num_batched_tokens=2048)
    cols = {k: np.array([s[k] for s in samples]) for k in samples[0]}
    published = published_steps()
    best: tuple[float, RooflineCoefficients] | None = None
    grid = itertools.product(np.linspace(0.4, 0.9, 21), np.linspace(0.6, 1.0, 17),
                             np.linspace(0.0, 1.0, 6), np.linspace(0.0, 0.003, 7))
    for ce, be, ov, base in grid:
        c = RooflineCoefficients(compute_efficiency=float(ce), bandwidth_efficiency=float(be),
                                 overlap=float(ov), base_s=float(base), lora=lora)
        pred = RooflineStepTime(MODEL, GPU, engine, c).predict(
            cols["prefill_tokens"], cols["decode_seqs"], cols["context_tokens"],
            cols["distinct_adapters"])
        ref = float(np.mean(np.abs(pred - cols["step_time_s"]) / cols["step_time_s"]))
        errs = []
        for p in published:
            m = RooflineStepTime(MODEL, get_gpu(str(p["gpu"])), engine, c)
            t = m.predict(0.0, float(p["decode_seqs"]), float(p["context_tokens"]), 0.0)  # type: ignore[arg-type]
            errs.append(abs(t - float(p["step_time_s"])) / float(p["step_time_s"]))  # type: ignore[arg-type]
        err = (ref + float(np.mean(errs))) / 2 if errs else ref
        if best is None or err < best[0]:
            best = (err, c)
    assert best is not None
    return best[1]


def main() -> None:
    samples = decode_samples()
    linear = fit_linear(samples)
    memory = fit_memory()
    load = fit_load()
    source = {"hardware": "NVIDIA H100 64GB (MareNostrum 5), 63.43 GiB",
              "model": "meta-llama/Llama-3.1-8B-Instruct (bf16)",
              "vllm_version": "0.8.5 (V1 engine, reference fork)", "date": "2025",
              "citations": [SOURCE_REPO, "arXiv 2508.08343", "arXiv 2602.24044"],
              "fitted_by": "bench/fit_reference_profile.py"}
    h100 = CalibrationProfile(name="h100-64gb-llama-3.1-8b", kind="linear", source=source,
                              linear=linear, memory=memory, load=load,
                              request_overhead_s=0.0, samples=samples)
    roof = fit_roofline(samples, linear.lora)
    published = published_steps()
    default = CalibrationProfile(
        name="roofline-default", kind="roofline",
        source={"hardware": "any GPU of twin/catalog.py (datasheet FLOP/s and bandwidth)",
                "model": "Llama-3.1-8B class", "vllm_version": "0.5-0.21 (published) and "
                "0.8.5 (reference)", "date": "2026-11",
                "citations": [SOURCE_REPO, *sorted({str(p["source"]) for p in published}),
                              "bench/data/published_vllm.json (URLs and conditions)"],
                "note": "roofline efficiencies fitted jointly on the reference's H100-64GB "
                "steps and published A100/H100 decode steps; request_overhead_s is the "
                "median published-minus-twin TTFT of all-at-once runs (HTTP, tokenising)",
                "fitted_by": "bench/fit_reference_profile.py"},
        roofline=roof, memory=MemoryOverheads(), load=load,
        request_overhead_s=REQUEST_OVERHEAD_S)
    save_profile(h100, ROOT / "twin/profiles/h100-64gb-llama-3.1-8b.json")
    save_profile(default, ROOT / "twin/profiles/roofline-default.json")
    report(samples, h100, default)


def report(samples: list[dict[str, float]], h100: CalibrationProfile,
           default: CalibrationProfile) -> None:
    engine = EngineConfig(enable_lora=False, max_num_seqs=2048, max_num_batched_tokens=2048)
    lin = h100.step_model(MODEL, GPU, engine)
    roof = default.step_model(MODEL, GPU, engine)
    table = Table(title="Step time fit on the H100 reference (no LoRA)")
    for col in ("prefill", "decode", "measured ms", "linear ms", "roofline ms"):
        table.add_column(col, justify="right")
    rows = []
    for s in samples:
        args = (s["prefill_tokens"], s["decode_seqs"], s["context_tokens"], 0.0)
        a, b = lin.predict(*args), roof.predict(*args)
        rows.append({"measured_s": s["step_time_s"], "linear_s": a, "roofline_s": b})
        table.add_row(f"{s['prefill_tokens']:.0f}", f"{s['decode_seqs']:.0f}",
                      f"{s['step_time_s'] * 1e3:.2f}", f"{a * 1e3:.2f}", f"{b * 1e3:.2f}")
    Console().print(table)
    m = np.array([r["measured_s"] for r in rows])
    errs = {k: float(np.mean(np.abs(np.array([r[k] for r in rows]) - m) / m))
            for k in ("linear_s", "roofline_s")}
    print(f"mean relative error: linear {errs['linear_s']:.1%}, "
          f"roofline {errs['roofline_s']:.1%}; memory: {h100.memory}")
    out = ROOT / "bench/results"
    out.mkdir(exist_ok=True)
    (out / "profile_fit.json").write_text(json.dumps(
        {"rows": rows, "mean_relative_error": errs, "kv_fit_gib": {
            "lora_slot_extra_mib": h100.memory.lora_slot_extra_bytes / 2**20,
            "non_torch_gib": h100.memory.non_torch_bytes / GIB}}, indent=1) + "\n")


if __name__ == "__main__":
    main()
