"""A real vLLM server reports the options the gateway reads instead of ``worker_engine``
(gateway/fleet/worker_settings.py): ``--max-loras`` in ``vllm:lora_requests_info``,
``--max-model-len`` in ``/v1/models``, the block size and memory share in
``vllm:cache_config_info``."""

from __future__ import annotations

import aiohttp
import pytest

from gateway.fleet.worker_settings import fetch_settings

from .server import ENGINE_ARGS, RealVllm

pytestmark = pytest.mark.real_vllm


def _flag(name: str) -> str:
    return ENGINE_ARGS[ENGINE_ARGS.index(name) + 1]


async def test_real_vllm_reports_its_options(real_vllm: RealVllm) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{real_vllm.base_url}/v1/completions", json={
                "model": real_vllm.model, "prompt": "hi", "max_tokens": 2},
                timeout=aiohttp.ClientTimeout(total=120)) as resp:
            assert resp.status == 200  # vLLM reports max_lora once it has run a request
        got = await fetch_settings(session, real_vllm.base_url, real_vllm.model, 30.0)
    assert got is not None
    assert got.max_loras == int(_flag("--max-loras"))
    assert got.max_model_len == int(_flag("--max-model-len"))
    assert got.block_size is not None and got.block_size > 0
    assert got.gpu_memory_utilization is not None and 0 < got.gpu_memory_utilization <= 1
