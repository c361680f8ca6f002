"""What ``bench/gateway_overhead.py`` and ``bench/peers.py`` share: services in their own
processes on free ports (their CPU seconds and memory read from ``/proc``), and the load
generators, which run in a client process of their own.

Two generators, both aiohttp on one event loop, each request on a kept-alive connection:

- closed loop: ``concurrency`` requests in flight, each sent as soon as the last one ends,
  after ``warmup`` requests whose latency is not recorded;
- open loop at a fixed rate: request ``i`` is due at ``i / rate`` s and its latency counts
  from then, so a generator or a server that falls behind shows up in the latency (no
  coordinated omission).

Non-streaming latency is send to last byte; a streaming request records its time to the first
chunk (TTFT) and counts its chunks. As a script, it runs one generator from a JSON spec and
prints one JSON line: ``python bench/peers_load.py '{"kind": "closed", ...}'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def free_port() -> int:
    """A free TCP port on the loopback interface."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def taskset(cpus: str | None) -> list[str]:
    """The ``taskset -c`` prefix pinning a command to ``cpus`` (nothing if unset or absent)."""
    if cpus is None or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", cpus]


# -- processes ---------------------------------------------------------------------------------

def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError):
                    text = Path(f"/proc/{p}/task/{task}/children").read_text()
                    todo.extend(int(c) for c in text.split())
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (``/proc/<pid>/stat``)."""
    total = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{p}/stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its live descendants, MiB (``/proc/<pid>/statm``)."""
    pages = 0
    for p in _tree(pid):
        with contextlib.suppress(OSError):
            pages += int(Path(f"/proc/{p}/statm").read_text().split()[1])
    return pages * PAGE_KB / 1024


@dataclass
class Service:
    """A server in its own process (its output goes to ``log``); clients send ``headers``."""

    name: str
    proc: subprocess.Popen[bytes]
    urls: list[str]
    log: Path
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.urls[0]

    def cpu_s(self) -> float:
        return cpu_seconds(self.proc.pid)

    def rss_mb(self) -> float:
        return rss_mb(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return 0


def start_service(name: str, cmd: list[str], *, log_dir: Path, ready: list[str] | None = None,
                  urls_on_stdout: int = 0, env: dict[str, str] | None = None,
                  timeout_s: float = 180.0) -> Service:
    """Start ``cmd`` and wait until it is up.

    Either ``ready`` (URLs that must answer 200) or ``urls_on_stdout`` (the command prints
    that many URLs, one a line, once it listens, as ``lorafleet worker|fleet|serve`` do).
    """
    log = log_dir / f"{name}.log"
    err: IO[bytes] = log.open("wb")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE if urls_on_stdout else err,
                            stderr=err, env={**os.environ, **(env or {})}, cwd=ROOT)
    service = Service(name, proc, list(ready or []), log)
    deadline = time.monotonic() + timeout_s
    try:
        if urls_on_stdout:
            assert proc.stdout is not None
            service.urls = [proc.stdout.readline().decode().strip() for _ in range(urls_on_stdout)]
            if not all(u.startswith("http") for u in service.urls):
                raise RuntimeError("printed no URL")
        else:
            pending = list(ready or [])
            while pending:
                if proc.poll() is not None:
                    raise RuntimeError(f"exited with status {proc.returncode}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not ready after {timeout_s:.0f} s")
                if _get(pending[0]) == 200:
                    pending.pop(0)
                else:
                    time.sleep(0.2)
            service.urls = [f"{urlsplit(u).scheme}://{urlsplit(u).netloc}"
                            for u in (ready or [])]
    except Exception as exc:
        service.stop()
        tail = log.read_text(errors="replace")[-1500:]
        raise RuntimeError(f"{name}: {exc}; log tail:\n{tail}") from None
    return service


# -- the client process ------------------------------------------------------------------------

@dataclass
class LoadSpec:
    """One generator run. ``kind`` is ``closed`` (``concurrency``, ``seconds`` after
    ``warmup`` requests) or ``open`` (``rate`` requests/s for ``seconds``)."""

    kind: str
    urls: list[str]
    model: str
    seconds: float
    concurrency: int = 1
    rate: float = 0.0
    warmup: int = 20
    stream: bool = False
    max_tokens: int = 16
    prompt: str = "Say something about LoRA adapters. " * 8
    headers: dict[str, str] = field(default_factory=dict)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = q / 100 * (len(ordered) - 1)
    lo = int(rank)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


