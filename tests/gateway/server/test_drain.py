"""SIGTERM: the gateway stops accepting, lets a stream in flight finish, and exits 0."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

ADAPTERS = "adapters:\n  - {name: sql, rank: 8, rate: 1.0}\n  - {name: chat, rank: 16, rate: 1.0}\n"


def test_sigterm_lets_a_stream_finish(tmp_path: Path) -> None:
    adapters = tmp_path / "adapters.yaml"
    adapters.write_text(ADAPTERS)
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--emulate", "2", "--adapters",
           str(adapters), "--port", "0", "--placement", "round-robin", "--time-scale", "2",
           "--adapter-dir", str(tmp_path / "ad"), "--log-level", "WARNING"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = urlsplit(proc.stdout.readline().strip())
        assert url.hostname and url.port, proc.stderr.read() if proc.stderr else ""
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        body = {"model": "chat", "prompt": "hi", "max_tokens": 150, "stream": True}
        conn.request("POST", "/v1/completions", json.dumps(body),
                     {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        first = resp.readline()
        assert first.startswith(b"data: {")
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        waited = proc.poll() is None  # still up: the stream holds the exit
        refused = False
        try:
            socket.create_connection((url.hostname, url.port), timeout=2).close()
        except ConnectionRefusedError:
            refused = True
        events = [line for line in [first, *resp.read().split(b"\n")]
                  if line.startswith(b"data: ")]
        conn.close()
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert waited and refused  # the listening socket closed at once; the process waited
    assert events[-1] == b"data: [DONE]" and len(events) == 151  # 150 tokens, then [DONE]
    assert proc.returncode == 0, err
