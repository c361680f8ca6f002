"""Errors of the gateway and the middleware that turns them into OpenAI-style JSON.

The tree::

    GatewayError
     └── ApiError             answered as {"error": {"message", "type", "param", "code"}}
                               with its status (and Retry-After where it has one)

A configuration error is ``twin.errors.ConfigError`` (it names the field). Any other exception
reaching the middleware is logged with its traceback and answered as a bare 500: no traceback
ever reaches a client.

Examples
--------
>>> e = ApiError.model_not_found("nope")
>>> e.body()["error"]["param"], int(e.status)
('model', 404)
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web

from gateway.keys import REQUEST_ID

__all__ = ["ApiError", "GatewayError", "clip", "error_middleware", "error_type", "request_id",
           "restyled"]

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_type(status: int) -> str:
    """The error ``type`` for an HTTP status: its phrase as one word ending in ``Error``,
    the style of vLLM's own errors (``BadRequestError``, ``NotFoundError``).

    >>> error_type(400), error_type(405), error_type(413)
    ('BadRequestError', 'MethodNotAllowedError', 'RequestEntityTooLargeError')
    """
    name = HTTPStatus(status).phrase.replace(" ", "").replace("-", "")
    return name if name.endswith("Error") else name + "Error"


def clip(text: str, limit: int = 256) -> str:
    """``text`` cut to ``limit`` characters, saying how long it was (a client's 100 KB model
    name is not echoed whole into the log or an error body).

    >>> clip("x" * 300, 4)
    'xxxx... (300 characters)'
    """
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


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


class GatewayError(Exception):
    """Base class of every error the gateway raises on purpose."""


class ApiError(GatewayError):
    """An HTTP error with an OpenAI-style body (vLLM's ``ErrorResponse`` fields)."""

    def __init__(self, status: HTTPStatus, err_type: str, message: str,
                 param: str | None = None, retry_after: int | None = None) -> None:
        self.status = status
        self.err_type = err_type
        self.message = message
        self.param = param
        self.retry_after = retry_after
        super().__init__(message)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.err_type,
                          "param": self.param, "code": int(self.status)}}

    def response(self, rid: str | None = None) -> web.Response:
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        if rid is not None:
            headers["X-Request-Id"] = rid
        return web.json_response(self.body(), status=int(self.status), headers=headers)

    @classmethod
    def model_not_found(cls, model: str) -> ApiError:
        return cls(HTTPStatus.NOT_FOUND, "NotFoundError",
                   f"The model `{clip(model)}` does not exist.", param="model")

    @classmethod
    def bad_request(cls, message: str, param: str | None = None) -> ApiError:
        return cls(HTTPStatus.BAD_REQUEST, "BadRequestError", message, param)

    @classmethod
    def too_large(cls, limit: int) -> ApiError:
        return cls(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "RequestEntityTooLargeError",
                   f"The request body exceeds the limit of {limit} bytes.")

    @classmethod
    def unavailable(cls, message: str, retry_after: int) -> ApiError:
        return cls(HTTPStatus.SERVICE_UNAVAILABLE, "ServiceUnavailableError", message,
                   retry_after=retry_after)

    @classmethod
    def bad_gateway(cls, message: str) -> ApiError:
        return cls(HTTPStatus.BAD_GATEWAY, "BadGatewayError", message)

    @classmethod
    def internal(cls) -> ApiError:
        return cls(HTTPStatus.INTERNAL_SERVER_ERROR, "InternalServerError",
                   "Internal server error.")


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
