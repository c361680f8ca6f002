"""The emulated worker's contract suite (tests/contract), run against the real vLLM server:
every vLLM behaviour the emulator copies is checked against vLLM itself."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .server import REPO_ROOT, RealVllm

pytestmark = pytest.mark.real_vllm


def test_contract_suite_passes_against_real_vllm(real_vllm: RealVllm) -> None:
    loadable = next(name for name, rank in sorted(real_vllm.ranks.items())
                    if rank <= 16 and name != real_vllm.startup_adapter)
    big = next(name for name, rank in sorted(real_vllm.ranks.items()) if rank > 16)
    env = {**os.environ,
           "LORAFLEET_CONTRACT_URL": real_vllm.base_url,
           "LORAFLEET_CONTRACT_MODEL": real_vllm.model,
           "LORAFLEET_CONTRACT_ADAPTER": str(real_vllm.adapters[loadable]),
           "LORAFLEET_CONTRACT_BIG_ADAPTER": str(real_vllm.adapters[big]),
           "LORAFLEET_CONTRACT_MAX_MODEL_LEN": "512"}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/contract"], cwd=REPO_ROOT, env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
