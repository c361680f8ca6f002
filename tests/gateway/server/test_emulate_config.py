"""``emulate:`` in gateway.yaml: ``lorafleet serve --config`` starts an emulated fleet in its
own process (adapters without a ``path`` are scaffolded) and serves it; a bad field is one
line naming it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from openai import OpenAI

from gateway.cli import main

CONFIG = {"base_model": "llama-3.1-8b", "port": 0, "replan_interval_s": 0,
          "placement": "round-robin",
          "emulate": {"count": 2, "time_scale": 50, "slowdown": 1.2, "jitter": 0.05},
          "adapters": [{"name": "sql", "rank": 8, "rate": 1.0},
                       {"name": "chat", "rank": 16, "rate": 1.0}]}


def test_serve_config_with_emulate(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config",
                             str(path), "--log-level", "WARNING"], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        client = OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=30)
        for model in ("sql", "chat", "llama-3.1-8b"):
            done = client.completions.create(model=model, prompt="hi", max_tokens=3)
            assert done.usage is not None and done.usage.completion_tokens == 3
        assert {m.id for m in client.models.list()} == {"llama-3.1-8b", "sql", "chat"}
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == 0


@pytest.mark.parametrize(("emulate", "field"), [
    ({"count": 0}, "emulate.count"), ({"count": 2, "slowdown": 0}, "emulate.slowdown"),
    ({"count": 2, "typo": 1}, "emulate.typo"), ("many", "emulate")])
def test_bad_emulate_names_the_field(tmp_path: Path, emulate: object, field: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "emulate": emulate}))
    assert main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"lorafleet: serve: {field}:")


def test_emulate_and_workers_exclude_each_other(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "workers": ["http://127.0.0.1:9"]}))
    assert main(["serve", "--config", str(path)]) == 2
    assert "emulate: give one of workers, discovery or emulate" in capsys.readouterr().err
