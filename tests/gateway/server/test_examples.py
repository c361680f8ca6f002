"""The example gateway configs shipped in examples/ load and validate."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import load_config

EXAMPLES = sorted((Path(__file__).parents[3] / "examples").glob("gateway*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.workers and cfg.adapters
    assert cfg.worker_engine is not None
    top = max(a.demand.rank for a in cfg.adapters)
    assert top <= cfg.worker_engine.max_lora_rank  # every adapter fits the workers as started


def test_there_is_an_example() -> None:
    assert EXAMPLES
