"""How ``bench/roofline_check.py`` predicts a published vLLM figure with the twin: a decode
step straight from the profile's step model (``step``), an all-at-once burst replayed through
``simulate`` (``burst``), or a closed loop of ``C`` requests driven on the ``EngineCore``
(``closed_loop``); see that script's docstring for the methods and their limits."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

import twin
from twin.events import EventKind
from twin.simulation import build_engine

PROFILE = "roofline-default"

# Qwen2.5-7B-Instruct's config.json (a 7B-class comparison point, not a Llama): 28 layers,
# hidden 3584, 28 heads / 4 KV heads of 128, intermediate 18944, vocab 152064, 7.62B params.
QWEN25_7B = twin.ModelSpec(name="qwen2.5-7b", num_layers=28, hidden_size=3584,
                           num_attention_heads=28, num_kv_heads=4, head_dim=128,
                           intermediate_size=18944, vocab_size=152064,
                           num_params=7_615_616_512)


def model_for(point: dict[str, Any]) -> twin.ModelSpec:
    return QWEN25_7B if point["model"].startswith("Qwen/Qwen2.5-7B") else twin.get_model(
        "llama-3.1-8b")


def with_factors(profile: twin.CalibrationProfile, compute: float, bandwidth: float,
                 base_s: float) -> twin.CalibrationProfile:
    assert profile.roofline is not None
    return replace(profile, roofline=replace(profile.roofline, compute_efficiency=compute,
                                             bandwidth_efficiency=bandwidth, base_s=base_s))


def engine_options(cond: dict[str, Any]) -> dict[str, Any]:
    """The published run's engine options that the twin models (others: vLLM defaults)."""
    opts: dict[str, Any] = {"enable_lora": False}
    for key in ("max_num_seqs", "max_num_batched_tokens", "max_model_len",
                "gpu_memory_utilization", "enable_chunked_prefill"):
        value = cond.get(key)
        if isinstance(value, bool | int | float):  # "default" (a string) means vLLM's
            opts[key] = value
    return opts


# -- the three ways of predicting a figure --------------------------------------------------


def predict_step(point: dict[str, Any], profile: twin.CalibrationProfile) -> float:
    cond = point["conditions"]
    model = model_for(point)
    gpu = twin.get_gpu(point["gpu"])
    step = profile.step_model(model, gpu, twin.EngineConfig(enable_lora=False))
    return float(step.predict(0.0, float(cond["batch_size"]), float(cond["context_tokens"]), 0.0))


def run_burst(point: dict[str, Any], profile: twin.CalibrationProfile,
              workdir: Path) -> dict[str, float]:
    """Replay an all-at-once run through ``parse_scenario`` + ``simulate``."""
    cond = point["conditions"]
    trace = workdir / f"{point['id']}.jsonl"
    trace.write_text("".join(
        json.dumps({"timestamp": 0.0, "adapter": None, "input_tokens": i, "output_tokens": o})
        + "\n" for i, o in zip(cond["input_lens"], cond["output_lens"], strict=True)))
    model = model_for(point)
    scenario = twin.parse_scenario({
        "name": point["id"],
        "model": model.name if model.name in twin.MODELS else {
            f: getattr(model, f) for f in model.__dataclass_fields__},
        "gpu": point["gpu"], "profile": PROFILE, "engine": engine_options(cond),
        "adapters": [{"name": "base", "rank": 0, "rate": 0.0}],
        "arrivals": {"trace": str(trace)}, "duration_s": 3600.0, "seed": 0})
    scenario = replace(scenario, profile=profile)
    _, engine = twin.simulate(scenario)
    times = []  # (arrival, first token, finish, output tokens) of every request
    for r in engine.requests.values():
        assert r.first_token_ns is not None and r.finish_ns is not None, "run did not finish"
        times.append((r.arrival_ns, r.first_token_ns, r.finish_ns, r.max_tokens))
    ttft = [(first - arrival) / 1e9 for arrival, first, _, _ in times]
    tpot = [(finish - first) / 1e9 / (out - 1) for _, first, finish, out in times if out > 1]
    end = max(finish for _, _, finish, _ in times) / 1e9
    return {"ttft_mean": statistics.fmean(ttft), "tpot_median": float(np.median(tpot)),
            "output_tps": sum(t[3] for t in times) / end, "rps": len(times) / end}


def run_closed_loop(point: dict[str, Any], profile: twin.CalibrationProfile) -> dict[str, float]:
    """``--max-concurrency C``: keep C requests in flight until N have been sent."""
    cond = point["conditions"]
    model = model_for(point)
    gpu = twin.get_gpu(point["gpu"])
    config = twin.default_engine_for(gpu, **engine_options(cond))
    engine, _ = build_engine(model, gpu, config, profile, {})
    n, c = int(cond["num_prompts"]), int(cond["max_concurrency"])
    p, o = int(cond["input_tokens"]), int(cond["output_tokens"])
    sent = done = 0
    last_ns = 0

    def send(at_ns: int) -> None:
        nonlocal sent
        engine.add_request(twin.Request(f"r{sent}", None, p, o, at_ns))
        sent += 1

    for _ in range(min(c, n)):
        send(0)
    while done < n:
        engine.step_run(math.inf)
        for event in engine.take_events():
            if event.kind is EventKind.FINISHED:
                done += 1
                last_ns = max(last_ns, event.time_ns)
                if sent < n:
                    send(event.time_ns)
    return {"rps": n / (last_ns / 1e9), "output_tps": n * o / (last_ns / 1e9)}


def predict(point: dict[str, Any], profile: twin.CalibrationProfile, workdir: Path,
            cache: dict[tuple[str, int], dict[str, float]]) -> float:
    """The twin's value of ``point['metric']`` under ``profile``."""
    method = point["conditions"]["twin_method"]
    metric = point["metric"]
    if method == "step":
        return predict_step(point, profile)
    # Points from the same run share one simulation (same lengths, same GPU, same profile).
    key = (json.dumps([point["gpu"], point["model"], point["conditions"].get("input_lens"),
                       point["conditions"].get("output_lens"),
                       point["conditions"].get("input_tokens"),
                       point["conditions"].get("max_concurrency")]), id(profile))
    if key not in cache:
        cache[key] = (run_burst(point, profile, workdir) if method == "burst"
                      else run_closed_loop(point, profile))
    sim = cache[key]
    if metric == "ttft_s":  # the published TTFTs of burst runs are means
        return sim["ttft_mean"]
    if metric == "tpot_s":  # ... and their TPOTs medians
        return sim["tpot_median"]
    if metric == "throughput_tok_s":
        return sim["output_tps"]
    if metric == "throughput_req_s":
        return sim["rps"]
    raise ValueError(f"unknown metric {metric!r}")
