"""``lorafleet serve``: one-line errors with exit status 2, and an emulated fleet end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from gateway.cli import main
from tests.gateway.server.factories import stop_serving

ADAPTERS = ("adapters:\n  - {name: sql, rank: 8, rate: 1.0}\n"
            "  - {name: chat, rank: 16, rate: 2.0}\n")


def test_config_errors_name_the_field(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text("base_model: b\nworkers: [{url: 'http://x:1', name: w}]\nport: high\n")
    assert main(["serve", "--config", str(path)]) == 2
    assert capsys.readouterr().err.strip() == \
        "lorafleet: serve: port: must be an integer, got 'high'"
    assert main(["serve", "--emulate", "2"]) == 2
    assert "--adapters: is required" in capsys.readouterr().err
    bad = tmp_path / "ad.yaml"
    bad.write_text("adapters:\n  - {name: sql, rank: 3, rate: 1}\n")
    assert main(["serve", "--emulate", "1", "--adapters", str(bad)]) == 2
    assert "adapters[0].rank" in capsys.readouterr().err


def test_serve_emulated_fleet(tmp_path: Path) -> None:
    adapters = tmp_path / "adapters.yaml"
    adapters.write_text(ADAPTERS)
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--emulate", "2", "--adapters",
           str(adapters), "--port", "0", "--placement", "round-robin", "--time-scale", "100",
           "--adapter-dir", str(tmp_path / "ad"), "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.stderr else ""
        with urllib.request.urlopen(f"{url}/ready", timeout=60) as resp:
            assert json.load(resp)["workers_up"] == 2
        body = json.dumps({"model": "chat", "prompt": "hi", "max_tokens": 3}).encode()
        req = urllib.request.Request(f"{url}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            assert json.load(resp)["usage"]["completion_tokens"] == 3
        with urllib.request.urlopen(f"{url}/v1/models", timeout=60) as resp:
            ids = {m["id"] for m in json.load(resp)["data"]}
        assert ids == {"llama-3.1-8b", "sql", "chat"}
        assert (tmp_path / "ad" / "chat" / "adapter_config.json").is_file()
    finally:
        err = stop_serving(proc)
    assert proc.returncode == 0, err
