"""Request bodies the gateway checks (pydantic) before forwarding them.

Only what the gateway acts on or must refuse is checked; every other field, known to vLLM or
not, is passed through untouched (the original JSON object is forwarded, not a re-dump of
these models).
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, Field, ValidationError

from gateway.openai_schema import OpenAIBody, StreamOptions, validation_message
from gateway.server.errors import ApiError

__all__ = ["ChatCompletionRequest", "CompletionRequest", "SamplingRequest", "StreamOptions",
           "parse_body"]

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
