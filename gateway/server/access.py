"""Request ids and the access log.

``X-Request-Id``: the client's is kept when it is 1-128 printable ASCII characters without
spaces, else one is made (32 random hex digits, like ``uuid4().hex``). It is sent upstream
(vLLM uses it as its request id), returned on the response, and written in the access log.

The access log is one logfmt line per request on the logger ``lorafleet.access`` (INFO; the
probes and scrapes of ``/health``, ``/ready`` and ``/metrics`` at DEBUG unless they fail):
``method``, ``path``, ``model``, ``status``, ``worker``, ``duration_ms``, ``request_id`` and
``key`` (the client key's name), ``-`` for what a request does not have; a path or model name
past 200 characters is cut. A client that left
is logged with status 499, as nginx does.

Examples
--------
>>> valid_request_id("abc-123"), valid_request_id("has space"), valid_request_id("x" * 129)
(True, False, False)
>>> logfmt({"method": "POST", "path": "/v1/completions", "model": 'a "b"', "key": None})
'method=POST path=/v1/completions model="a \\\\"b\\\\"" key=-'
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from gateway.errors import clip
from gateway.server.keys import API_KEY, REQUEST_ID, REQUEST_MODEL, UPSTREAM_WORKER

__all__ = ["ACCESS_LOGGER", "access_middleware", "logfmt", "new_request_id", "valid_request_id"]

ACCESS_LOGGER = "lorafleet.access"
QUIET_PATHS = frozenset({"/metrics", "/health", "/ready"})
MAX_REQUEST_ID = 128
CLIENT_CLOSED = 499

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

logger = logging.getLogger(ACCESS_LOGGER)


def new_request_id() -> str:
    """32 random hex digits, the shape of vLLM's ``random_uuid()`` (``uuid4().hex``)
    without building a ``UUID``."""
    return os.urandom(16).hex()


def valid_request_id(value: str) -> bool:
    """1 to 128 printable ASCII characters, no spaces."""
    return (0 < len(value) <= MAX_REQUEST_ID and value.isascii() and value.isprintable()
            and " " not in value)


def _value(value: object) -> str:
    if value is None or value == "":
        return "-"
    text = str(value)
    if any(c in text for c in ' "=\\') or not text.isprintable():
        return json.dumps(text)
    return text


def logfmt(fields: Mapping[str, object]) -> str:
    """``key=value`` pairs; values with spaces, quotes or ``=`` quoted, missing ones ``-``."""
    return " ".join(f"{k}={_value(v)}" for k, v in fields.items())


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The outermost middleware: fix the request id, time the request, log one line."""
    sent = request.headers.get("X-Request-Id")
    request[REQUEST_ID] = sent if sent is not None and valid_request_id(sent) \
        else new_request_id()
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except asyncio.CancelledError:
        status = CLIENT_CLOSED
        raise
    except web.HTTPException as exc:  # redirects and the like (errors became JSON inside)
        status = exc.status
        raise
    finally:
        # Probes and scrapes (every few seconds, from Kubernetes and Prometheus) at DEBUG
        # unless they fail; every other request at INFO.
        level = logging.DEBUG if request.path in QUIET_PATHS and status < 400 else logging.INFO
        if logger.isEnabledFor(level):
            key = request.get(API_KEY)
            model = request.get(REQUEST_MODEL)
            logger.log(level, "%s", logfmt({
                "method": request.method, "path": clip(request.path, 200),
                "model": None if model is None else clip(str(model), 200), "status": status,
                "worker": request.get(UPSTREAM_WORKER),
                "duration_ms": f"{(time.perf_counter() - started) * 1000:.1f}",
                "request_id": request[REQUEST_ID], "key": key.name if key else None}))
