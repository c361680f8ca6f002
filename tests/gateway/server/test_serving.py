"""The serving path with the official ``openai`` client: completions and chat, streaming and
not, usage kept or stripped, ``/v1/models``, ``/ready`` and ``/metrics``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest
from openai import AsyncOpenAI

from tests.gateway.server.factories import BASE, Stack, demands, gateway_stack


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async with gateway_stack(tmp_path, demands("sql", "chat", "code"), workers=2) as s:
        yield s


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=stack.v1, api_key="unused", max_retries=0,
                           timeout=20) as c:
        yield c


async def test_completion_and_chat(client: AsyncOpenAI) -> None:
    done = await client.completions.create(model="sql", prompt="Hello there", max_tokens=5)
    assert done.model == "sql" and done.choices[0].finish_reason == "length"
    assert done.usage is not None and done.usage.completion_tokens == 5
    chat = await client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert chat.choices[0].message.content and chat.usage is not None
    assert chat.usage.completion_tokens == 4
    base = await client.completions.create(model=BASE, prompt="x", max_tokens=2)
    assert base.model == BASE


async def test_stream_strips_usage_unless_asked(client: AsyncOpenAI) -> None:
    chunks = [c async for c in await client.completions.create(
        model="code", prompt="hi", max_tokens=6, stream=True)]
    assert len(chunks) == 6 and all(c.choices and c.usage is None for c in chunks)
    chunks = [c async for c in await client.completions.create(
        model="code", prompt="hi", max_tokens=6, stream=True,
        stream_options={"include_usage": True})]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 6


async def test_chat_stream(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hi"}], max_tokens=3, stream=True)
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks).strip()
    assert all(c.usage is None for c in chunks)


async def test_unknown_model_is_404(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await client.completions.create(model="nope", prompt="x", max_tokens=1)
    assert info.value.body["param"] == "model"  # type: ignore[index]


async def test_bad_field_is_400(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.completions.create(model="sql", prompt="x", max_tokens=0)
    assert info.value.body["param"] == "max_tokens"  # type: ignore[index]


async def test_models_lists_base_and_adapters(client: AsyncOpenAI) -> None:
    cards = {m.id: m for m in (await client.models.list()).data}
    assert set(cards) == {BASE, "sql", "chat", "code"}
    assert cards[BASE].model_extra["parent"] is None  # type: ignore[index]
    assert cards["sql"].model_extra["parent"] == BASE  # type: ignore[index]
    assert cards["sql"].model_extra["root"].endswith("sql")  # type: ignore[index]


async def test_ready_health_and_metrics(stack: Stack, client: AsyncOpenAI) -> None:
    async with stack.session.get(f"{stack.url}/health") as resp:
        assert resp.status == 200
    async with stack.session.get(f"{stack.url}/ready") as resp:
        assert resp.status == 200 and (await resp.json())["workers_up"] == 2
    stream = await client.completions.create(model="sql", prompt="x", max_tokens=3,
                                             stream=True)
    _ = [c async for c in stream]
    async with stack.session.get(f"{stack.url}/metrics") as resp:
        text = await resp.text()
    for line in ('lorafleet_requests_total{adapter="sql",status="200"} 1.0',
                 'lorafleet_tokens_total{adapter="sql",kind="completion"} 3.0',
                 'lorafleet_ttft_seconds_count{adapter="sql"} 1.0',
                 'lorafleet_e2e_seconds_count{adapter="sql"} 1.0',
                 'lorafleet_worker_outstanding{worker="w0"} 0.0',
                 'lorafleet_worker_state{state="up",worker="w1"} 1.0',
                 'lorafleet_worker_state{state="down",worker="w1"} 0.0',
                 "lorafleet_gpus_running 2.0",
                 "lorafleet_gpus_planned 2.0",
                 'lorafleet_gpus_baseline{policy="one_per_adapter"} 3.0',
                 'lorafleet_gpu_seconds_saved_total{policy="one_per_adapter"} '):
        assert line in text, line


async def test_request_id_kept_or_made(stack: Stack) -> None:
    body = {"model": "sql", "prompt": "x", "max_tokens": 1}
    async with stack.session.post(f"{stack.v1}/completions", json=body,
                                  headers={"X-Request-Id": "abc-123"}) as resp:
        assert resp.status == 200 and resp.headers["X-Request-Id"] == "abc-123"
    async with stack.session.post(f"{stack.v1}/completions", json=body) as resp:
        assert len(resp.headers["X-Request-Id"]) == 32


async def test_unknown_fields_pass_through(stack: Stack) -> None:
    body = {"model": "sql", "prompt": "x", "max_tokens": 2, "ignore_eos": True,
            "some_vendor_field": {"a": 1}}
    async with stack.session.post(f"{stack.v1}/completions", json=body) as resp:
        assert resp.status == 200
        assert (await resp.json())["usage"]["completion_tokens"] == 2
