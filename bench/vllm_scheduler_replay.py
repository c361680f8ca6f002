"""vLLM 0.32's own ``Scheduler`` driven on a virtual clock, with no model (run in the vLLM venv).

The other half of ``bench/scheduler_lockstep.py``: it reads cases (engine options, arrivals,
linear step-time coefficients) from a JSON list, runs vLLM's ``v1/core/sched/scheduler.py``
``Scheduler`` as ``v1/engine/core.py`` ``EngineCore.step`` does on the CPU build (synchronous
scheduling: ``platforms/cpu.py`` turns ``async_scheduling`` off, so there is no batch queue):
requests that arrived by the start of a step are added, ``schedule()`` runs, the step takes the
time the coefficients give, every request whose scheduled tokens reach its token count samples
one token, and ``update_from_output()`` retires the finished ones before the next
``schedule()``. Prompts are distinct token runs and prefix caching is off (the twin does not
model it). Writes each case's steps and requests' times as a JSON list.

Imports only vLLM and the standard library, so it runs under ``LORAFLEET_VLLM_PYTHON``:
``.venv-vllm/bin/python bench/vllm_scheduler_replay.py CASES.json OUT.json``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def build_scheduler(engine: dict[str, Any], model_path: str) -> Any:
    """A ``Scheduler`` with the engine options of the case and ``num_blocks`` KV blocks."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from vllm.engine.arg_utils import EngineArgs
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.structured_output import StructuredOutputManager

    args = EngineArgs(model=model_path, enable_lora=True, max_loras=engine["max_loras"],
                      max_lora_rank=16, max_cpu_loras=max(engine["max_loras"], 4),
                      dtype="float32", max_model_len=engine["max_model_len"],
                      max_num_seqs=engine["max_num_seqs"],
                      max_num_batched_tokens=engine["max_num_batched_tokens"],
                      block_size=engine["block_size"], enable_prefix_caching=False)
    config = args.create_engine_config()
    assert not config.scheduler_config.async_scheduling  # the CPU build's setting
    blocks = engine["num_blocks"]
    config.cache_config.num_gpu_blocks = blocks
    spec = FullAttentionSpec(block_size=engine["block_size"], num_kv_heads=1, head_size=1,
                             dtype=torch.float32)
    kv = KVCacheConfig(num_blocks=blocks, kv_cache_tensors=[],
                       kv_cache_groups=[KVCacheGroupSpec(["layer"], spec)])
    return Scheduler(vllm_config=config, kv_cache_config=kv,
                     structured_output_manager=StructuredOutputManager(config),
                     block_size=engine["block_size"])


def replay(case: dict[str, Any]) -> dict[str, Any]:
    """Run the case; return its steps and requests."""
    from vllm.lora.request import LoRARequest
    from vllm.sampling_params import SamplingParams
    from vllm.v1.outputs import ModelRunnerOutput
    from vllm.v1.request import Request

    sched = build_scheduler(case["engine"], case["model_path"])
    base, per_prefill, per_decode, per_adapter = case["coefficients"]
    arrivals, end = case["arrivals"], case["end_ns"]
    lora_ids: dict[str, int] = {}
    out: dict[str, dict[str, Any]] = {}
    steps: list[list[Any]] = []
    now = nxt = 0
    while now < end:
        while nxt < len(arrivals) and arrivals[nxt][0] <= now:
            at, adapter, prompt, max_tokens = arrivals[nxt]
            lora = None
            if adapter is not None:
                lid = lora_ids.setdefault(adapter, len(lora_ids) + 1)
                lora = LoRARequest(adapter, lid, "/unused")
            rid = f"r{nxt}"
            first = nxt * prompt % 30000  # distinct prompts: no prefix is shared
            sched.add_request(Request(rid, list(range(first, first + prompt)),
                                      SamplingParams(max_tokens=max_tokens, ignore_eos=True),
                                      None, arrival_time=at / 1e9, lora_request=lora))
            out[rid] = {"adapter": adapter, "first_scheduled_ns": None, "first_token_ns": None,
                        "finish_ns": None, "output_tokens": 0, "max_tokens": max_tokens}
            nxt += 1
        if not sched.has_unfinished_requests():
            if nxt >= len(arrivals):
                break
            now = arrivals[nxt][0]
            continue
        so = sched.schedule()
        prefill = decode = 0
        loras: set[int] = set()
        for rid, n in so.num_scheduled_tokens.items():
            r = sched.requests[rid]
            # schedule() has already advanced num_computed_tokens by the scheduled tokens.
            if r.num_computed_tokens - n < r.num_prompt_tokens:
                prefill += n
            else:
                decode += 1
            if r.lora_request is not None:
                loras.add(r.lora_request.lora_int_id)
        for new in so.scheduled_new_reqs:
            if out[new.req_id]["first_scheduled_ns"] is None:
                out[new.req_id]["first_scheduled_ns"] = now
        if prefill + decode == 0:
            break  # nothing runnable: the twin raises here; report the stop
        seconds = base + per_prefill * float(prefill) + per_decode * float(decode) \
            + per_adapter * float(len(loras))
        duration = round(seconds * 1e9)
        steps.append([now, duration, prefill, decode, len(loras)])
        now += duration
        ids = list(so.num_scheduled_tokens)
        sampled = [[1] if sched.requests[rid].num_computed_tokens >= sched.requests[rid].num_tokens
                   else [] for rid in ids]
        for rid, tokens in zip(ids, sampled, strict=True):
            if tokens:
                o = out[rid]
                o["output_tokens"] += 1
                if o["first_token_ns"] is None:
                    o["first_token_ns"] = now
                if o["output_tokens"] >= o["max_tokens"]:
                    o["finish_ns"] = now
        sched.update_from_output(so, ModelRunnerOutput(
            req_ids=ids, req_id_to_index={rid: k for k, rid in enumerate(ids)},
            sampled_token_ids=sampled))
    return {"steps": steps, "requests": out}


def main() -> None:
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    import vllm

    results = [{**replay(case), "vllm_version": vllm.__version__} for case in cases]
    with open(sys.argv[2], "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
