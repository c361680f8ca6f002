"""How long ``lorafleet serve`` takes to exit on SIGTERM, idle and with requests in flight.

Each round starts ``lorafleet serve --emulate 2`` (two rank-8/16 adapters, round-robin, the
emulated workers 5x faster than the profile), waits for its URL (ready), then either sends
SIGTERM at once (idle: the planning process may still be warming up, which the exit used to
wait for, 6-13 s) or after starting streamed completions that run about 5 s (in flight: they
must finish, within ``drain_timeout_s``). The time is from the signal to the process's exit.

Targets (issue 21): idle exit within 2 s with status 0 (a clean shutdown: a SIGTERM right
after the ready line used to kill the process before its handlers were installed); with
requests in flight, within the drain timeout (30 s) and every stream finished. Measured before
the change (same machine): idle killed uncleanly (status -15), with streams 7.3-9.0 s (the
exit waited for the planning process); after: 0.16 s and 1.5 s.
Run: ``.venv/bin/python bench/exit_time.py [--rounds 3]``; writes
``bench/results/exit_time.json``.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
TARGET_IDLE_S = 2.0
DRAIN_TIMEOUT_S = 30.0
ADAPTERS = ("adapters:\n  - {name: sql, rank: 8, rate: 1.0}\n"
            "  - {name: chat, rank: 16, rate: 2.0}\n")


def _stream(url: str, results: list[bool]) -> None:
    """One streamed completion of 1000 tokens; True when it ended with ``[DONE]``."""
    body = json.dumps({"model": "chat", "prompt": "hi", "max_tokens": 1000,
                       "stream": True}).encode()
    req = urllib.request.Request(f"{url}/v1/completions", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            results.append(b"data: [DONE]" in resp.read())
    except OSError:
        results.append(False)


def one_round(folder: Path, *, in_flight: int) -> dict[str, Any]:
    folder.mkdir(parents=True)
    adapters = folder / "adapters.yaml"
    adapters.write_text(ADAPTERS)
    cmd = [sys.executable, "-m", "gateway.cli", "serve", "--emulate", "2", "--adapters",
           str(adapters), "--port", "0", "--placement", "round-robin", "--time-scale", "5",
           "--adapter-dir", str(folder / "ad"), "--log-level", "WARNING"]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    ready_s = time.perf_counter() - started
    results: list[bool] = []
    threads = [threading.Thread(target=_stream, args=(url, results)) for _ in range(in_flight)]
    for t in threads:
        t.start()
    if in_flight:
        time.sleep(1.0)  # the streams are under way
    signalled = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    exit_s = time.perf_counter() - signalled
    for t in threads:
        t.join()
    return {"in_flight": in_flight, "ready_s": round(ready_s, 2), "exit_s": round(exit_s, 3),
            "returncode": proc.returncode, "streams_finished": sum(results)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/exit_time.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for in_flight in (0, 8):
                rows.append(one_round(Path(tmp) / f"{i}-{in_flight}", in_flight=in_flight))
    idle = [r["exit_s"] for r in rows if not r["in_flight"]]
    busy = [r for r in rows if r["in_flight"]]
    summary = {
        "idle_exit_s_median": statistics.median(idle), "idle_exit_s_max": max(idle),
        "busy_exit_s_median": statistics.median(r["exit_s"] for r in busy),
        "busy_streams_finished": f"{sum(r['streams_finished'] for r in busy)}/"
                                 f"{sum(r['in_flight'] for r in busy)}",
        "idle_target_met": max(idle) <= TARGET_IDLE_S and all(
            r["returncode"] == 0 for r in rows if not r["in_flight"]),
        "busy_target_met": all(r["exit_s"] <= DRAIN_TIMEOUT_S and r["returncode"] == 0
                               and r["streams_finished"] == r["in_flight"] for r in busy)}
    table = Table(title="lorafleet serve: SIGTERM to exit")
    for col in ("in flight", "ready s", "exit s", "status", "streams finished"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(str(r["in_flight"]), f"{r['ready_s']:.1f}", f"{r['exit_s']:.2f}",
                      str(r["returncode"]), str(r["streams_finished"]))
    Console().print(table)
    Console().print(summary)
    args.out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
