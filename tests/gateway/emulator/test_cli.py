"""``lorafleet worker|fleet --emulate`` start-up errors, ``adapters scaffold``, and a fleet."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from gateway.cli import main


@pytest.mark.parametrize(("args", "start"), [
    (["--max-loras", "4", "--max-cpu-loras", "2"],
     "lorafleet: invalid option: max_cpu_loras: max_cpu_loras (2) must be >= max_loras (4)."),
    (["--max-lora-rank", "12"], "lorafleet: invalid option: max_lora_rank: must be one of"),
    (["--gpu", "l40s", "--max-model-len", "1000000", "--max-loras", "64",
      "--max-lora-rank", "64"],
     "lorafleet: memory error: To serve at least one request with the model's max seq len"),
    (["--lora-modules", "x=/tmp/lorafleet-no-such-adapter"],
     "lorafleet: Loading lora x failed: No adapter found for <path>"),
    (["--model", "nope"], "lorafleet: invalid option: model: unknown model"),
])
def test_refused_options_exit_2_with_one_line(capsys: pytest.CaptureFixture[str],
                                              args: list[str], start: str) -> None:
    assert main(["worker", "--emulate", "--port", "0", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(start), err


def test_worker_needs_emulate(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["worker", "--port", "0"]) == 2
    assert "only --emulate" in capsys.readouterr().err


def test_scaffold_writes_peft_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["adapters", "scaffold", str(tmp_path), "--rank", "32", "--name", "sql"]) == 0
    folder = tmp_path / "sql"
    assert capsys.readouterr().out.strip() == str(folder)
    assert [p.name for p in folder.iterdir()] == ["adapter_config.json"]
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["r"] == 32 and config["peft_type"] == "LORA"
    assert {"lora_alpha", "target_modules", "base_model_name_or_path"} <= set(config)


def test_fleet_serves_n_workers_on_distinct_ports() -> None:
    cmd = [sys.executable, "-m", "gateway.cli", "fleet", "--emulate", "3", "--base-port", "0",
           "--served-model-name", "fleet-base", "--slowdown", "1.5", "--jitter", "0.1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        urls = [proc.stdout.readline().strip() for _ in range(3)]
        assert all(u.startswith("http://127.0.0.1:") for u in urls) and len(set(urls)) == 3
        for url in urls:
            with urllib.request.urlopen(url + "/v1/models", timeout=10) as resp:
                assert json.loads(resp.read())["data"][0]["id"] == "fleet-base"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert proc.returncode == 0
