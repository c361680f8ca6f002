"""``lorafleet calibrate`` and ``validate`` against ``lorafleet worker --emulate``.

The emulated worker times itself with a known profile, so calibrating it must recover that
profile: a real accuracy test of the sweep and the fit. The worker runs 2x faster than the
wall clock, so what calibration measures is the profile's times divided by 2 (at 4x, steps
of 2 ms left the fit at the mercy of the event loop's scheduling on a loaded machine).
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import main
from twin.profile import CalibrationProfile, LoadTimes, load_profile, save_profile
from twin.specs import EngineConfig
from twin.step_time import LinearCoefficients, LinearStepTime, LoRACoefficients

SCALE = 2.0
TRUTH = CalibrationProfile(
    name="truth", kind="linear", source={"note": "test"},
    linear=LinearCoefficients(base_s=0.008, per_token_s=1.2e-4, per_seq_s=8e-5,
                              per_context_token_s=4e-7,
                              lora=LoRACoefficients(per_adapter_s=0.006,
                                                    per_active_token_s=1.5e-4)),
    load=LoadTimes(disk_latency_s=0.04, disk_bytes_per_s=1e15, cpu_to_gpu_latency_s=0.012,
                   cpu_to_gpu_bytes_per_s=1e15),
    request_overhead_s=0.02, request_cpu_s=0.004)


@pytest.fixture(scope="module")
def emulated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An emulated tiny-llama worker timed by ``TRUTH``, and a folder of rank-8/16 adapters."""
    tmp = tmp_path_factory.mktemp("h4-calibrate")
    save_profile(TRUTH, tmp / "truth.json")
    for rank in (8, 16):
        assert main(["adapters", "scaffold", str(tmp), "--rank", str(rank),
                     "--name", f"r{rank}"]) == 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "worker", "--emulate", "--port", "0",
         "--model", "tiny-llama", "--served-model-name", "tiny-llama",
         "--profile", str(tmp / "truth.json"), "--max-loras", "2", "--max-cpu-loras", "4",
         "--max-model-len", "512", "--time-scale", str(SCALE)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://"), url
        yield url, tmp
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture(scope="module")
def fitted(emulated: tuple[str, Path]) -> CalibrationProfile:
    url, tmp = emulated
    out = tmp / "fitted.json"
    assert main(["calibrate", "--url", url, "--out", str(out), "--quick",
                 "--adapter", str(tmp / "r8"), "--adapter", str(tmp / "r16")]) == 0
    return load_profile(out)


@pytest.mark.slow  # about 10 s of sweep, timing-sensitive on a loaded machine
def test_calibrate_recovers_the_emulated_profile(fitted: CalibrationProfile) -> None:
    engine = EngineConfig(max_loras=2, max_model_len=512)
    assert fitted.linear is not None and TRUTH.linear is not None
    truth = LinearStepTime(TRUTH.linear, engine)
    fit = LinearStepTime(fitted.linear, engine)
    # Step times over the range swept, in wall seconds (the worker runs SCALE x faster).
    # Base-model, LoRA and mixed batches (the last number: LoRA tokens in the step).
    for batch in ((0, 1, 40, 1, 1), (0, 32, 32 * 60, 2, 32), (0, 96, 96 * 40, 1, 96),
                  (0, 32, 32 * 60, 0, 0), (0, 32, 32 * 60, 1, 16), (256, 0, 256, 1, 256),
                  (2048, 0, 2048, 1, 2048), (2048, 0, 2048, 0, 0), (2048, 0, 2048, 1, 1024)):
        args = [float(v) for v in batch]
        want = truth.predict(*args) / SCALE
        assert fit.predict(*args) == pytest.approx(want, rel=0.15), batch
    lora = fitted.linear.lora
    assert lora.per_adapter_s * SCALE == pytest.approx(TRUTH.linear.lora.per_adapter_s,
                                                       rel=0.25)
    # The LoRA cost falls on every token of a step with an adapter, not on LoRA tokens only.
    assert lora.per_active_token_s * SCALE == pytest.approx(1.5e-4, rel=0.25)
    assert lora.per_lora_token_s < 0.2 * lora.per_active_token_s
    # The overhead also holds the HTTP round trip and the event loop's lag (wall seconds,
    # not scaled): at least the profile's, at most 15 ms more, on a busy worker as on an
    # idle one (the emulated worker's overhead does not grow with load).
    assert 0.8 * 0.02 / SCALE <= fitted.request_overhead_s <= 0.02 / SCALE + 0.015
    assert fitted.source["fit"]["busy_overhead_s"] <= 0.01
    # Each request's engine time shows in the decode steps while requests arrive.
    assert fitted.request_cpu_s * SCALE == pytest.approx(0.004, rel=0.5)
    assert fitted.load.cpu_to_gpu_latency_s * SCALE == pytest.approx(0.012, rel=0.3)
    assert fitted.load.disk_latency_s * SCALE == pytest.approx(0.04, rel=0.3)
    assert fitted.source["fitted_by"] == "lorafleet calibrate"
    assert fitted.samples and all("step_time_s" in s for s in fitted.samples)


@pytest.mark.slow
def test_validate_matches_the_twin_with_the_fitted_profile(
        emulated: tuple[str, Path], fitted: CalibrationProfile, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    url, tmp = emulated
    save_profile(fitted, tmp_path / "fitted.json")
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        "name: emulated-two-adapters\nmodel: tiny-llama\ngpu: a100-80gb\n"
        f"profile: {tmp_path / 'fitted.json'}\n"
        "engine: {max_loras: 2, max_cpu_loras: 4, max_model_len: 512}\n"
        "adapters:\n  - {name: sql, rank: 8, rate: 25}\n  - {name: chat, rank: 16, rate: 15}\n"
        "lengths: {input: {dist: uniform, low: 32, high: 128}, output: {dist: fixed, value: 24}}\n"
        "duration_s: 4\nseed: 3\n")
    assert main(["validate", "--url", url, str(scenario), "--json",
                 "--adapter", f"8={tmp / 'r8'}", "--adapter", f"16={tmp / 'r16'}"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["real"]["errors"] == 0 and out["real"]["requests"] > 100
    assert out["throughput_error"] < 0.05
    assert out["ttft_p50_error"] < 0.5  # the client's HTTP and loop lag are not in the twin
    assert out["starved_real"] == out["starved_twin"]
    assert out["speedup"] > 1


def test_unreachable_server_is_one_line_naming_url(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    main(["adapters", "scaffold", str(tmp_path / "a"), "--rank", "8"])
    code = main(["calibrate", "--url", "http://127.0.0.1:9", "--out", str(tmp_path / "p.json"),
                 "--adapter", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("lorafleet: --url: cannot reach") and err.count("\n") == 1


def test_bad_scenario_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny-llama\ngpu: a100-80gb\nadapters: []\nduration_s: 1\n")
    code = main(["validate", "--url", "http://127.0.0.1:9", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("lorafleet: adapters:") and err.count("\n") == 1
