"""A real Redis for the tests (Debian's ``redis-server``; ``make redis-env`` installs it, and
``make test`` does it first): one process on a free loopback port, nothing saved to disk,
that a test can stop and start again on the same port (a Redis restart)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

__all__ = ["RedisServer", "free_port"]

START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _binary() -> str:
    path = shutil.which("redis-server")
    if path is None:
        pytest.fail("`redis-server` is not installed: run `make redis-env` (Debian's "
                    "redis-server package; `make test` does it first)")
    return path


class RedisServer:
    """``redis-server`` on 127.0.0.1:``port``, its log in ``folder``."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        with (self.folder / "redis.log").open("ab") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                [_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.folder), "--protected-mode", "no"],
                stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log_text = (self.folder / "redis.log").read_text()
                raise RuntimeError(f"redis-server exited: {log_text}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer PING within {START_TIMEOUT_S:g} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
