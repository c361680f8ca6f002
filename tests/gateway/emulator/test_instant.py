"""The ``instant`` profile: an emulated worker that answers in no engine time at all."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.emulator.adapters import scaffold_adapter
from gateway.emulator.config import LoraModule
from gateway.emulator.service import EmulatedWorker
from tests.gateway.emulator.factories import make_config
from twin.errors import ConfigError
from twin.events import EventKind
from twin.profile import INSTANT, bundled_profiles, instant_profile, load_profile


def test_instant_is_built_in_not_bundled() -> None:
    assert load_profile(INSTANT) == instant_profile()
    # Bundled profiles describe hardware (positive step times); instant is not one of them.
    assert INSTANT not in bundled_profiles()
    with pytest.raises(ConfigError, match="'instant'"):
        load_profile("no-such-profile")


async def test_worker_answers_in_zero_engine_time(tmp_path: Path) -> None:
    path = scaffold_adapter(tmp_path / "sql", rank=16)
    cfg = replace(make_config(time_scale=1.0, max_loras=1, max_num_seqs=8),
                  profile=instant_profile(), lora_modules=(LoraModule("sql", str(path)),))
    worker = EmulatedWorker(cfg)
    t0 = time.perf_counter()
    await worker.start()  # loads the adapter: no load time either
    try:
        # Eight streaming requests of 1024 + 256 tokens on two adapters (one slot, so the
        # base-model batch and the adapter's take turns): with a roofline profile these take
        # seconds; here every event lands at its request's arrival time.
        handles = [worker.driver.submit(adapter="sql" if i % 2 else None, prompt_tokens=1024,
                                        max_tokens=256, stream=True) for i in range(8)]
        for handle in handles:
            kinds = [await asyncio.wait_for(handle.next_event(), 5) for _ in range(257)]
            assert kinds == [EventKind.FIRST_TOKEN, *[EventKind.TOKEN] * 255,
                             EventKind.FINISHED]
            request = handle.request
            assert request.first_scheduled_ns == request.first_token_ns == request.arrival_ns
            assert request.num_output_tokens == 256
        assert time.perf_counter() - t0 < 2.0
        assert worker.engine.now_ns <= max(h.request.arrival_ns for h in handles)
    finally:
        await worker.stop()
