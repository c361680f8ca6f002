"""``/metrics`` from a live scrape: vLLM's names, labels, buckets; disconnect aborts."""

from __future__ import annotations

import asyncio
import contextlib
import json

import aiohttp
import pytest
from openai import OpenAI
from yarl import URL

from tests.contract.helpers import scrape, wait_for_gauge
from tests.contract.target import Target

TTFT = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
        10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
ITL = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
       20.0, 40.0, 80.0]
LATENCY = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
           120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]


def _buckets(samples: list, name: str) -> list[float]:  # type: ignore[type-arg]
    return [float(s.labels["le"]) for s in samples
            if s.name == f"{name}_bucket" and s.labels["le"] != "+Inf"]


async def test_names_labels_and_buckets(target: Target, client: OpenAI) -> None:
    client.completions.create(model=target.model, prompt="warm up", max_tokens=3)
    families = await scrape(target.base_url)
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting",
                 "vllm:kv_cache_usage_perc", "vllm:num_preemptions", "vllm:prompt_tokens",
                 "vllm:generation_tokens", "vllm:request_success",
                 "vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
                 "vllm:e2e_request_latency_seconds", "vllm:request_queue_time_seconds",
                 "vllm:num_requests_waiting_by_reason", "vllm:lora_requests_info"):
        assert name in families, name
    running = families["vllm:num_requests_running"][0]
    assert set(running.labels) == {"model_name", "engine"}
    assert running.labels["model_name"] == target.model
    reasons = {s.labels["reason"] for s in families["vllm:num_requests_waiting_by_reason"]}
    assert reasons == {"capacity", "deferred"}
    assert {s.name for s in families["vllm:prompt_tokens"]} >= {"vllm:prompt_tokens_total"}
    assert _buckets(families["vllm:time_to_first_token_seconds"],
                    "vllm:time_to_first_token_seconds") == TTFT
    assert _buckets(families["vllm:inter_token_latency_seconds"],
                    "vllm:inter_token_latency_seconds") == ITL
    assert _buckets(families["vllm:e2e_request_latency_seconds"],
                    "vllm:e2e_request_latency_seconds") == LATENCY
    info = families["vllm:lora_requests_info"]
    assert all(set(s.labels) == {"max_lora", "waiting_lora_adapters", "running_lora_adapters"}
               for s in info)
    assert max(s.value for s in info) > 1.6e9  # a Unix timestamp, vLLM's quirk


async def test_token_counters_follow_usage(target: Target, client: OpenAI) -> None:
    def total(fams: dict, name: str) -> float:  # type: ignore[type-arg]
        return float(sum(s.value for s in fams[name] if s.name == f"{name}_total"))

    before = await scrape(target.base_url)
    out = client.completions.create(model=target.model, prompt="count these tokens please",
                                    max_tokens=7, extra_body={"ignore_eos": True})
    after = await scrape(target.base_url)
    assert out.usage is not None
    assert (total(after, "vllm:generation_tokens") - total(before, "vllm:generation_tokens")
            >= 7)
    assert (total(after, "vllm:prompt_tokens") - total(before, "vllm:prompt_tokens")
            >= out.usage.prompt_tokens)


async def counter(base: str, name: str) -> float:
    families = await scrape(base)
    return sum(s.value for s in families[name] if s.name.endswith("_total"))


async def success(base: str) -> dict[str, float]:
    families = await scrape(base)
    return {s.labels["finished_reason"]: s.value for s in families["vllm:request_success"]
            if s.name.endswith("_total")}


async def test_disconnect_aborts_the_request(target: Target) -> None:
    body = {"model": target.model, "prompt": "a long answer please",
            "max_tokens": target.max_model_len - 32, "stream": True, "ignore_eos": True}
    before = await counter(target.base_url, "vllm:generation_tokens")
    finished_before = await success(target.base_url)
    # A raw HTTP/1.1 client, so that closing is closing the socket at once (aiohttp's
    # response close can lag behind a fast server).
    url = URL(target.base_url)
    reader, writer = await asyncio.open_connection(url.host, url.port)
    payload = json.dumps(body).encode()
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                 b"\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
    await writer.drain()
    status = await reader.readline()
    assert b" 200 " in status
    seen = 0
    while seen < 3:
        line = await asyncio.wait_for(reader.readline(), 30)
        assert line, "stream ended early"
        seen += line.startswith(b"data: {")
    writer.transport.abort()  # drop the connection mid-stream
    assert await wait_for_gauge(target.base_url, "vllm:num_requests_running", 0.0) == 0.0
    after = await counter(target.base_url, "vllm:generation_tokens")
    if not target.emulated and after - before >= body["max_tokens"]:
        # The tiny real model writes 480 tokens in about a second; on a loaded machine it can
        # finish before the server notices the closed socket.
        pytest.skip("the request finished before its disconnect was noticed")
    # Aborted early: it did not generate its max_tokens; and like vLLM 0.32 the abort is not
    # counted as a finished request (output_processor.py abort_requests records no stats).
    assert after - before < body["max_tokens"] - 16
    assert await success(target.base_url) == finished_before


async def test_disconnect_non_streaming_aborts(target: Target) -> None:
    body = {"model": target.model, "prompt": "x", "max_tokens": target.max_model_len - 32,
            "ignore_eos": True}
    async with aiohttp.ClientSession() as s:
        task = asyncio.create_task(s.post(target.base_url + "/v1/completions", json=body))
        seen = await wait_for_gauge(target.base_url, "vllm:num_requests_running", 1.0)
        if seen != 1.0 and task.done() and not target.emulated:
            # The tiny real model answers 480 tokens in about a second: too fast to catch.
            pytest.skip("the request finished before its disconnect could be observed")
        assert seen == 1.0
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert await wait_for_gauge(target.base_url, "vllm:num_requests_running", 0.0) == 0.0
