"""Builders for twin tests (vLLM's tests/v1/core/utils.py style)."""

from __future__ import annotations

import itertools

from twin.engine import EngineCore
from twin.request import Request
from twin.specs import EngineConfig
from twin.step_time import LinearCoefficients, LinearStepTime

_ids = itertools.count()

STEP_S = 0.010
PER_TOKEN_S = 1e-5


def make_engine(*, num_blocks: int = 1000, load_ns: int = 0, fast_path: bool = True,
                record_steps: bool = True, request_stall_ns: int = 0,
                **engine: object) -> EngineCore:
    """An engine with a simple linear step time: 10 ms + 10 us per token."""
    defaults: dict[str, object] = {"max_num_seqs": 8, "max_num_batched_tokens": 64,
                                   "max_loras": 2, "max_cpu_loras": 4, "block_size": 4,
                                   "max_model_len": 256}
    defaults.update(engine)
    cfg = EngineConfig(**defaults)  # type: ignore[arg-type]
    model = LinearStepTime(LinearCoefficients(base_s=STEP_S, per_token_s=PER_TOKEN_S), cfg)
    return EngineCore(cfg, model, num_blocks, lora_load_ns=lambda _i, _t: load_ns,
                      fast_path=fast_path, record_steps=record_steps, track_deferred=True,
                      request_stall_ns=request_stall_ns)


def make_request(adapter: str | None = None, prompt: int = 8, max_tokens: int = 4,
                 arrival_ns: int = 0, *, stream: bool = False) -> Request:
    return Request(f"req-{next(_ids)}", adapter, prompt, max_tokens, arrival_ns, stream=stream)


def run_to_completion(engine: EngineCore, limit_ns: int = 10**13) -> None:
    engine.advance_until(limit_ns)
    assert not engine.has_unfinished_requests
