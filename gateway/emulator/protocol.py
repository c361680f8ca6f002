"""Request bodies the emulated worker accepts (pydantic), after vLLM 0.32's.

Fields the emulator does not act on are accepted and ignored, as vLLM's ``OpenAIBaseModel``
accepts unknown fields: ``stop`` and ``temperature`` are taken, but generation always runs to
``max_tokens`` (finish reason ``length``), as with ``ignore_eos``, since no model emits EOS.
Sources: ``entrypoints/openai/completion/protocol.py`` (``max_tokens`` default 16),
``entrypoints/openai/chat_completion/protocol.py`` (default: what ``max_model_len`` leaves),
``entrypoints/serve/lora/protocol.py``.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, TypeVar

from pydantic import BaseModel, Field, ValidationError

from gateway.emulator.errors import ApiError
from gateway.openai_schema import OpenAIBody, StreamOptions, validation_message

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "LoadLoRAAdapterRequest",
    "SamplingRequest",
    "StreamOptions",
    "UnloadLoRAAdapterRequest",
    "parse_body",
]

M = TypeVar("M", bound=BaseModel)


class SamplingRequest(OpenAIBody):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    ignore_eos: bool = False
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = None
    seed: int | None = None
    user: str | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return bool(self.include_usage and self.stream_options
                    and self.stream_options.continuous_usage_stats)


class CompletionRequest(SamplingRequest):
    """``POST /v1/completions``: one prompt, as text or token ids."""

    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=1)
    echo: bool = False


class ChatMessage(OpenAIBody):
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(str(part.get("text", "")) for part in self.content)


class ChatCompletionRequest(SamplingRequest):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class LoadLoRAAdapterRequest(OpenAIBody):
    lora_name: str
    lora_path: str
    load_inplace: bool = False


class UnloadLoRAAdapterRequest(OpenAIBody):
    lora_name: str
    lora_int_id: int | None = None


def parse_body(model: type[M], data: object) -> M:
    """Validate a JSON body; errors become vLLM's 400 (``handlers/validation.py``)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        message, param = validation_message(exc)
        raise ApiError(HTTPStatus.BAD_REQUEST, HTTPStatus.BAD_REQUEST.phrase, message,
                       param) from None
