"""``lorafleet serve`` without a config file (``--worker-urls``, ``--api-key``), the
``LORAFLEET_*`` variables over the config, and the precedence flag > variable > file."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.cli import _parser, main
from gateway.config import PlacementMode
from gateway.config.env import FIELDS, values, variable
from gateway.emulator.adapters import scaffold_adapter
from gateway.server.serve_config import API_KEY_NAME, serve_config, served_model
from tests.gateway.server.factories import stop_serving
from twin.errors import ConfigError
from twin.routing import RoutingPolicy

WORKERS = ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]


def config(args: list[str], environ: dict[str, str] | None = None,
           folder: Path | None = None) -> Any:
    parsed = _parser(["serve"]).parse_args(["serve", *args])
    return serve_config(parsed, lambda: folder or Path("/nonexistent"), environ or {})


def adapters_file(tmp_path: Path, **extra: Any) -> Path:
    path = tmp_path / "adapters.yaml"
    path.write_text(yaml.safe_dump({"adapters": [
        {"name": "sql", "rank": 8, "rate": 1.0, **extra}]}))
    return path


def gateway_yaml(tmp_path: Path, **fields: Any) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"base_model": "b", "workers": WORKERS[:1], **fields}))
    return path


def test_worker_urls_build_the_config(tmp_path: Path) -> None:
    adapters = adapters_file(tmp_path, path="/adapters/sql")
    cfg, plan, spec = config(["--worker-urls", *WORKERS, "--adapters", str(adapters),
                              "--served-model-name", "llama", "--api-key", "sk-1",
                              "--routing", "least-outstanding", "-tp", "2"])
    assert plan is None and spec is None
    assert [(w.name, w.url) for w in cfg.workers] == [("w0", WORKERS[0]), ("w1", WORKERS[1])]
    assert cfg.base_model == "llama" and cfg.tensor_parallel_size == 2
    assert [(a.demand.name, a.path) for a in cfg.adapters] == [("sql", "/adapters/sql")]
    assert cfg.routing is RoutingPolicy.LEAST_OUTSTANDING
    assert [(k.name, k.key) for k in cfg.keys] == [(API_KEY_NAME, "sk-1")]
    assert cfg.worker_engine is not None  # read from the workers before the first plan


def test_emulate_from_flags_or_a_file(tmp_path: Path) -> None:
    adapters = adapters_file(tmp_path)
    cfg, plan, spec = config(["--emulate", "2", "--adapters", str(adapters), "--placement",
                              "round-robin", "--model", "llama-3.2-1b", "--time-scale", "5"],
                             {"LORAFLEET_MAX_MODEL_LEN": "4096"}, tmp_path / "a")
    assert spec is not None and (spec.count, spec.time_scale) == (2, 5.0)
    assert plan is not None and cfg.time_scale == 5.0 and cfg.max_model_len == 4096
    assert (cfg.base_model, cfg.model) == ("llama-3.2-1b", "llama-3.2-1b")
    assert cfg.worker_engine is None  # the workers run the plan's options
    assert (tmp_path / "a" / "sql" / "adapter_config.json").is_file()
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"base_model": "b", "placement": "round-robin",
                                    "emulate": {"count": 1, "time_scale": 2},
                                    "adapters": [{"name": "sql", "rank": 8, "rate": 1.0}]}))
    cfg, plan, spec = config(["--config", str(path), "--time-scale", "7"], {},
                             tmp_path / "b")
    assert spec is not None and (spec.count, spec.time_scale, cfg.time_scale) == (1, 7.0, 7.0)
    cfg, plan, spec = config(["--config", str(path)], {}, tmp_path / "c")
    assert spec is not None and spec.time_scale == 2.0


def test_api_key_is_added_to_the_configs_keys(tmp_path: Path) -> None:
    path = gateway_yaml(tmp_path, keys=[{"key": "sk-team", "name": "team"}])
    cfg, _, _ = config(["--config", str(path), "--api-key", "sk-cli"])
    assert [(k.name, k.key) for k in cfg.keys] == [("team", "sk-team"), (API_KEY_NAME, "sk-cli")]


@pytest.mark.parametrize(("spelling", "placement", "routing"), [
    ("round-robin", "round-robin", "round-robin"), ("round_robin", "round_robin", "round_robin")])
def test_both_spellings_of_a_choice_are_accepted(tmp_path: Path, spelling: str,
                                                 placement: str, routing: str) -> None:
    cfg, _, _ = config(["--worker-urls", WORKERS[0], "--served-model-name", "b",
                        "--placement", placement, "--routing", routing])
    assert cfg.placement is PlacementMode.ROUND_ROBIN
    assert cfg.routing is RoutingPolicy.ROUND_ROBIN
    path = gateway_yaml(tmp_path, placement=spelling, routing=spelling)
    cfg, _, _ = config(["--config", str(path)])
    assert (cfg.placement, cfg.routing) == (PlacementMode.ROUND_ROBIN,
                                            RoutingPolicy.ROUND_ROBIN)


def test_variables_override_the_file_and_flags_override_both(tmp_path: Path) -> None:
    path = gateway_yaml(tmp_path, port=8000, replan_interval_s=60, validate_replans=True,
                        host="127.0.0.1")
    environ = {"LORAFLEET_PORT": "9000", "LORAFLEET_REPLAN_INTERVAL_S": "30",
               "LORAFLEET_VALIDATE_REPLANS": "false", "LORAFLEET_HOST": "0.0.0.0",
               "LORAFLEET_GPU": '{"name": "g", "memory_gib": 80}',
               # not config fields: left alone
               "LORAFLEET_ADMIN_TOKEN": "secret", "LORAFLEET_URL": "http://x",
               "LORAFLEET_REAL_VLLM": "1"}
    cfg, _, _ = config(["--config", str(path)], environ)
    assert (cfg.port, cfg.replan_interval_s, cfg.validate_replans, cfg.host) == \
        (9000, 30.0, False, "0.0.0.0")
    assert json.loads(cfg.gpu)["memory_gib"] == 80
    cfg, _, _ = config(["--config", str(path), "--port", "9100"], environ)
    assert cfg.port == 9100 and cfg.replan_interval_s == 30.0
    cfg, _, _ = config(["--config", str(path)])
    assert (cfg.port, cfg.replan_interval_s, cfg.validate_replans) == (8000, 60.0, True)


def test_every_scalar_field_has_its_variable() -> None:
    """Each variable a config field gets is one the config takes (no drift with
    ``GatewayConfig``), and no structured field or non-field variable is read."""
    assert {"port", "replan_interval_s", "validate_replans", "state_file"} <= set(FIELDS)
    assert not {"workers", "adapters", "keys", "discovery", "worker_engine"} & set(FIELDS)
    assert variable("replan_interval_s") == "LORAFLEET_REPLAN_INTERVAL_S"
    assert values({"LORAFLEET_ADMIN_TOKEN": "t", "LORAFLEET_URL": "u",
                   "LORAFLEET_WORKERS": "[1]", "lorafleet_port": "1"}) == {}


@pytest.mark.parametrize(("environ", "line"), [
    ({"LORAFLEET_PORT": "70000"},
     "lorafleet: serve: LORAFLEET_PORT: must be in 0..65535, got 70000"),
    ({"LORAFLEET_VALIDATE_REPLANS": "maybe"},
     "lorafleet: serve: LORAFLEET_VALIDATE_REPLANS: must be true or false, got 'maybe'"),
    ({"LORAFLEET_REPLAN_INTERVAL_S": "soon"},
     "lorafleet: serve: LORAFLEET_REPLAN_INTERVAL_S: must be a number, got 'soon'"),
    ({"LORAFLEET_PORT": ""}, "lorafleet: serve: LORAFLEET_PORT: is set but empty"),
    ({"LORAFLEET_ROUTING": "fastest"}, "lorafleet: serve: LORAFLEET_ROUTING: must be one of"),
])
def test_a_bad_variable_is_one_line_naming_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        environ: dict[str, str], line: str) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert main(["serve", "--config", str(gateway_yaml(tmp_path))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(line), err


@pytest.mark.parametrize(("args", "line"), [
    (["--worker-urls", "localhost:8000"],
     "--worker-urls: must be http:// or https:// URLs, got 'localhost:8000'"),
    (["--worker-urls", "http://127.0.0.1:1", "--adapters", "ADAPTERS", "--served-model-name", "b"],
     "--adapters: adapters[0].path: is required for a LoRA adapter"),
    (["--worker-urls", "http://127.0.0.1:1"], "--served-model-name: not given, and no worker"),
    (["--worker-urls", "http://127.0.0.1:1", "--served-model-name", "b", "--time-scale", "2"],
     "--time-scale: only with --emulate"),
    (["--worker-urls", "http://127.0.0.1:1", "--served-model-name", "b", "--gpu", "z100"],
     "--gpu: unknown GPU 'z100'"),
    (["--emulate", "0", "--adapters", "ADAPTERS"], "--emulate: must be in [1, 256], got 0"),
    (["--emulate", "1", "--adapters", "ADAPTERS", "--api-key", ""],
     "--api-key: must be a non-empty string"),
    (["--emulate", "1", "--adapters", "/nonexistent.yaml"], "--adapters: cannot read"),
    (["--port", "70000", "--emulate", "1"], "--port: must be in 0..65535, got 70000"),
    (["--routing", "fastest", "--emulate", "1"], "--routing: invalid choice: 'fastest'"),
])
def test_bad_flags_are_one_line_naming_the_flag(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
        line: str) -> None:
    path = str(adapters_file(tmp_path))
    assert main(["serve", *[path if a == "ADAPTERS" else a for a in args]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"lorafleet: serve: {line}"), err


async def test_the_base_model_is_read_from_the_first_worker_that_answers() -> None:
    async def models(request: web.Request) -> web.Response:
        assert request.headers.get("Authorization") == "Bearer wk"
        return web.json_response({"object": "list", "data": [
            {"id": "sql", "parent": "meta-llama/Llama-3.1-8B", "root": "/a/sql"},
            {"id": "meta-llama/Llama-3.1-8B", "parent": None,
             "root": "meta-llama/Llama-3.1-8B"}]})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    async with TestServer(app) as server:
        url = str(server.make_url("")).rstrip("/")
        name = await asyncio.to_thread(served_model, ["http://127.0.0.1:1", url], "wk")
    assert name == "meta-llama/Llama-3.1-8B"
    with pytest.raises(ConfigError, match=r"--served-model-name: not given.*127\.0\.0\.1:1"):
        await asyncio.to_thread(served_model, ["http://127.0.0.1:1"])


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[list[str]]:
    """Two emulated workers in a process of their own, serving ``fleet-base``."""
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "fleet", "--emulate", "2",
                             "--base-port", "0", "--served-model-name", "fleet-base",
                             "--max-loras", "2", "--time-scale", "50"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        yield [proc.stdout.readline().strip() for _ in range(2)]
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_serve_worker_urls_without_a_config(tmp_path: Path, fleet: list[str]) -> None:
    folder = scaffold_adapter(tmp_path / "sql", rank=8)
    adapters = adapters_file(tmp_path, path=str(folder))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve", "--worker-urls", *fleet, "--adapters",
         str(adapters), "--api-key", "sk-1", "--port", "0", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "LORAFLEET_REPLAN_INTERVAL_S": "0", "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.stderr else ""
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{url}/v1/models", timeout=30)
        assert refused.value.code == 401
        refused.value.close()
        request = urllib.request.Request(f"{url}/v1/models",
                                         headers={"Authorization": "Bearer sk-1"})
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert {m["id"] for m in json.load(resp)["data"]} == {"fleet-base", "sql"}
        body = json.dumps({"model": "sql", "prompt": "hi", "max_tokens": 3}).encode()
        request = urllib.request.Request(f"{url}/v1/completions", data=body, headers={
            "Authorization": "Bearer sk-1", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as resp:
            assert json.load(resp)["usage"]["completion_tokens"] == 3
    finally:
        err = stop_serving(proc)
    assert proc.returncode == 0, err
