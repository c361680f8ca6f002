"""The middleware that answers every error in OpenAI's JSON shape: an ``ApiError``
(``gateway/errors.py``) with its status, any other exception logged with its traceback and
answered as a bare 500 (no traceback ever reaches a client); and the request id.

A configuration error is ``twin.errors.ConfigError`` (it names the field).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from http import HTTPStatus

from aiohttp import web

from gateway.errors import ApiError, error_type
from gateway.server.keys import REQUEST_ID

__all__ = ["error_middleware", "request_id", "restyled"]

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


_PHRASES = {status.phrase: status for status in HTTPStatus}


def restyled(data: bytes) -> bytes:
    """A worker's error body in the gateway's style: vLLM answers a request that fails its
    validation with the HTTP phrase as the type (``"Bad Request"``), its other errors and the
    gateway's with one word (``"BadRequestError"``); the phrase becomes the word. Anything
    else is passed through as it came.

    Examples
    --------
    >>> restyled(b'{"error": {"message": "m", "type": "Bad Request", "code": 400}}')
    b'{"error": {"message": "m", "type": "BadRequestError", "code": 400}}'
    >>> restyled(b'{"error": {"type": "InvalidUserInput"}}')
    b'{"error": {"type": "InvalidUserInput"}}'
    """
    try:
        body = json.loads(data)
    except (ValueError, RecursionError):
        return data
    error = body.get("error") if isinstance(body, dict) else None
    kind = error.get("type") if isinstance(error, dict) else None
    if not isinstance(kind, str) or kind not in _PHRASES:
        return data
    assert isinstance(error, dict)
    error["type"] = error_type(_PHRASES[kind])
    return json.dumps(body).encode()


def request_id(request: web.Request) -> str:
    """The request's ``X-Request-Id`` (the client's, or one made for it)."""
    rid: str | None = request.get(REQUEST_ID)
    if rid is None:
        rid = request.headers.get("X-Request-Id") or uuid.uuid4().hex
        request[REQUEST_ID] = rid
    return rid


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map ``ApiError``, aiohttp's HTTP errors and anything unexpected to JSON errors."""
    rid = request_id(request)
    try:
        response = await handler(request)
    except ApiError as exc:
        return exc.response(rid)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = ApiError(HTTPStatus(exc.status), error_type(exc.status), exc.reason)
        response = error.response(rid)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception:
        logger.exception("unhandled error on %s %s (request %s)", request.method,
                         request.path, rid)
        return ApiError.internal().response(rid)
    if not response.prepared:
        response.headers.setdefault("X-Request-Id", rid)
    return response
