"""Suite-wide pytest options (only a root conftest can add command-line options)."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--real-vllm",
        action="store_true",
        default=False,
        help="run the real-vLLM integration group (tests/integration; needs `make vllm-env`); "
        "same as LORAFLEET_REAL_VLLM=1",
    )
