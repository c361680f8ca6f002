from __future__ import annotations

import pytest

from planner.surrogate import Surrogate
from planner.training import bundled_rows, train
from twin import get_gpu, get_model, load_profile


@pytest.fixture(scope="session")
def surrogate() -> Surrogate:
    """A small surrogate (the default models) trained on every 4th bundled row (seconds)."""
    return train(bundled_rows()[::4])


@pytest.fixture(scope="session")
def specs():
    return get_model("llama-3.1-8b"), get_gpu("a100-80gb"), load_profile("roofline-default")
