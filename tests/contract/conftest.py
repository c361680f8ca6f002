"""Fixtures of the contract suite (see ``target.py`` for how to aim it at a real vLLM)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from openai import OpenAI

from tests.contract.target import Target, emulated_target, external_target


@pytest.fixture(scope="session")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    external = external_target()
    if external is not None:
        yield external
        return
    folder: Path = tmp_path_factory.mktemp("contract")
    with emulated_target(folder) as t:
        yield t


@pytest.fixture
def client(target: Target) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{target.base_url}/v1", api_key="unused", max_retries=0,
                timeout=30) as c:
        yield c
