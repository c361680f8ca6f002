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
from gateway.control.planning_process import executor
print(executor().submit(os.getpid).result(timeout=60), flush=True)
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


BUSY = """
import time
from gateway.control import planning_process
planning_process.submit(time.sleep, 600).running() or time.sleep(1)
while not any(not f.done() for f in planning_process._PENDING):
    time.sleep(0.05)
planning_process.stop_planning()
"""


def test_a_busy_planning_process_does_not_hold_the_exit() -> None:
    """A gateway stopping while its planning process works (warming up at start, or a
    re-plan) ends that work: the interpreter would otherwise wait for it at exit (a SIGTERM
    took 6-13 s)."""
    proc = subprocess.run([sys.executable, "-c", BUSY], timeout=120, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
