"""The errors the gateway raises on purpose, answered in OpenAI's shape by the HTTP layer
(``gateway/server/errors.py``): the vocabulary every layer may raise.

The tree::

    GatewayError
     └── ApiError             answered as {"error": {"message", "type", "param", "code"}}
          │                    with its status (and Retry-After where it has one)
          └── AuthError        ``code`` is OpenAI's string code rather than the status

Examples
--------
>>> e = ApiError.model_not_found("nope")
>>> e.body()["error"]["param"], int(e.status)
('model', 404)
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from aiohttp import web

__all__ = ["ApiError", "AuthError", "GatewayError", "clip", "error_type"]


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


class AuthError(ApiError):
    """An ``ApiError`` whose ``code`` is OpenAI's string code rather than the status."""

    def __init__(self, status: HTTPStatus, err_type: str, message: str, code: str | None,
                 retry_after: int | None = None) -> None:
        super().__init__(status, err_type, message, retry_after=retry_after)
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.err_type, "param": None,
                          "code": self.code}}

    @classmethod
    def missing(cls) -> AuthError:
        return cls(HTTPStatus.UNAUTHORIZED, "invalid_request_error",
                   "You didn't provide an API key. You need to provide your API key in an "
                   "Authorization header using Bearer auth (i.e. Authorization: Bearer "
                   "YOUR_KEY).", None)

    @classmethod
    def invalid(cls) -> AuthError:
        return cls(HTTPStatus.UNAUTHORIZED, "invalid_request_error",
                   "Incorrect API key provided.", "invalid_api_key")
