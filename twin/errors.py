"""Exceptions raised by the twin.

The tree::

    TwinError
     ├── ConfigError          an invalid spec, engine option or scenario field (ValueError too)
     └── InsufficientMemoryError
                               the engine cannot start: vLLM would refuse the same config
"""

from __future__ import annotations

__all__ = ["ConfigError", "InsufficientMemoryError", "TwinError"]


class TwinError(Exception):
    """Base class of every error the twin raises on purpose."""


class ConfigError(TwinError, ValueError):
    """An invalid value, reported with the dotted name of the field it came from.

    Examples
    --------
    >>> str(ConfigError("engine.max_loras", "must be >= 1, got 0"))
    'engine.max_loras: must be >= 1, got 0'
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)

    def nested(self, prefix: str) -> ConfigError:
        """The same error with ``prefix`` prepended to its field path."""
        field = f"{prefix}.{self.field}" if self.field else prefix
        return ConfigError(field, self.message)


class InsufficientMemoryError(TwinError):
    """The KV cache cannot hold what vLLM requires at start-up.

    ``str()`` starts with ``memory error:`` and carries vLLM's own numbers.
    """

    def __init__(self, message: str, *, needed_bytes: int, available_bytes: int) -> None:
        self.needed_bytes = needed_bytes
        self.available_bytes = available_bytes
        #: Set by ``plan_memory`` when a larger ``tensor_parallel_size`` would start.
        self.smallest_tensor_parallel: int | None = None
        gib = 1 << 30
        super().__init__(f"memory error: {message} [KV cache needed: {needed_bytes / gib:.2f} "
                         f"GiB, available: {available_bytes / gib:.2f} GiB]")
