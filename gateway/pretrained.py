"""The shipped surrogate as the gateway, the CLI and the benchmarks use it: the file that
ships with the planner, or, when the code or River changed since it was written, trained once
per machine and cached under ``$XDG_CACHE_HOME/lorafleet`` (``planner.pretrained_surrogate``)."""

from __future__ import annotations

import os
from pathlib import Path

from planner import Surrogate, pretrained_surrogate

__all__ = ["cache_dir", "default_surrogate"]


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lorafleet"


def default_surrogate() -> Surrogate:
    """The surrogate trained on the bundled tables: shipped, or cached, or trained now."""
    return pretrained_surrogate(cache_dir())
