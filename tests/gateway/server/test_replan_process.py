"""The planning process dies with its gateway: a gateway killed without a chance to shut its
pool down (SIGKILL, or a supervisor's timeout after SIGTERM) leaves no orphan behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

SCRIPT = """
import os, sys
from gateway.server.replanner import _executor
print(_executor().submit(os.getpid).result(timeout=60), flush=True)
sys.stdin.read()  # until killed
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its (new) parent is gone too
        return f.read().split(") ", 1)[1][0] != "Z"


def test_the_planning_process_exits_when_the_gateway_is_killed() -> None:
    with subprocess.Popen([sys.executable, "-c", SCRIPT], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as gateway:
        assert gateway.stdout is not None
        worker = int(gateway.stdout.readline())
        assert worker != gateway.pid and _alive(worker)
        gateway.send_signal(signal.SIGKILL)
        gateway.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(worker), "the planning process outlived its gateway"
