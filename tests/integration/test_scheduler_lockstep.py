"""The twin's engine step for step against vLLM 0.32's own ``Scheduler`` class
(``bench/scheduler_lockstep.py``: the same arrivals and step times, no model run): a skip-rule
lockout and a KV-bound case with preemptions schedule identically (the real-vLLM group: it needs
``.venv-vllm`` and the tiny model's config)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .conftest import SKIP_REASON, _or_fail, real_vllm_enabled
from .server import REPO_ROOT, build_tiny_model, vllm_python

pytestmark = pytest.mark.real_vllm


@pytest.fixture(scope="module")
def tiny_base(request: pytest.FixtureRequest) -> Path:
    """The tiny model's base folder (built on first use), for the scheduler's config."""
    if not real_vllm_enabled(request.config):
        pytest.skip(SKIP_REASON)
    python = vllm_python()
    if not python.exists():
        pytest.fail(f"real-vLLM group enabled but {python} is missing: run `make vllm-env`")
    cache = Path(os.environ.get("LORAFLEET_TINY_MODEL_DIR",
                                REPO_ROOT / ".cache/tiny-llama")).resolve()
    manifest = _or_fail(lambda: build_tiny_model(python, cache))
    return cache / manifest["base"]


def test_the_twin_schedules_as_vllms_own_scheduler(tiny_base: Path) -> None:
    """Step for step against vLLM 0.32's ``Scheduler`` class (bench/scheduler_lockstep.py)."""
    from bench.scheduler_lockstep import SLOW, Case, run_cases

    cases = [Case(name="lockout", adapters=3, rate=30.0, seed=1, coefficients=SLOW,
                  duration_s=12.0),
             Case(name="kv-bound", adapters=3, rate=60.0, num_blocks=12, seed=6,
                  duration_s=8.0)]
    rows = run_cases(cases, str(vllm_python()), str(tiny_base))
    for row in rows:
        assert row["identical"], row
    assert min(rows[0]["served_fraction_twin"].values()) < 0.05
