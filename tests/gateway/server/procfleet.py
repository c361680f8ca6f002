"""Emulated workers in processes of their own (``lorafleet worker --emulate``, one process
each), so that a fault test can kill or freeze one and the gateway's event loop is its own.

``fault_stack`` puts the gateway (in-process, aiohttp's test server, as ``factories``) in front
of them, with the same engine options the workers were started with.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.config import GatewayConfig, PlacementMode, WorkerEndpoint
from gateway.config.engine import fallback_engine
from gateway.control.planning import round_robin
from gateway.server.app import create_app
from gateway.server.emulated import scaffold_entries
from gateway.server.keys import FLEET
from planner.demand import AdapterDemand
from tests.gateway.server.factories import BASE, MAX_MODEL_LEN
from twin.specs import EngineConfig

START_TIMEOUT_S = 60.0  # a cold interpreter importing the twin on a busy machine


@dataclass
class WorkerProcess:
    """One ``lorafleet worker --emulate`` process and the URL it printed."""

    proc: asyncio.subprocess.Process
    url: str
    log: Path

    def kill(self) -> None:
        """SIGKILL: the process dies at once, its sockets are reset by the kernel."""
        self.proc.send_signal(signal.SIGKILL)

    def freeze(self) -> None:
        """SIGSTOP: the process hangs; the kernel still accepts connections for it."""
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    async def stop(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)  # a frozen process cannot exit
                self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


def worker_command(engine: EngineConfig, *, time_scale: float, seed: int) -> list[str]:
    """The command line of one emulated worker running ``engine`` on a free port."""
    return [sys.executable, "-m", "gateway.cli", "worker", "--emulate", "--port", "0",
            "--served-model-name", BASE, "--max-loras", str(engine.max_loras),
            "--max-cpu-loras", str(engine.max_cpu_loras or engine.max_loras),
            "--max-lora-rank", str(engine.max_lora_rank), "--max-model-len",
            str(engine.max_model_len), "--max-num-seqs", str(engine.max_num_seqs),
            "--time-scale", str(time_scale), "--seed", str(seed)]


async def start_printing_url(command: list[str], log: Path, what: str,
                             env: dict[str, str] | None = None
                             ) -> tuple[asyncio.subprocess.Process, str]:
    """Start ``command`` (stderr to ``log``) and read the URL it prints first; the process
    is killed and ``RuntimeError`` raised (with the log's end) if none comes in time."""
    with log.open("wb") as err:  # the child keeps its own descriptor
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.PIPE, stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
    except TimeoutError:
        line = b""
    url = line.decode().strip()
    if not url.startswith("http://"):
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"{what} did not start: {log.read_text()[-3000:]}")
    return proc, url


async def _start_one(command: list[str], log: Path) -> WorkerProcess:
    return WorkerProcess(*await start_printing_url(command, log, "worker"), log)


@asynccontextmanager
async def worker_processes(count: int, engine: EngineConfig, log_dir: Path, *,
                           time_scale: float = 1.0) -> AsyncIterator[list[WorkerProcess]]:
    """``count`` workers, started together; all stopped (thawed first) at the end."""
    log_dir.mkdir(parents=True, exist_ok=True)
    started = await asyncio.gather(
        *(_start_one(worker_command(engine, time_scale=time_scale, seed=i),
                     log_dir / f"w{i}.log") for i in range(count)), return_exceptions=True)
    workers = [w for w in started if isinstance(w, WorkerProcess)]
    try:
        failed = [e for e in started if isinstance(e, BaseException)]
        if failed:
            raise failed[0]
        yield workers
    finally:
        await asyncio.gather(*(w.stop() for w in workers))


@dataclass
class FaultStack:
    """The gateway (``app`` served at ``url``) and its worker processes."""

    url: str
    app: web.Application
    session: aiohttp.ClientSession
    processes: list[WorkerProcess]

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"


@asynccontextmanager
async def fault_stack(folder: Path, adapters: Sequence[AdapterDemand], *, workers: int = 3,
                      time_scale: float = 1.0, **overrides: Any) -> AsyncIterator[FaultStack]:
    """``workers`` worker processes, each with room for every adapter, round-robin placement,
    and the gateway in front (fast health checks; ``overrides`` set other config fields)."""
    names = [f"w{i}" for i in range(workers)]
    engine = fallback_engine(adapters, "a100-80gb", MAX_MODEL_LEN)
    plan = round_robin(adapters, names, max_model_len=MAX_MODEL_LEN)
    plan = replace(plan, engines=(engine,) * workers)
    async with worker_processes(workers, engine, folder / "logs",
                                time_scale=time_scale) as procs:
        values: dict[str, Any] = {"placement": PlacementMode.ROUND_ROBIN,
                                  "max_model_len": MAX_MODEL_LEN, "health_interval_s": 0.2,
                                  "connect_timeout_s": 1.0, "replan_interval_s": 0,
                                  "time_scale": time_scale}
        values.update(overrides)
        cfg = GatewayConfig(base_model=BASE, workers=tuple(
            WorkerEndpoint(n, p.url) for n, p in zip(names, procs, strict=True)),
            adapters=scaffold_entries(adapters, folder / "adapters"), **values)
        app = create_app(cfg, plan=plan)
        async with TestServer(app) as server, aiohttp.ClientSession() as session:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while not app[FLEET].ready:
                assert loop.time() < deadline, "the gateway did not become ready"
                await asyncio.sleep(0.02)
            yield FaultStack(str(server.make_url("")).rstrip("/"), app, session, procs)
