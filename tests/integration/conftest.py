"""Fixtures of the real-vLLM group: a vLLM CPU server on the tiny model, for the session.

The group runs when ``LORAFLEET_REAL_VLLM=1`` or ``pytest --real-vllm``; otherwise its tests
are skipped. It needs ``make vllm-env`` (``.venv-vllm``). Knobs, all optional:

- ``LORAFLEET_VLLM_PYTHON``: the vLLM venv's Python (default ``.venv-vllm/bin/python``);
- ``LORAFLEET_TINY_MODEL_DIR``: the model cache (default ``.cache/tiny-llama``);
- ``LORAFLEET_VLLM_THREADS_BIND``: ``VLLM_CPU_OMP_THREADS_BIND`` for the server (default: vLLM's
  ``auto``, one core for the engine, the other left to the API server and the tests);
- ``LORAFLEET_VLLM_HEALTH_TIMEOUT``: seconds to wait for ``/health`` (default 180);
- ``LORAFLEET_RECORD_VLLM=1``: rewrite the observed-behaviour files (see ``goldens.py``).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from . import goldens
from .server import (
    BASE_MODEL_NAME,
    REPO_ROOT,
    STARTUP_ADAPTER,
    RealVllm,
    ServerError,
    build_tiny_model,
    free_port,
    health_timeout,
    server_command,
    server_env,
    start_server,
    stop_server,
    vllm_python,
    wait_healthy,
)

T = TypeVar("T")
SKIP_REASON = (
    "real-vLLM group disabled: set LORAFLEET_REAL_VLLM=1 or pass --real-vllm "
    "(needs `make vllm-env`)"
)


def real_vllm_enabled(config: pytest.Config) -> bool:
    """Whether the real-vLLM group runs in this session."""
    flag = os.environ.get("LORAFLEET_REAL_VLLM", "").lower() in ("1", "true", "yes")
    return flag or bool(config.getoption("--real-vllm", default=False))


def _or_fail(step: Callable[[], T]) -> T:
    """``step()``, or fail the test with its :class:`ServerError`'s message alone (the message
    carries the build output or the server log tail; a traceback would only bury it)."""
    error = ""
    try:
        return step()
    except ServerError as exc:
        error = str(exc)
    pytest.fail(error, pytrace=False)


def _timed(label: str, timings: dict[str, float], start: float) -> None:
    timings[label] = round(time.monotonic() - start, 1)


@pytest.fixture(scope="session")
def real_vllm(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RealVllm]:
    """A vLLM CPU server on the tiny model with LoRA, serving ``tiny-a-r8`` from start-up.

    Yields its base URL and the built adapters (``tiny-a-r8``, ``tiny-b-r16``, ``tiny-c-r8``,
    ``tiny-d-r16`` and the over-rank ``tiny-big-r32``); stops the server at the end.
    """
    if not real_vllm_enabled(request.config):
        pytest.skip(SKIP_REASON)
    python = vllm_python()
    if not python.exists():
        pytest.fail(f"real-vLLM group enabled but {python} is missing: run `make vllm-env`")
    cache = Path(os.environ.get("LORAFLEET_TINY_MODEL_DIR", REPO_ROOT / ".cache/tiny-llama"))
    cache = cache.resolve()
    timings: dict[str, float] = {}
    start = time.monotonic()
    manifest = _or_fail(lambda: build_tiny_model(python, cache))
    _timed("build_s", timings, start)
    adapters = {a["name"]: cache / a["path"] for a in manifest["adapters"]}
    ranks = {a["name"]: int(a["rank"]) for a in manifest["adapters"]}
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("real-vllm") / "server.log"
    cmd = server_command(
        python, cache / manifest["base"], port, {STARTUP_ADAPTER: adapters[STARTUP_ADAPTER]}
    )
    env = server_env(os.environ.get("LORAFLEET_VLLM_THREADS_BIND"))
    start = time.monotonic()
    proc = start_server(cmd, env, log_path)
    try:
        _or_fail(lambda: wait_healthy(proc, base_url, log_path, timeout_s=health_timeout()))
        _timed("server_start_s", timings, start)
        print(f"\nreal vLLM at {base_url} (log {log_path}): {timings}", file=sys.stderr)
        start = time.monotonic()
        yield RealVllm(
            base_url=base_url,
            model=BASE_MODEL_NAME,
            cache_dir=cache,
            adapters=adapters,
            ranks=ranks,
            startup_adapter=STARTUP_ADAPTER,
            log_path=log_path,
        )
        _timed("tests_s", timings, start)
    finally:
        start = time.monotonic()
        stop_server(proc)
        _timed("stop_s", timings, start)
        print(f"\nreal vLLM timings: {timings}", file=sys.stderr)


class Observed:
    """Compares observed real-vLLM responses with ``observed_errors.json``, or records them."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = cache_dir
        self.recorded: dict[str, Any] = {}
        self._golden = goldens.read_errors()

    def check(self, case: str, observed: dict[str, Any], tmp_path: Path | None = None) -> None:
        """Assert ``observed`` (paths masked) equals the golden ``case``, or record it."""
        masks = {self.cache_dir: goldens.CACHE_MARK}
        if tmp_path is not None:
            masks[tmp_path] = goldens.TMP_MARK
        masked = goldens.mask_paths(observed, masks)
        if goldens.recording():
            self.recorded[case] = masked
            return
        assert case in self._golden, (
            f"no golden case {case!r} in {goldens.ERRORS_FILE.name}: run with "
            "LORAFLEET_RECORD_VLLM=1"
        )
        marks = {goldens.CACHE_MARK: self.cache_dir}
        if tmp_path is not None:
            marks[goldens.TMP_MARK] = tmp_path
        golden = self._golden[case]
        # The server masks paths in what it sends, not in what the test sent it.
        expected = {k: goldens.expand_golden(v, marks, vllm_masks=k != "request")
                    for k, v in golden.items()} if isinstance(golden, dict) else golden
        # Where the checkout lies decides whether vLLM masks the cache folder: compare what
        # the server sent with the golden as this server would send it.
        assert masked == self._golden[case] or observed == expected


@pytest.fixture(scope="session")
def observed(real_vllm: RealVllm) -> Iterator[Observed]:
    """The golden-file checker; in record mode writes the cases seen at the session's end."""
    obs = Observed(real_vllm.cache_dir)
    yield obs
    if goldens.recording() and obs.recorded:
        goldens.write_errors(obs.recorded, version="0.32.0")
