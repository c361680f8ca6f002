"""``lorafleet calibrate`` (short sweep) and ``validate`` against the real vLLM server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from twin.profile import load_profile
from twin.specs import EngineConfig
from twin.step_time import LinearStepTime

from .server import RealVllm

pytestmark = pytest.mark.real_vllm


def test_calibrate_then_validate_on_real_vllm(real_vllm: RealVllm, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cpu.json"
    code = main(["calibrate", "--url", real_vllm.base_url, "--out", str(out), "--quick",
                 "--adapter", str(real_vllm.adapters["tiny-c-r8"]),
                 "--adapter", str(real_vllm.adapters["tiny-d-r16"])])
    assert code == 0, capsys.readouterr().err
    profile = load_profile(out)
    assert profile.linear is not None and profile.source["vllm_version"].startswith("0.32")
    lin = profile.linear
    # A decode step of the tiny model on one CPU core: milliseconds, growing with the batch.
    assert 1e-4 < lin.base_s + lin.lora.per_adapter_s < 0.1
    # Which term carries the batch's cost (per token, per sequence, per LoRA token) is the
    # fit's choice: the sweep's batches are mostly LoRA batches. The step must grow with it.
    step = LinearStepTime(lin, EngineConfig(max_loras=2, max_lora_rank=16))
    assert step.predict(0, 32, 32 * 80, 1) > step.predict(0, 1, 80, 1)
    assert 0 < profile.request_overhead_s < 0.5
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        "name: real-two-adapters\nmodel: tiny-llama\n"
        "gpu: {name: cpu, memory_gib: 24, kv_cache_space_gib: 1}\n"
        f"profile: {out}\n"
        "engine: {max_loras: 2, max_cpu_loras: 4, max_lora_rank: 16, max_model_len: 512}\n"
        "adapters:\n  - {name: val-r8, rank: 8, rate: 6}\n  - {name: val-r16, rank: 16, rate: 4}\n"
        "lengths: {input: {dist: fixed, value: 64}, output: {dist: fixed, value: 16}}\n"
        "duration_s: 5\nseed: 1\n")
    capsys.readouterr()
    code = main(["validate", "--url", real_vllm.base_url, str(scenario), "--json",
                 "--adapter", f"8={real_vllm.adapters['tiny-c-r8']}",
                 "--adapter", f"16={real_vllm.adapters['tiny-d-r16']}"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    assert result["real"]["errors"] == 0 and result["real"]["requests"] >= 20
    # A light load: both runs serve what arrives.
    assert not result["starved_real"] and not result["starved_twin"]
    assert result["throughput_error"] < 0.25
    names = {c["id"] for c in json.loads(_get(real_vllm.base_url + "/v1/models"))["data"]}
    assert not names & {"val-r8", "val-r16"}  # validate unloads what it loaded


def _get(url: str) -> str:
    import urllib.request
    with urllib.request.urlopen(url, timeout=10) as resp:
        return str(resp.read().decode())
