"""One request's state inside the engine, as vLLM's ``v1/request.py`` keeps it.

Token accounting follows vLLM V1: ``num_tokens`` is prompt plus generated tokens,
``num_computed_tokens`` how many of them have KV in the cache. A step that brings
``num_computed_tokens`` up to ``num_tokens`` samples one new token. A running request in
decode has exactly one token to compute per step.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = ["FinishReason", "Request", "RequestStatus"]


class RequestStatus(enum.Enum):
    """vLLM's ``RequestStatus`` subset the twin uses."""

    WAITING = enum.auto()
    RUNNING = enum.auto()
    PREEMPTED = enum.auto()
    FINISHED_LENGTH_CAPPED = enum.auto()
    FINISHED_ABORTED = enum.auto()

    @property
    def is_finished(self) -> bool:
        return self in (RequestStatus.FINISHED_LENGTH_CAPPED, RequestStatus.FINISHED_ABORTED)


class FinishReason(enum.StrEnum):
    """The ``finished_reason`` label of ``vllm:request_success`` / the API's ``finish_reason``."""

    LENGTH = "length"
    ABORT = "abort"


@dataclass(slots=True, eq=False)
class Request:
    """A request from arrival to finish. Times are integer nanoseconds on the engine clock.

    ``adapter`` is the LoRA name (``None`` for the base model) and ``lora_int_id`` the engine's id
    for it (0 for none; vLLM's ``LoRARequest.lora_int_id``). The engine keeps
    ``num_computed_tokens`` lazily for requests in decode (see ``DecodeSet``), so read it only
    through the engine while the request runs.
    """

    request_id: str
    adapter: str | None
    prompt_tokens: int
    max_tokens: int
    arrival_ns: int
    stream: bool = False
    lora_int_id: int = 0
    status: RequestStatus = RequestStatus.WAITING
    num_computed_tokens: int = 0
    num_output_tokens: int = 0
    num_blocks: int = 0
    num_preemptions: int = 0
    queue_seq: int = 0
    first_scheduled_ns: int | None = None
    first_token_ns: int | None = None
    last_token_ns: int | None = None
    finish_ns: int | None = None
    finish_reason: FinishReason | None = None
    # Decode bookkeeping (valid while in the engine's DecodeSet).
    decode_offset: int = 0
    finish_step: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.prompt_tokens < 1:
            raise ValueError(f"prompt_tokens must be >= 1, got {self.prompt_tokens}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")

    @property
    def num_tokens(self) -> int:
        return self.prompt_tokens + self.num_output_tokens

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished
