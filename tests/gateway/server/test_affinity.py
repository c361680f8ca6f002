"""Prefix affinity and the overload bound at the gateway: requests whose prompts start alike
stay on one holder of the adapter; short prompts follow the plan's shares as before; when every
healthy holder has ``max_outstanding_per_worker`` requests in flight the answer is OpenAI's 429.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI

from gateway.server.keys import FLEET
from gateway.server.proxy import prefix_key
from tests.gateway.server.factories import Stack, demands, gateway_stack

SYSTEM = "You are a careful assistant that answers questions about SQL databases. " * 4
EVEN = [{"chat": 0.5}, {"chat": 0.5}]


def test_prefix_key_hashes_the_start_of_the_prompt_or_the_messages() -> None:
    long = SYSTEM + "What is a join?"
    assert prefix_key({"prompt": long}, 256) == prefix_key({"prompt": long + " More."}, 256)
    assert prefix_key({"prompt": long}, 256) != prefix_key({"prompt": "x" + long}, 256)
    assert prefix_key({"prompt": [long, "other"]}, 256) == prefix_key({"prompt": long}, 256)
    assert prefix_key({"prompt": "short prompt"}, 256) is None  # under one KV block
    assert prefix_key({"prompt": long}, 0) is None  # affinity off
    ids = list(range(100))
    assert prefix_key({"prompt": ids}, 256) == prefix_key({"prompt": [*ids, 7]}, 256)
    assert prefix_key({"prompt": ids[:8]}, 256) is None
    assert prefix_key({"prompt": [ids]}, 256) == prefix_key({"prompt": ids}, 256)
    chat = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Tell me about the history of relational databases "
                                        "and the people who built them."}]
    key = prefix_key({"messages": chat}, 256)
    assert key is not None
    follow_up = [*chat, {"role": "assistant", "content": "Codd..."},
                 {"role": "user", "content": "And then?"}]
    assert prefix_key({"messages": follow_up}, 256) == key  # the same conversation
    parts = [chat[0], {"role": "user", "content": [{"type": "text",
                                                    "text": chat[1]["content"]}]}]
    assert prefix_key({"messages": parts}, 256) == key
    other = [chat[0], {"role": "user", "content": "Something else entirely, at some length "
                                                  "so that it fills a block."}]
    assert prefix_key({"messages": other}, 256) != key


async def _serve(s: Stack, prompts: list[str], model: str = "chat") -> list[float]:
    async with AsyncOpenAI(base_url=s.v1, api_key="x", max_retries=0) as client:
        for prompt in prompts:
            await client.completions.create(model=model, prompt=prompt, max_tokens=1)
    return await s.served()


async def test_same_prefix_stays_on_one_replica(tmp_path: Path) -> None:
    async with gateway_stack(tmp_path, demands("chat"), workers=2, shares=EVEN) as s:
        served = await _serve(s, [SYSTEM + f"Question {k}?" for k in range(6)])
        assert sorted(served) == [0, 6]
        # different prefixes are spread over both holders (by their shares)
        served = await _serve(s, [f"Conversation {k}: " + SYSTEM for k in range(24)])
        assert min(served) >= 6


async def test_chat_conversation_stays_on_one_replica(tmp_path: Path) -> None:
    async with gateway_stack(tmp_path, demands("chat"), workers=2, shares=EVEN) as s:
        history: list[Any] = [{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": SYSTEM}]
        async with AsyncOpenAI(base_url=s.v1, api_key="x", max_retries=0) as client:
            for turn in range(5):
                await client.chat.completions.create(model="chat", messages=history,
                                                     max_tokens=1)
                history += [{"role": "assistant", "content": "ok"},
                            {"role": "user", "content": f"turn {turn}"}]
        assert sorted(await s.served()) == [0, 5]


async def test_short_prompts_and_affinity_off_follow_the_shares(tmp_path: Path) -> None:
    async with gateway_stack(tmp_path, demands("chat"), workers=2, shares=EVEN,
                             prefix_affinity_chars=0) as s:
        assert await _serve(s, [SYSTEM] * 6) == [3, 3]
    async with gateway_stack(tmp_path / "short", demands("chat"), workers=2,
                             shares=EVEN) as s:
        assert await _serve(s, ["short prompt"] * 6) == [3, 3]


async def test_overload_answers_429_with_retry_after(tmp_path: Path) -> None:
    async with gateway_stack(tmp_path, demands("chat"), workers=2, shares=EVEN,
                             time_scale=1.0, max_outstanding_per_worker=1,
                             retry_after_s=2) as s:
        fleet = s.app[FLEET]
        async with AsyncOpenAI(base_url=s.v1, api_key="x", max_retries=0,
                               timeout=30) as client:
            busy = [asyncio.create_task(client.completions.create(
                model="chat", prompt=f"q{k}", max_tokens=64)) for k in range(2)]
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while [fleet.outstanding(i) for i in range(2)] != [1, 1]:
                assert loop.time() < deadline
                await asyncio.sleep(0.01)
            with pytest.raises(openai.RateLimitError) as caught:
                await client.completions.create(model="chat", prompt="q", max_tokens=1)
            done = await asyncio.gather(*busy)
            assert all(d.usage is not None and d.usage.completion_tokens == 64 for d in done)
            again = await client.completions.create(model="chat", prompt="q", max_tokens=1)
        error = caught.value
        assert error.status_code == 429
        assert error.response.headers["Retry-After"] == "2"
        body = error.response.json()["error"]
        assert body["code"] == "rate_limit_exceeded" and body["type"] == "requests"
        assert again.choices and [fleet.outstanding(i) for i in range(2)] == [0, 0]
        assert fleet.inflight == {}
