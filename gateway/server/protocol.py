"""Request bodies the gateway checks (pydantic) before forwarding them.

Only what the gateway acts on or must refuse is checked; every other field, known to vLLM or
not, is passed through untouched (the original JSON object is forwarded, not a re-dump of
these models).
"""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from gateway.errors import ApiError
from gateway.openai_schema import OpenAIBody, StreamOptions, validation_message
from gateway.server.keys import GATEWAY_CONFIG

__all__ = ["ChatCompletionRequest", "CompletionRequest", "SamplingRequest", "StreamOptions",
           "parse_body", "read_json"]

M = TypeVar("M", bound=BaseModel)


class SamplingRequest(OpenAIBody):
    model: str = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)

    @property
    def include_usage(self) -> bool:
        """The client asked for the final usage chunk of a stream."""
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class CompletionRequest(SamplingRequest):
    """``POST /v1/completions``."""

    prompt: str | list[int] | list[str] | list[list[int]]


class ChatCompletionRequest(SamplingRequest):
    """``POST /v1/chat/completions``."""

    messages: list[dict[str, Any]] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


def parse_body(model: type[M], data: object) -> M:
    """Validate a JSON body; a failure is a 400 naming the first bad field in ``param``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, param = validation_message(exc)
        raise ApiError.bad_request(message, param) from None


async def read_json(request: web.Request) -> tuple[bytes, Any]:
    """The request's body and its JSON: read within ``client_body_timeout_s`` (else 408, as
    nginx's ``client_body_timeout``) and up to the body limit (else 413); 400 if it is not
    JSON or nests deeper than the parser goes (a 30,000-deep array), never a 500."""
    cfg = request.app[GATEWAY_CONFIG]
    limit = cfg.body_limit
    if request.content_length is not None and request.content_length > limit:
        raise ApiError.too_large(limit)
    try:
        async with asyncio.timeout(cfg.client_body_timeout_s):
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError.too_large(limit) from None
    except TimeoutError:
        raise ApiError(HTTPStatus.REQUEST_TIMEOUT, "RequestTimeoutError",
                       f"The request body did not arrive within {cfg.client_body_timeout_s:g} "
                       "s.") from None
    try:
        return raw, json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError.bad_request(f"JSON decode error: {exc}") from None
    except RecursionError:
        raise ApiError.bad_request("JSON decode error: the body nests too deeply") from None
