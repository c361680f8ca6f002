"""Every StepTimeModel through the same checks (STYLE.md: contract suites)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from twin import EngineConfig, StepTimeModel, bundled_profiles, get_gpu, get_model, load_profile

MODEL = get_model("llama-3.1-8b")


def models() -> list[tuple[str, StepTimeModel]]:
    out = []
    for name in bundled_profiles():
        for gpu in ("a100-80gb", "h100-64gb", "l40s"):
            for lora in (False, True):
                engine = EngineConfig(max_loras=16, max_lora_rank=32, enable_lora=lora)
                out.append((f"{name}-{gpu}-lora{int(lora)}",
                            load_profile(name).step_model(MODEL, get_gpu(gpu), engine)))
    return out


MODELS = models()
IDS = [n for n, _ in MODELS]
BATCHES = [(0.0, 1.0, 100.0, 1.0), (2048.0, 0.0, 2048.0, 1.0), (512.0, 64.0, 40000.0, 8.0),
           (0.0, 256.0, 200000.0, 16.0)]


@pytest.mark.parametrize(("name", "model"), MODELS, ids=IDS)
def test_scalar_equals_vector_bit_for_bit(name: str, model: StepTimeModel) -> None:
    cols = [np.array(c) for c in zip(*BATCHES, strict=True)]
    vector = model.predict(*cols)
    scalar = [model.predict(*b) for b in BATCHES]
    assert vector.tolist() == scalar  # exact: the fast path relies on it


@pytest.mark.parametrize(("name", "model"), MODELS, ids=IDS)
def test_positive_monotone_and_inputs_untouched(name: str, model: StepTimeModel) -> None:
    ctx = np.array([1000.0, 1000.0])
    before = ctx.copy()
    t = model.predict(np.zeros(2), np.array([8.0, 128.0]), ctx, np.ones(2))
    assert (t > 0).all() and t[1] > t[0]
    assert (ctx == before).all()
    assert model.predict(0.0, 8.0, 1e5, 1.0) > model.predict(0.0, 8.0, 1e3, 1.0)
    assert model.predict(1024.0, 0.0, 1024.0, 1.0) > model.predict(64.0, 0.0, 64.0, 1.0)


@pytest.mark.parametrize(("name", "model"), MODELS, ids=IDS)
def test_pickles_and_is_deterministic(name: str, model: StepTimeModel) -> None:
    clone = pickle.loads(pickle.dumps(model))
    for b in BATCHES:
        assert clone.predict(*b) == model.predict(*b) == model.predict(*b)


def test_lora_slots_and_adapters_cost_time() -> None:
    profile = load_profile("h100-64gb-llama-3.1-8b")
    gpu = get_gpu("h100-64gb")
    base = profile.step_model(MODEL, gpu, EngineConfig(enable_lora=False))
    few = profile.step_model(MODEL, gpu, EngineConfig(max_loras=8, max_lora_rank=8))
    many = profile.step_model(MODEL, gpu, EngineConfig(max_loras=300, max_lora_rank=8))
    batch = (0.0, 200.0, 200 * 60.0)
    assert base.predict(*batch, 0.0) < few.predict(*batch, 1.0) < many.predict(*batch, 1.0)
    # The reference: 300 slots and one adapter at batch ~200 run about 2x the no-LoRA step.
    assert 1.8 < many.predict(*batch, 1.0) / base.predict(*batch, 0.0) < 2.3
    assert many.predict(*batch, 100.0) > many.predict(*batch, 1.0)
