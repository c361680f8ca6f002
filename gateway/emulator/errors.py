"""Errors of the emulated worker.

The tree::

    EmulatorError
     ├── ApiError             an HTTP error answered with vLLM's JSON error body and status
     └── StartupError         a worker option vLLM refuses at start-up (CLI: exit status 2)

``ApiError`` carries vLLM's ``ErrorResponse`` fields (``entrypoints/serve/engine/protocol.py``):
``{"error": {"message", "type", "param", "code"}}``. Messages go through ``sanitize_message``
as vLLM's do (``entrypoints/serve/exception_handling/utils.py``).
"""

from __future__ import annotations

import re
from http import HTTPStatus
from typing import Any

__all__ = ["ApiError", "EmulatorError", "StartupError", "sanitize_message"]

# vllm/entrypoints/serve/exception_handling/utils.py sanitize_message, in the same order.
_ADDR = re.compile(r" at 0x[0-9a-fA-F]+>")
_TRACE = re.compile(r'File "[^"]*", line \d+, in \S+\n?')
_SYS_PATH = re.compile(r"/(?:home|usr|opt|var|tmp|root|lib|mnt|srv)(?:/[\w.\-]+)+")
_FILE_PATH = re.compile(r"(?:/[\w\-]+)+/[\w\-]+\.\w+")


def sanitize_message(message: str) -> str:
    """Hide file paths as vLLM does before a message leaves the server.

    Examples
    --------
    >>> sanitize_message("Loading lora a failed: No adapter found for /tmp/x/a")
    'Loading lora a failed: No adapter found for <path>'
    """
    message = _ADDR.sub(">", message)
    message = _TRACE.sub("", message)
    message = _SYS_PATH.sub("<path>", message)
    message = _FILE_PATH.sub("<path>", message)
    return message.strip()


class EmulatorError(Exception):
    """Base class of every error the emulated worker raises on purpose."""


class StartupError(EmulatorError):
    """The worker cannot start with these options (vLLM refuses them too)."""


class ApiError(EmulatorError):
    """An error answered as vLLM's ``ErrorResponse`` with ``status``."""

    def __init__(self, status: HTTPStatus, err_type: str, message: str,
                 param: str | None = None) -> None:
        self.status = status
        self.err_type = err_type
        self.message = sanitize_message(message)
        self.param = param
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        """The JSON body, fields in vLLM's order (message, type, param, code)."""
        return {"error": {"message": self.message, "type": self.err_type,
                          "param": self.param, "code": int(self.status)}}

    @classmethod
    def not_found(cls, message: str, param: str | None = None) -> ApiError:
        return cls(HTTPStatus.NOT_FOUND, "NotFoundError", message, param)

    @classmethod
    def bad_request(cls, message: str, param: str | None = None) -> ApiError:
        return cls(HTTPStatus.BAD_REQUEST, "BadRequestError", message, param)

    @classmethod
    def invalid_input(cls, message: str) -> ApiError:
        return cls(HTTPStatus.BAD_REQUEST, "InvalidUserInput", message)

    @classmethod
    def internal(cls, message: str) -> ApiError:
        return cls(HTTPStatus.INTERNAL_SERVER_ERROR, "InternalServerError", message)