async def _one(session: Any, url: str, spec: LoadSpec) -> tuple[float, float, int, bool]:
    """(send time; seconds to the last byte or, streaming, to the first chunk; chunks; ok)."""
    body = {"model": spec.model, "prompt": spec.prompt, "max_tokens": spec.max_tokens,
            "stream": spec.stream}
    t0 = time.perf_counter()
    first = 0.0
    chunks = 0
    async with session.post(url + "/v1/completions", json=body, headers=spec.headers) as resp:
        if not spec.stream:
            await resp.read()
            return t0, time.perf_counter() - t0, 0, resp.status == 200
        async for line in resp.content:
            if line.startswith(b"data:") and not line.startswith(b"data: [DONE]"):
                if not chunks:
                    first = time.perf_counter() - t0
                chunks += 1
        return t0, first, chunks, resp.status == 200 and chunks > 0


async def run_load(spec: LoadSpec) -> dict[str, Any]:
    """Run ``spec`` in this process; latencies in ms."""
    import aiohttp

    lat: list[float] = []
    counts = {"sent": 0, "ok": 0, "failed": 0, "chunks": 0}
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async def call(i: int, due: float | None, record: bool) -> None:
            counts["sent"] += 1
            url = spec.urls[i % len(spec.urls)]
            try:
                sent, seconds, chunks, ok = await _one(session, url, spec)
            except (aiohttp.ClientError, TimeoutError):
                sent, seconds, chunks, ok = 0.0, 0.0, 0, False
            counts["chunks"] += chunks
            counts["ok" if ok else "failed"] += 1
            if record and ok:
                late = 0.0 if due is None else max(0.0, sent - due)
                lat.append((seconds + late) * 1e3)

        start = time.perf_counter()
        if spec.kind == "closed":
            ids = iter(range(1 << 62))
            for _ in range(spec.warmup):
                await call(next(ids), None, False)
            start = time.perf_counter()
            end = start + spec.seconds

            async def user() -> None:
                while time.perf_counter() < end:
                    await call(next(ids), None, True)

            await asyncio.gather(*(user() for _ in range(spec.concurrency)))
        else:
            tasks = []
            n = int(spec.rate * spec.seconds)
            for i in range(n):
                due = start + i / spec.rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(call(i, due, True)))
            await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
    return {"kind": spec.kind, "concurrency": spec.concurrency, "rate": spec.rate,
            "stream": spec.stream, **counts, "measured": len(lat), "wall_s": wall,
            "achieved_rps": len(lat) / wall if wall > 0 else 0.0,
            "p50_ms": pct(lat, 50), "p90_ms": pct(lat, 90), "p99_ms": pct(lat, 99),
            "mean_ms": sum(lat) / len(lat) if lat else float("nan")}


def run_client(spec: LoadSpec, *, cpus: str | None = None) -> dict[str, Any]:
    """Run ``spec`` in a client process of its own (pinned to ``cpus``); its JSON result."""
    cmd = [*taskset(cpus), sys.executable, str(Path(__file__).resolve()),
           json.dumps(spec.__dict__)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT,
                         timeout=spec.seconds + 300)
    if out.returncode != 0:
        raise RuntimeError(f"load client failed: {out.stderr[-1500:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def measure(spec: LoadSpec, *, watched: Service | None = None,
            cpus: str | None = None) -> dict[str, Any]:
    """``run_client(spec)``, plus the CPU seconds ``watched`` spent meanwhile (per 1000
    requests sent, warm-up included, and per streamed chunk) and its memory after."""
    cpu0 = watched.cpu_s() if watched is not None else 0.0
    result = run_client(spec, cpus=cpus)
    if watched is not None:
        cpu = watched.cpu_s() - cpu0
        result["cpu_s"] = cpu
        result["cpu_s_per_1k"] = cpu / max(1, result["sent"]) * 1000
        result["cpu_us_per_chunk"] = cpu / result["chunks"] * 1e6 if result["chunks"] else None
        result["rss_mb"] = watched.rss_mb()
    return result


def _client_main(argv: list[str]) -> None:
    spec = LoadSpec(**json.loads(argv[0]))
    try:
        import uvloop
        result = uvloop.run(run_load(spec))
    except ImportError:
        result = asyncio.run(run_load(spec))
    print(json.dumps(result))


if __name__ == "__main__":
    _client_main(sys.argv[1:])


def clean_json(value: Any) -> Any:
    """NaN (a run with no successful request) as null, for strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_json(v) for v in value]
    return value
