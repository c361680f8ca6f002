from __future__ import annotations

import pytest

from planner.surrogate import Surrogate
from planner.training import bundled_rows, train
from twin import get_gpu, get_model, load_profile


@pytest.fixture(scope="session")
def surrogate() -> Surrogate:
    """A small surrogate trained on every 4th row of the bundled table (a few seconds)."""
    return train(bundled_rows()[::4], regressor="arf", classifier="arf")


@pytest.fixture(scope="session")
def specs():
    return get_model("llama-3.1-8b"), get_gpu("a100-80gb"), load_profile("roofline-default")
