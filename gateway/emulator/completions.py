"""``/v1/completions`` and ``/v1/chat/completions``, non-streaming and SSE streaming.

Shapes follow vLLM 0.32 (``entrypoints/openai/completion/serving.py``,
``entrypoints/openai/chat_completion/serving.py``): a streamed completion sends one chunk per
token (the last one carries ``finish_reason``), then, with ``stream_options.include_usage``,
a chunk with ``choices: []`` and ``usage``, then ``data: [DONE]``; a streamed chat sends a
first chunk with ``delta: {role: "assistant", content: ""}`` when the first token is ready.
A client that goes away (the handler is cancelled, or a write fails) aborts its request.
"""

from __future__ import annotations

import enum
import json
import logging
import time
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web

from gateway.emulator.errors import ApiError
from gateway.emulator.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    SamplingRequest,
    parse_body,
)
from gateway.emulator.service import EmulatedWorker
from gateway.emulator.text import count_tokens, filler, filler_token, render_chat
from gateway.server.keys import EMULATED_WORKER
from twin.events import EventKind

__all__ = ["chat_completions", "completions", "read_json"]

log = logging.getLogger(__name__)


class Api(enum.Enum):
    COMPLETION = "text_completion"
    CHAT = "chat.completion"


@dataclass(slots=True)
class _Job:
    api: Api
    rid: str
    model: str
    created: int
    prompt_tokens: int
    body: SamplingRequest


async def read_json(request: web.Request) -> object:
    """The JSON body; vLLM's 400 for another media type or invalid JSON."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise ApiError(HTTPStatus.BAD_REQUEST, HTTPStatus.BAD_REQUEST.phrase,
                       "1 validation error:\n  Unsupported Media Type: Only "
                       "'application/json' is allowed")
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError.bad_request(f"JSON decode error: {exc}") from None


def _prompt_tokens(prompt: str | list[int] | list[str] | list[list[int]]) -> int:
    if isinstance(prompt, str):
        return count_tokens(prompt)
    if prompt and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    if len(prompt) != 1:
        raise ApiError.bad_request("the emulated worker serves one prompt per request",
                                   param="prompt")
    only = prompt[0]
    if isinstance(only, str):
        return count_tokens(only)
    assert isinstance(only, list)
    return max(1, len(only))


async def completions(request: web.Request) -> web.StreamResponse:
    worker = request.app[EMULATED_WORKER]
    body = parse_body(CompletionRequest, await read_json(request))
    adapter = worker.resolve_model(body.model)
    prompt = _prompt_tokens(body.prompt)
    job = _Job(Api.COMPLETION, f"cmpl-{uuid.uuid4().hex}", body.model, int(time.time()),
               prompt, body)
    return await _serve(request, worker, job, adapter, body.max_tokens)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    worker = request.app[EMULATED_WORKER]
    body = parse_body(ChatCompletionRequest, await read_json(request))
    adapter = worker.resolve_model(body.model)
    rendered = render_chat({"role": m.role, "content": m.text()} for m in body.messages)
    job = _Job(Api.CHAT, f"chatcmpl-{uuid.uuid4().hex}", body.model, int(time.time()),
               count_tokens(rendered), body)
    requested = body.max_completion_tokens or body.max_tokens
    return await _serve(request, worker, job, adapter, requested)


async def _serve(request: web.Request, worker: EmulatedWorker, job: _Job,
                 adapter: str | None, requested: int | None) -> web.StreamResponse:
    max_tokens = worker.max_tokens_for(job.prompt_tokens, requested)
    handle = worker.driver.submit(adapter=adapter, prompt_tokens=job.prompt_tokens,
                                  max_tokens=max_tokens, stream=job.body.stream,
                                  request_id=job.rid)
    done = False
    try:
        if job.body.stream:
            try:
                response = await _stream(request, job, handle)
            except ConnectionResetError:
                # A write to a client that has gone: the request is aborted (below); the
                # prepared response is all there is to return, and nobody reads it.
                log.debug("client of %s went away mid-stream", job.rid)
                return web.StreamResponse()
        else:
            req = await handle.finished()
            response = web.json_response(_full_body(job, req.num_output_tokens,
                                                    str(req.finish_reason or "abort")),
                                         dumps=_dumps)
        done = True
        return response
    finally:
        if not done:  # cancelled (client gone) or failed: vLLM aborts the request
            worker.driver.abort(job.rid)


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt, "total_tokens": prompt + completion,
            "completion_tokens": completion, "prompt_tokens_details": None}


def _full_body(job: _Job, n: int, reason: str) -> dict[str, Any]:
    text = filler(n)
    choice: dict[str, Any]
    if job.api is Api.COMPLETION:
        choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason,
                  "stop_reason": None, "prompt_logprobs": None}
    else:
        choice = {"index": 0, "message": {"role": "assistant", "content": text,
                                          "refusal": None, "annotations": None,
                                          "audio": None, "function_call": None,
                                          "tool_calls": [], "reasoning": None},
                  "logprobs": None, "finish_reason": reason, "stop_reason": None}
    return {"id": job.rid, "object": job.api.value, "created": job.created,
            "model": job.model, "choices": [choice], "service_tier": None,
            "system_fingerprint": None, "usage": _usage(job.prompt_tokens, n),
            "prompt_logprobs": None, "kv_transfer_params": None}


def _chunk(job: _Job, choices: list[dict[str, Any]]) -> dict[str, Any]:
    obj = "text_completion" if job.api is Api.COMPLETION else "chat.completion.chunk"
    return {"id": job.rid, "object": obj, "created": job.created, "model": job.model,
            "choices": choices}


def _token_choice(job: _Job, i: int, finish: str | None) -> dict[str, Any]:
    if job.api is Api.COMPLETION:
        choice: dict[str, Any] = {"index": 0, "text": filler_token(i), "logprobs": None,
                                  "finish_reason": finish, "stop_reason": None,
                                  "prompt_token_ids": None, "token_ids": None}
        return choice
    choice = {"index": 0, "delta": {"content": filler_token(i)}, "logprobs": None,
              "finish_reason": finish}
    if finish is not None:
        choice["stop_reason"] = None
    return choice


def _dumps(data: object) -> str:
    return json.dumps(data, separators=(",", ":"))  # Starlette's JSONResponse is compact


async def _send(resp: web.StreamResponse, data: dict[str, Any]) -> None:
    await resp.write(b"data: " + _dumps(data).encode() + b"\n\n")


async def _stream(request: web.Request, job: _Job, handle: Any) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
    await resp.prepare(request)
    sent = 0
    while True:
        kind = await handle.next_event()
        if kind is EventKind.FINISHED:
            break
        if kind is EventKind.FIRST_TOKEN and job.api is Api.CHAT:
            await _send(resp, _chunk(job, [{"index": 0, "delta": {"role": "assistant",
                                                                  "content": ""},
                                            "logprobs": None, "finish_reason": None}]))
        last = sent + 1 >= handle.request.max_tokens
        chunk = _chunk(job, [_token_choice(job, sent, "length" if last else None)])
        sent += 1
        if job.body.continuous_usage:
            chunk["usage"] = _usage(job.prompt_tokens, sent)
        await _send(resp, chunk)
    if job.body.include_usage:
        usage = {"prompt_tokens": job.prompt_tokens, "total_tokens": job.prompt_tokens + sent,
                 "completion_tokens": sent}
        await _send(resp, {**_chunk(job, []), "usage": usage})
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp
