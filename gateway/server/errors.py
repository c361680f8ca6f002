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

import logging
import uuid
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web

from gateway.keys import REQUEST_ID

__all__ = ["ApiError", "GatewayError", "error_middleware", "request_id"]

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


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
                   f"The model `{model}` does not exist.", param="model")

    @classmethod
    def bad_request(cls, message: str, param: str | None = None) -> ApiError:
        return cls(HTTPStatus.BAD_REQUEST, "BadRequestError", message, param)

    @classmethod
    def too_large(cls, limit: int) -> ApiError:
        return cls(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "RequestEntityTooLarge",
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
        error = ApiError(HTTPStatus(exc.status), exc.reason.replace(" ", ""), exc.reason)
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
