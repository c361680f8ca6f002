"""`lorafleet simulate`: output, JSON fields, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import main

ROOT = Path(__file__).resolve().parents[2]
LIGHT = ROOT / "examples/scenarios/light-h100.yaml"


def test_json_result_has_the_documented_fields(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", str(LIGHT), "--json"]) == 0
    data = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("throughput_rps", "input_tps", "output_tps", "starved", "starved_adapters",
                "ttft_p50_s", "ttft_p99_s", "itl_p50_s", "e2e_p50_s", "e2e_p99_s",
                "preemptions", "lora_loads", "kv_blocks", "sim_seconds", "wall_seconds"):
        assert key in data
    assert data["starved"] is False and data["sim_seconds"] == 120.0


def test_readable_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", str(LIGHT)]) == 0
    out = capsys.readouterr().out
    assert "not starved" in out and "TTFT p50 / p99" in out


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return str(path)


BASE = "model: llama-3.1-8b\ngpu: a100-80gb\nadapters: {count: 2, rate_total: 1}\nduration_s: 5\n"


@pytest.mark.parametrize(("text", "field"), [
    (BASE + "engine: {max_loras: 0}\n", "engine.max_loras"),
    (BASE + "engine: {max_lora_rank: 12}\n", "engine.max_lora_rank"),
    (BASE + "engine: {max_loras: 4, max_cpu_loras: 2}\n", "engine.max_cpu_loras"),
    (BASE + "engine: {bogus: 1}\n", "engine.bogus"),
    (BASE.replace("duration_s: 5", "duration_s: -1"), "duration_s"),
    (BASE.replace("gpu: a100-80gb", "gpu: {memory_gib: 80}"), "gpu.name"),
    (BASE.replace("model: llama-3.1-8b", "model: nope"), "model"),
    (BASE + "lengths: {input: {dist: zipf}}\n", "lengths.input.dist"),
    (BASE + "arrivals: {process: gamma, cv: -1}\n", "arrivals.cv"),
    ("model: llama-3.1-8b\ngpu: a100-80gb\nduration_s: 5\nadapters:\n  - {name: x, rank: 8, "
     "rate: -2}\n", "adapters[0].rate"),
    ("model: [\n", "scenario"),
])
def test_invalid_scenario_one_line_naming_the_field(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, field: str) -> None:
    assert main(["simulate", write(tmp_path, text)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"invalid scenario: {field}" in err
    assert "Traceback" not in err


def test_memory_error_exit_2_with_numbers(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    text = ("model: llama-3.1-8b\ngpu: h100-64gb\nprofile: h100-64gb-llama-3.1-8b\n"
            "engine: {max_loras: 128, max_lora_rank: 32, max_model_len: 131072, "
            "gpu_memory_utilization: 0.9, max_num_seqs: 2048}\n"
            "adapters: {count: 2, rate_total: 1, ranks: [32]}\nduration_s: 5\n")
    assert main(["simulate", write(tmp_path, text)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lorafleet: memory error: To serve at least one request")
    assert "GiB KV cache is needed" in err and "available:" in err


def test_console_script_runs() -> None:
    out = subprocess.run([sys.executable, "-m", "gateway.cli", "simulate", str(LIGHT), "--json"],
                         capture_output=True, text=True, check=True, timeout=120)
    assert json.loads(out.stdout)["requests"] > 0


def test_each_command_is_registered_by_the_module_listed_with_the_same_help() -> None:
    """``COMMANDS`` (what ``lorafleet --help`` shows without importing anything) agrees with
    what each command's module registers."""
    import argparse
    import importlib

    from gateway.cli import COMMANDS

    for name, (text, module, function) in COMMANDS.items():
        sub = argparse.ArgumentParser().add_subparsers()
        getattr(importlib.import_module(module), function)(sub)
        helps = {a.dest: a.help for a in sub._choices_actions}
        assert helps.get(name) == text, name


def test_top_level_help_loads_no_command() -> None:
    """``lorafleet --help`` stays light: the twin's engine, the planner's models, the server
    and their libraries load only when a command runs."""
    code = ("import sys; from gateway.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('numpy', 'simpy', 'river', 'scipy', 'aiohttp', 'rich', "
            "'planner', 'twin.engine', 'gateway.plan_cli') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=True)
    assert "HEAVY []" in done.stdout, done.stdout[-500:]
    assert "plan" in done.stdout and "serve" in done.stdout
