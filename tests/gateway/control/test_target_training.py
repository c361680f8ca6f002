"""The surrogate of the gateway's own target (gateway/control/target_training.py): the
shipped one for its own target, the target's own from the cache, or trained in the
background while the shipped one plans."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest

from gateway.config import GatewayConfig, WorkerEndpoint
from gateway.control.plane import ControlPlane
from gateway.control.target_training import SurrogateSource, TargetSurrogate, target_training
from gateway.fleet.metrics import GatewayMetrics
from gateway.fleet.registry import Fleet
from gateway.pretrained import surrogate_for, target_path
from planner import Surrogate, Target, shipped_path

MODEL, GPU = "llama-3.2-1b", "l40s"


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    return tmp_path / "lorafleet"


def _app(**fields: object) -> ControlPlane:
    """A control plane alone: no gateway HTTP."""
    cfg = GatewayConfig(base_model="base", adapters=(),
                        workers=(WorkerEndpoint("w0", "http://127.0.0.1:1"),),
                        **fields)  # type: ignore[arg-type]
    fleet = Fleet(cfg.base_model, cfg.workers, {}, cfg.routing, cfg.retry_after_s)
    return ControlPlane(cfg, fleet, GatewayMetrics())


def _state(plane: ControlPlane) -> TargetSurrogate:
    assert plane.surrogate is not None
    return plane.surrogate


async def _source(app: ControlPlane) -> tuple[SurrogateSource, str]:
    """Which surrogate the gateway starts planning with."""
    ctx = target_training()(app)
    await ctx.__anext__()
    try:
        return _state(app).source, _state(app).path
    finally:
        with pytest.raises(StopAsyncIteration):
            await ctx.__anext__()


async def test_the_shipped_target_uses_the_shipped_surrogate() -> None:
    assert await _source(_app()) == (SurrogateSource.SHIPPED, "")
    assert surrogate_for(Target.resolve())[1] == "shipped"


async def test_another_target_plans_with_the_prior_when_told_not_to_train() -> None:
    app = _app(model=MODEL, gpu=GPU, train_target=False)
    assert await _source(app) == (SurrogateSource.PRIOR, "")
    assert surrogate_for(Target.resolve(MODEL, GPU))[1] == "prior"


async def test_a_cached_surrogate_of_the_target_is_used_at_once() -> None:
    path = target_path(Target.resolve(MODEL, GPU), 1)
    assert path is not None
    path.parent.mkdir(parents=True)
    shutil.copy(shipped_path(), path)  # as `lorafleet train` would leave it
    assert await _source(_app(model=MODEL, gpu=GPU)) == (SurrogateSource.TRAINED, str(path))
    assert surrogate_for(Target.resolve(MODEL, GPU))[1] == "trained"
    path.write_bytes(b"not a surrogate")  # a broken cache entry is dropped: the prior plans
    assert surrogate_for(Target.resolve(MODEL, GPU))[1] == "prior"
    assert not path.exists()


async def test_the_target_is_trained_in_the_background() -> None:
    app = _app(model=MODEL, gpu=GPU)
    ctx = target_training(1)(app)
    await ctx.__anext__()
    try:
        assert _state(app).source is SurrogateSource.TRAINING
        assert _state(app).path == ""  # re-plans use the shipped one meanwhile
        deadline = time.monotonic() + 240
        while _state(app).source is SurrogateSource.TRAINING:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.5)
        state = _state(app)
        assert state.source is SurrogateSource.TRAINED
        assert state.path == str(target_path(Target.resolve(MODEL, GPU), 1))
        trained = Surrogate.load(state.path)
        assert trained.samples_seen == Surrogate.load(shipped_path()).samples_seen + 1
    finally:
        with pytest.raises(StopAsyncIteration):
            await ctx.__anext__()


async def test_stopping_the_gateway_ends_a_training_at_once() -> None:
    app = _app(model=MODEL, gpu=GPU)
    ctx = target_training(150)(app)
    await ctx.__anext__()
    await asyncio.sleep(1.0)
    started = time.monotonic()
    with pytest.raises(StopAsyncIteration):
        await ctx.__anext__()
    assert time.monotonic() - started < 10
    assert _state(app).source is SurrogateSource.TRAINING  # never finished
