"""Forwarding one request to a worker.

- The worker is picked by the fleet's router. A connection that fails before the response
  starts, or a 404 naming ``model`` from a worker that no longer holds the adapter, is retried
  once on another holder; a worker that refuses connections is marked down.
- Requests whose prompts start alike carry a prefix key (``prefix_key``: a digest of the
  first ``prefix_affinity_chars`` characters of the prompt, or of the chat messages up to the
  first user message),
  so the router keeps them on one replica, where vLLM has their prefix cached. When every
  healthy holder has ``max_outstanding_per_worker`` requests in flight, the answer is a 429.
- Streams are relayed event by event as they arrive (no buffering past an SSE event
  boundary). Upstream is always asked for ``stream_options.include_usage``; the final usage
  chunk feeds the token metrics and is dropped if the client did not ask for it.
- A client that goes away cancels the handler (the server runs with handler cancellation) or
  fails a write; either way the upstream connection is closed, which aborts the request on a
  vLLM worker.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway.errors import ApiError
from gateway.fleet.metrics import UNKNOWN
from gateway.fleet.registry import WorkerState, WorkerStatus
from gateway.fleet.upstream import (
    ConnectFailed,
    Disconnected,
    ReadTimeout,
    UpstreamError,
    UpstreamResponse,
)
from gateway.server.errors import request_id, restyled
from gateway.server.keys import (
    CONTROL,
    FLEET,
    GATEWAY_CONFIG,
    GATEWAY_METRICS,
    GUARD,
    OBSERVER,
    UPSTREAM_POOL,
    UPSTREAM_WORKER,
)
from gateway.server.protocol import SamplingRequest

__all__ = ["forward"]

logger = logging.getLogger(__name__)

CLIENT_CLOSED = 499  # nginx's status for a client that closed the request
MIN_PREFIX_CHARS = 64  # ~16 tokens, one KV block: vLLM caches no shorter prefix


@dataclass(slots=True)
class _Call:
    request: web.Request
    path: str
    payload: bytes
    adapter: str | None
    label: str
    stream: bool
    client_usage: bool
    started: float
    rid: str
    prefix_key: int | None = None
    worker: str = ""
    state: WorkerState | None = None  # the worker's, once picked (its ``answered_at``)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft: float | None = None
    guard_key: int = -1  # its key in the starvation guard, once sent to a worker


def _prefix(body: dict[str, Any], chars: int) -> bytes | None:
    """The start of the prompt, or of the chat messages up to the first user message (role
    markers standing in for the chat template: later turns of a conversation keep its key):
    ``chars`` characters (token ids: ``chars / 4``), no tokenization; None when shorter than
    one KV block."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch: its first prompt
    if isinstance(prompt, list):  # token ids, about 4 characters a token
        ids = prompt[:max(1, chars // 4)]
        enough = len(ids) >= min(chars, MIN_PREFIX_CHARS) // 4
        return ",".join(str(t) for t in ids).encode() if enough else None
    if isinstance(prompt, str):
        text = prompt[:chars]
    else:
        parts: list[str] = []
        size = 0
        for message in body.get("messages") or ():
            if size >= chars or not isinstance(message, dict):
                break
            content = message.get("content")
            if isinstance(content, list):  # content parts: their text
                content = "".join(p.get("text", "") for p in content
                                  if isinstance(p, dict) and isinstance(p.get("text"), str))
            role = message.get("role")
            part = f"<{role}>{content if isinstance(content, str) else ''}"
            parts.append(part[:chars - size])
            size += len(parts[-1])
            if role == "user":
                break
        text = "".join(parts)
    return text.encode() if len(text) >= min(chars, MIN_PREFIX_CHARS) else None


def prefix_key(body: dict[str, Any], chars: int) -> int | None:
    """A digest of the prompt's first ``chars`` characters (None: off, or too short to
    share a cached KV block).

    Examples
    --------
    >>> a = prefix_key({"prompt": "You are a SQL expert. " * 20 + "Question 1"}, 256)
    >>> a == prefix_key({"prompt": "You are a SQL expert. " * 20 + "Question 2"}, 256)
    True
    >>> prefix_key({"prompt": "hi"}, 256) is None
    True
    """
    start = _prefix(body, chars) if chars > 0 else None
    if start is None:
        return None
    return int.from_bytes(hashlib.blake2b(start, digest_size=8).digest(), "little")


def _upstream_payload(raw: bytes, body: dict[str, Any], parsed: SamplingRequest) -> bytes:
    if not parsed.stream:
        return raw  # forwarded exactly as the client sent it
    options = dict(body.get("stream_options") or {})
    if not parsed.include_usage:
        options.pop("continuous_usage_stats", None)
    options["include_usage"] = True
    return json.dumps({**body, "stream_options": options}, separators=(",", ":")).encode()


async def forward(request: web.Request, path: str, raw: bytes, body: dict[str, Any],
                  parsed: SamplingRequest) -> web.StreamResponse:
    """Serve ``request`` (already parsed) from a worker's ``path``; records the metrics."""
    metrics = request.app[GATEWAY_METRICS]
    started = time.perf_counter()
    label, status = UNKNOWN, CLIENT_CLOSED
    call: _Call | None = None
    try:
        adapter = request.app[FLEET].resolve(parsed.model)
        label = parsed.model
        request.app[OBSERVER].arrival(label, now=time.monotonic())
        fleet = request.app[FLEET]
        if adapter is not None and fleet.synced and not fleet.placed(adapter):
            await request.app[CONTROL].replanner.ensure_placed(
                adapter, request.app[GATEWAY_CONFIG].load_timeout_s)
        call = _Call(request, path, _upstream_payload(raw, body, parsed), adapter, label,
                     bool(parsed.stream), parsed.include_usage, started, request_id(request),
                     prefix_key(body, request.app[GATEWAY_CONFIG].prefix_affinity_chars))
        response, status = await _proxy(call)
        return response
    except ApiError as exc:
        status = int(exc.status)
        raise
    except Exception:
        status = 500
        raise
    finally:
        e2e = time.perf_counter() - started
        metrics.observe(label, status, e2e)
        if call is not None and status == 200:
            request.app[OBSERVER].finished(
                label, call.worker, prompt_tokens=call.prompt_tokens,
                completion_tokens=call.completion_tokens, e2e_s=e2e, ttft_s=call.ttft,
                now=time.monotonic())


async def _connect(call: _Call) -> tuple[int, UpstreamResponse]:
    """(worker index, response with its headers read); the caller owns both."""
    fleet = call.request.app[FLEET]
    pool = call.request.app[UPSTREAM_POOL]
    headers = {"X-Request-Id": call.rid}
    limit = call.request.app[GATEWAY_CONFIG].max_outstanding_per_worker
    exclude: int | None = None
    for attempt in range(2):
        index = fleet.pick(call.adapter, exclude, prefix_key=call.prefix_key, limit=limit)
        worker = fleet.workers[index].endpoint
        upstream = None
        try:
            upstream = await pool.post(worker.url, call.path, call.payload, headers)
        except ConnectFailed as exc:
            fleet.set_status(index, WorkerStatus.DOWN)
            logger.warning("request %s: cannot reach %s: %s", call.rid, worker.name, exc)
        except ReadTimeout:
            raise ApiError.bad_gateway(f"worker {worker.name} timed out") from None
        except Disconnected as exc:
            logger.warning("request %s: %s dropped the connection: %r", call.rid, worker.name,
                           exc)
        finally:
            if upstream is None:  # failed, or cancelled (the client left) while waiting
                fleet.done(index, call.adapter)
        if upstream is not None:
            if attempt or call.adapter is None or upstream.status != 404:
                return index, upstream
            handed = False
            try:
                if not await _lost_adapter(upstream):
                    handed = True
                    return index, upstream
            finally:
                if not handed:  # retrying elsewhere, or cancelled while reading the 404
                    upstream.close()
                    fleet.done(index, call.adapter)
            fleet.forget(index, call.adapter)
            logger.warning("request %s: %s no longer holds %s; retrying", call.rid,
                           worker.name, call.adapter)
        exclude = index
    if not any(w.up for w in fleet.workers):
        raise ApiError.unavailable("no healthy worker", fleet.retry_after_s)
    if call.adapter is not None and not fleet.has_healthy_holder(call.adapter):
        raise ApiError.unavailable(f"the adapter `{call.adapter}` is not loaded on any "
                                   "healthy worker", fleet.retry_after_s)
    raise ApiError.bad_gateway("the workers could not be reached")


async def _lost_adapter(upstream: UpstreamResponse) -> bool:
    """A worker's 404 that names ``model``: it does not hold the adapter (any more)."""
    try:
        error = json.loads(await upstream.read()).get("error", {})
    except (ValueError, AttributeError, UpstreamError):
        return False
    return isinstance(error, dict) and error.get("param") == "model"


async def _proxy(call: _Call) -> tuple[web.StreamResponse, int]:
    index, upstream = await _connect(call)
    fleet = call.request.app[FLEET]
    call.state = state = fleet.workers[index]
    call.worker = state.endpoint.name
    call.request[UPSTREAM_WORKER] = call.worker  # for the access log
    now = state.answered_at = time.monotonic()
    call.request.app[OBSERVER].dispatched(call.label, call.worker, now=now)
    guard = call.request.app[GUARD]
    call.guard_key = guard.sent(call.worker, call.label, streamed=call.stream, now=now)
    finished = False
    try:
        if call.stream and upstream.status == 200:
            result = await _relay_stream(call, upstream)
        else:
            result = await _relay_body(call, upstream, fleet.workers[index].endpoint.name)
        finished = result[1] != CLIENT_CLOSED
        return result
    finally:
        fleet.done(index, call.adapter)
        guard.ended(call.guard_key, now=time.monotonic(), ttft_s=call.ttft)
        if finished:
            state.answered_at = time.monotonic()
            upstream.release()  # keep the connection alive for the next request
        else:
            upstream.close()  # the client left: dropping the connection aborts upstream


def _record_usage(call: _Call, usage: Any) -> None:
    if not isinstance(usage, dict):
        return
    try:
        prompt, completion = int(usage.get("prompt_tokens", 0)), \
            int(usage.get("completion_tokens", 0))
    except (TypeError, ValueError):  # not a vLLM usage object: nothing to count
        return
    call.prompt_tokens, call.completion_tokens = prompt, completion
    call.request.app[GATEWAY_METRICS].usage(call.label, prompt, completion)


async def _relay_body(call: _Call, upstream: UpstreamResponse,
                      worker: str) -> tuple[web.StreamResponse, int]:
    try:
        data = await upstream.read()
    except UpstreamError as exc:
        raise ApiError.bad_gateway(f"worker {worker} failed mid-response: {exc}") from None
    if upstream.status >= 500:
        raise ApiError.bad_gateway(f"worker {worker} failed with status {upstream.status}")
    if upstream.status == 200:
        _record_usage(call, body_usage(data))
    elif upstream.status >= 400:
        data = restyled(data)
    headers = {"Content-Type": upstream.headers.get("content-type", "application/json"),
               "X-Request-Id": call.rid}
    return web.Response(body=data, status=upstream.status, headers=headers), upstream.status


_DECODER = json.JSONDecoder()


def body_usage(data: bytes) -> Any:
    """The ``usage`` object of a completion body (None: none, or not JSON), decoded alone:
    vLLM writes it after the choices, and a ``"usage":`` inside generated text is escaped
    (``\\"usage\\":``), so the last unescaped one is the top-level key.

    Examples
    --------
    >>> body_usage(b'{"choices":[{"text":"\\\"usage\\\": 1"}],"usage":{"prompt_tokens":3}}')
    {'prompt_tokens': 3}
    >>> body_usage(b'{"choices":[]}') is None, body_usage(b'not json "usage": {') is None
    (True, True)
    """
    at = data.rfind(b'"usage":')
    if at < 0:
        return None
    try:
        text = data[at + 8:].decode()
        return _DECODER.raw_decode(text, len(text) - len(text.lstrip()))[0]
    except (ValueError, UnicodeDecodeError):
        return None


def filter_usage(events: bytes, keep: bool, on_usage: Callable[[Any], None]) -> bytes:
    """Complete SSE events with the final usage chunk reported and dropped unless ``keep``.

    Examples
    --------
    >>> seen = []
    >>> filter_usage(b'data: {"choices":[],"usage":{"completion_tokens":3}}\\n\\n'
    ...              b'data: [DONE]\\n\\n', False, seen.append)
    b'data: [DONE]\\n\\n'
    >>> seen
    [{'completion_tokens': 3}]
    """
    out = []
    for event in events.split(b"\n\n")[:-1]:
        if b'"usage"' in event and event.startswith(b"data: {"):
            try:
                chunk = json.loads(event[6:])
            except ValueError:
                chunk = None
            if isinstance(chunk, dict) and chunk.get("choices") == [] and "usage" in chunk:
                on_usage(chunk["usage"])
                if not keep:
                    continue
        out.append(event + b"\n\n")
    return b"".join(out)


async def _relay_stream(call: _Call,
                        upstream: UpstreamResponse) -> tuple[web.StreamResponse, int]:
    out = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                      "Cache-Control": "no-cache", "X-Request-Id": call.rid})
    try:
        await out.prepare(call.request)
    except ConnectionResetError:  # the client left before the stream began
        return out, CLIENT_CLOSED
    metrics = call.request.app[GATEWAY_METRICS]
    pending, first, status = b"", True, 200
    while True:
        try:
            data = await upstream.readany()
        except UpstreamError as exc:
            logger.warning("request %s: upstream stream failed: %r", call.rid, exc)
            error = ApiError.bad_gateway("the worker failed mid-stream")
            pending, status = b"data: " + json.dumps(error.body()).encode() + b"\n\n", 502
            break
        if not data:
            break
        if call.state is not None:
            call.state.answered_at = time.monotonic()
        pending += data
        cut = pending.rfind(b"\n\n")
        if cut < 0:
            continue
        ready, pending = pending[:cut + 2], pending[cut + 2:]
        if b'"usage"' in ready:
            ready = filter_usage(ready, call.client_usage, lambda u: _record_usage(call, u))
        if not ready:
            continue
        if first:
            call.ttft = time.perf_counter() - call.started
            metrics.first_token(call.label, call.ttft)
            call.request.app[GUARD].first_token(call.guard_key, now=time.monotonic())
            first = False
        try:
            await out.write(ready)
        except ConnectionResetError:
            return out, CLIENT_CLOSED
    try:
        if pending:
            await out.write(pending)
        await out.write_eof()
    except ConnectionResetError:
        return out, CLIENT_CLOSED
    return out, status
