"""Pieces of the OpenAI request schema that both the gateway and the emulated worker parse."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = ["OpenAIBody", "StreamOptions", "validation_message"]


class OpenAIBody(BaseModel):
    """A request body whose unknown fields are kept (vLLM and clients add their own)."""

    model_config = ConfigDict(extra="allow")


class StreamOptions(OpenAIBody):
    include_usage: bool | None = False
    continuous_usage_stats: bool | None = False


def validation_message(exc: ValidationError) -> tuple[str, str | None]:
    """vLLM's 400 message for a body that fails validation (``handlers/validation.py``): the
    count, then up to five ``loc: msg`` lines; and the first bad field, for ``param``."""
    errors = exc.errors()
    first = errors[0] if errors else None
    param = ".".join(str(p) for p in first["loc"]) if first else None
    label = "error" if len(errors) == 1 else "errors"
    lines = [f"{len(errors)} validation {label}:"]
    lines += [f"  {'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors[:5]]
    return "\n".join(lines), param or None
