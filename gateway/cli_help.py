"""Help texts of the flags every command shares (one wording for each). Their defaults are
appended by ``gateway.cli.HelpFormatter``."""

from __future__ import annotations

import argparse
import logging

from twin.catalog import GPUS, MODELS
from twin.profile import bundled_profiles

__all__ = ["GPU_HELP", "LOG_LEVELS", "MODEL_HELP", "PROFILE_HELP", "log_level", "port"]

MODEL_HELP = (f"the base model, as vLLM's --model: a bundled one ({', '.join(sorted(MODELS))}),"
              " a Hugging Face config.json or a folder holding one")
GPU_HELP = (f"the GPU: a bundled one ({', '.join(sorted(GPUS))}) or its spec as JSON, "
            '\'{"name": ..., "memory_gib": ..., "tflops": ..., "bandwidth_gbps": ..., '
            '"interconnect_gbps": ...}\'')
PROFILE_HELP = (f"the twin's timing profile: a bundled one ({', '.join(bundled_profiles())}) "
                "or a profile JSON from `lorafleet calibrate`")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def log_level(text: str) -> str:
    """``--log-level``'s type: any case (``warning``), checked by ``choices=LOG_LEVELS``.

    Examples
    --------
    >>> log_level("warning")
    'WARNING'
    """
    name = text.upper()
    return name if isinstance(logging.getLevelName(name), int) else text


def port(text: str) -> int:
    """A ``--port``'s type: a whole number in 0..65535 (0: a free port)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in 0..65535, got {value}")
    return value
