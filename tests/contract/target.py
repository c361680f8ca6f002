"""The contract suite's target: a vLLM-compatible server reached over HTTP only.

By default an emulated worker (``lorafleet worker --emulate``) is started as a subprocess on
a free loopback port for the session. To run the same suite against a real vLLM 0.32 server
(started with ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``), set:

- ``LORAFLEET_CONTRACT_URL``: its base URL, e.g. ``http://127.0.0.1:8000``;
- ``LORAFLEET_CONTRACT_MODEL``: its served model name;
- ``LORAFLEET_CONTRACT_ADAPTER``: the path (as the server sees it) of an adapter it can load;
- ``LORAFLEET_CONTRACT_BIG_ADAPTER``: an adapter whose rank exceeds its ``--max-lora-rank``;
- ``LORAFLEET_CONTRACT_MAX_MODEL_LEN``: its ``--max-model-len``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from gateway.emulator.adapters import scaffold_adapter

MAX_MODEL_LEN = 2048


@dataclass(frozen=True, slots=True)
class Target:
    base_url: str
    model: str
    adapter_path: str
    big_adapter_path: str
    max_model_len: int
    emulated: bool


def external_target() -> Target | None:
    url = os.environ.get("LORAFLEET_CONTRACT_URL")
    if not url:
        return None
    return Target(base_url=url.rstrip("/"), model=os.environ["LORAFLEET_CONTRACT_MODEL"],
                  adapter_path=os.environ["LORAFLEET_CONTRACT_ADAPTER"],
                  big_adapter_path=os.environ["LORAFLEET_CONTRACT_BIG_ADAPTER"],
                  max_model_len=int(os.environ.get("LORAFLEET_CONTRACT_MAX_MODEL_LEN", "2048")),
                  emulated=False)


@contextmanager
def emulated_target(folder: Path) -> Iterator[Target]:
    """An emulated worker in a subprocess, with adapters scaffolded under ``folder``."""
    static = scaffold_adapter(folder / "static", rank=8)
    cmd = [sys.executable, "-m", "gateway.cli", "worker", "--emulate", "--port", "0",
           "--served-model-name", "contract-base", "--max-loras", "2", "--max-cpu-loras", "4",
           "--max-lora-rank", "16", "--max-model-len", str(MAX_MODEL_LEN),
           "--time-scale", "10", "--lora-modules", f"static={static}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()  # the URL, once it listens
        if not line.startswith("http://"):
            proc.kill()
            _, err = proc.communicate(timeout=10)
            raise RuntimeError(f"emulated worker did not start: {line!r} {err}")
        yield Target(base_url=line, model="contract-base",
                     adapter_path=str(scaffold_adapter(folder / "a8", rank=8)),
                     big_adapter_path=str(scaffold_adapter(folder / "a64", rank=64)),
                     max_model_len=MAX_MODEL_LEN, emulated=True)
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
