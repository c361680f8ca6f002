"""Completions and chat over the official ``openai`` client: shapes, usage, streaming."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

from tests.contract.target import Target

# ignore_eos: a real model may stop early at EOS; the emulator always runs to max_tokens.
EXTRA = {"ignore_eos": True}


def test_completion_usage_and_finish_reason(client: OpenAI, target: Target) -> None:
    out = client.completions.create(model=target.model, prompt="Hello tiny world",
                                    max_tokens=5, temperature=0.0, extra_body=EXTRA)
    assert out.object == "text_completion" and out.id.startswith("cmpl-")
    assert out.model == target.model
    assert len(out.choices) == 1 and out.choices[0].finish_reason == "length"
    assert out.choices[0].text
    usage = out.usage
    assert usage is not None and usage.completion_tokens == 5 and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + 5


def test_completion_defaults_to_16_tokens(client: OpenAI, target: Target) -> None:
    out = client.completions.create(model=target.model, prompt="Hi", extra_body=EXTRA)
    assert out.usage is not None and out.usage.completion_tokens == 16


def test_completion_stream_one_chunk_per_token(client: OpenAI, target: Target) -> None:
    stream = client.completions.create(model=target.model, prompt="Count with me", max_tokens=6,
                                       stream=True, stream_options={"include_usage": True},
                                       extra_body=EXTRA)
    chunks = list(stream)
    token_chunks = [c for c in chunks if c.choices]
    assert len(token_chunks) == 6
    assert [c.choices[0].finish_reason for c in token_chunks] == [None] * 5 + ["length"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 6
    assert last.usage.total_tokens == last.usage.prompt_tokens + 6


def test_stream_without_usage_has_no_usage_chunk(client: OpenAI, target: Target) -> None:
    chunks = list(client.completions.create(model=target.model, prompt="x", max_tokens=3,
                                            stream=True, extra_body=EXTRA))
    assert len(chunks) == 3 and all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_chat_completion(client: OpenAI, target: Target) -> None:
    out = client.chat.completions.create(
        model=target.model, messages=[{"role": "user", "content": "Say hi"}], max_tokens=4,
        extra_body=EXTRA)
    assert out.object == "chat.completion" and out.id.startswith("chatcmpl-")
    msg = out.choices[0].message
    assert msg.role == "assistant" and msg.content
    assert out.choices[0].finish_reason == "length"
    assert out.usage is not None and out.usage.completion_tokens == 4


def test_chat_prompt_tokens_grow_with_messages(client: OpenAI, target: Target) -> None:
    short = client.chat.completions.create(
        model=target.model, messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
    long = client.chat.completions.create(
        model=target.model, max_tokens=1,
        messages=[{"role": "system", "content": "You are terse. " * 20},
                  {"role": "user", "content": "Hi"}])
    assert short.usage is not None and long.usage is not None
    assert long.usage.prompt_tokens > short.usage.prompt_tokens + 20


def test_chat_stream_role_first_then_tokens(client: OpenAI, target: Target) -> None:
    chunks = list(client.chat.completions.create(
        model=target.model, messages=[{"role": "user", "content": "Go"}], max_tokens=3,
        stream=True, stream_options={"include_usage": True}, extra_body=EXTRA))
    assert chunks[0].object == "chat.completion.chunk"
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c for c in chunks[1:] if c.choices and c.choices[0].delta.content]
    # One chunk per token; a real byte-level tokenizer holds back incomplete UTF-8 bytes, so
    # vLLM may merge tokens into fewer chunks.
    assert len(content) == 3 if target.emulated else 1 <= len(content) <= 3
    assert content[-1].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 3


def test_static_adapter_serves(client: OpenAI, target: Target) -> None:
    if not target.emulated:
        pytest.skip("the static adapter is the emulated worker's --lora-modules")
    out = client.completions.create(model="static", prompt="Hi", max_tokens=2)
    assert out.model == "static" and out.usage is not None
    assert out.usage.completion_tokens == 2


@pytest.mark.parametrize("api", ["completions", "chat"])
def test_unknown_model_is_404(client: OpenAI, target: Target, api: str) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        if api == "completions":
            client.completions.create(model="no-such-model", prompt="x", max_tokens=1)
        else:
            client.chat.completions.create(model="no-such-model", max_tokens=1,
                                           messages=[{"role": "user", "content": "x"}])
    body = info.value.body
    assert isinstance(body, dict)
    assert body["type"] == "NotFoundError" and body["param"] == "model"
    assert body["message"] == (f"The model `no-such-model` does not exist. Valid aliases: "
                               f"{target.model}.")


def test_prompt_longer_than_max_model_len_is_400(client: OpenAI, target: Target) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=target.model, prompt=list(range(target.max_model_len
                                                                         + 10)),
                                  max_tokens=1)
    body = info.value.body
    assert isinstance(body, dict)
    n = target.max_model_len + 10
    assert body["message"] == (
        f"This model's maximum context length is {target.max_model_len} tokens. However, your "
        f"prompt contains {n} input tokens, which exceeds this limit even without any output "
        f"tokens. Please reduce the length of the input prompt. (parameter=input_tokens, "
        f"value={n})")
    assert body["type"] == "BadRequestError" and body["param"] == "input_tokens"


def test_max_tokens_above_max_model_len_is_400(client: OpenAI, target: Target) -> None:
    n = target.max_model_len + 1
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=target.model, prompt="x", max_tokens=n)
    body = info.value.body
    assert isinstance(body, dict)
    assert body["message"] == (f"max_tokens={n} cannot be greater than max_model_len="
                               f"{target.max_model_len}. Please request fewer output tokens. "
                               f"(parameter=max_tokens, value={n})")
    assert body["param"] == "max_tokens"


def test_prompt_filling_max_model_len_leaves_no_output_is_400(client: OpenAI,
                                                             target: Target) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=target.model, prompt=list(range(target.max_model_len)),
                                  max_tokens=5)
    body = info.value.body
    assert isinstance(body, dict)
    assert body["message"] == ("max_tokens must be at least 1, got 0. (parameter=max_tokens, "
                               "value=0)")


def test_max_tokens_clamped_to_what_max_model_len_leaves(client: OpenAI,
                                                         target: Target) -> None:
    prompt = list(range(target.max_model_len - 3))
    out = client.completions.create(model=target.model, prompt=prompt, max_tokens=50,
                                    extra_body=EXTRA)
    assert out.usage is not None and out.usage.completion_tokens == 3
