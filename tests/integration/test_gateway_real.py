"""The gateway in front of two real vLLM CPU servers, with the official ``openai`` client:
completions, streamed chat, and a re-plan (a drain of one server) that moves its adapters to
the other with vLLM's runtime load/unload while requests flow, with zero failed requests.

The second server starts here, pinned to the other core than the session's server's engine
(``VLLM_CPU_OMP_THREADS_BIND``), so the two do not fight over one core.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI

from gateway.config import AdapterEntry, GatewayConfig, PlacementMode, WorkerEndpoint
from gateway.control.planning import InitialPlan
from gateway.fleet.lora_api import list_adapters, load_adapter, unload_adapter
from gateway.server.app import create_app
from gateway.server.keys import CONTROL, FLEET
from planner.demand import AdapterDemand
from twin.catalog import get_gpu
from twin.routing import BASE_MODEL, Placement, WorkerPlacement
from twin.specs import default_engine_for

from .server import (
    BASE_MODEL_NAME,
    RealVllm,
    free_port,
    health_timeout,
    server_command,
    server_env,
    start_server,
    stop_server,
    vllm_python,
    wait_healthy,
)

pytestmark = pytest.mark.real_vllm

ROOT = Path(__file__).resolve().parents[2]

MOVED = ("tiny-b-r16", "tiny-d-r16")  # on the second server, until it is drained
KEPT = ("tiny-a-r8", "tiny-c-r8")


@pytest.fixture(scope="module")
def second_vllm(real_vllm: RealVllm, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("real-vllm-2") / "server.log"
    base = real_vllm.cache_dir / "base"
    proc = start_server(server_command(vllm_python(), base, port, {}), server_env("1"), log)
    try:
        wait_healthy(proc, url, log, timeout_s=health_timeout())
        yield url
    finally:
        stop_server(proc)


def _config(real_vllm: RealVllm, urls: list[str]) -> tuple[GatewayConfig, InitialPlan]:
    adapters = tuple(AdapterEntry(AdapterDemand(name=n, rank=real_vllm.ranks[n], rate=0.5,
                                                input_tokens=16, output_tokens=8),
                                  str(real_vllm.adapters[n])) for n in (*KEPT, *MOVED))
    cfg = GatewayConfig(base_model=BASE_MODEL_NAME, model="tiny-llama",
                        workers=tuple(WorkerEndpoint(f"w{i}", u) for i, u in enumerate(urls)),
                        adapters=adapters, placement=PlacementMode.ROUND_ROBIN,
                        max_model_len=512, replan_interval_s=0, validate_replans=False,
                        health_interval_s=1.0, load_timeout_s=60, read_timeout_s=120,
                        train_target=False)  # no twin runs beside the servers' own CPU work
    # the servers' own engine options (tests/integration/server.py ENGINE_ARGS)
    engine = default_engine_for(get_gpu(cfg.gpu), max_loras=2, max_cpu_loras=4,
                                max_lora_rank=16, max_model_len=512)
    placement = Placement((
        WorkerPlacement(name="w0", shares={**dict.fromkeys(KEPT, 1.0), BASE_MODEL: 0.5}),
        WorkerPlacement(name="w1", shares={**dict.fromkeys(MOVED, 1.0), BASE_MODEL: 0.5})))
    return cfg, InitialPlan(placement=placement, engines=(engine, engine), planned_gpus=2)


@pytest.fixture(autouse=True)
async def _startup_adapters_after(real_vllm: RealVllm) -> AsyncIterator[None]:
    """The session's server goes back to its start-up adapter alone for the other tests,
    whatever the gateway here moved onto or off it."""
    yield
    startup = real_vllm.startup_adapter
    async with aiohttp.ClientSession() as session:
        for name in await list_adapters(session, real_vllm.base_url, timeout=60) - {startup}:
            await unload_adapter(session, real_vllm.base_url, name, timeout=60)
        await load_adapter(session, real_vllm.base_url, startup,
                           str(real_vllm.adapters[startup]), timeout=60)


async def test_gateway_serves_two_real_servers_and_moves_adapters_under_load(
        real_vllm: RealVllm, second_vllm: str) -> None:
    cfg, plan = _config(real_vllm, [real_vllm.base_url, second_vllm])
    app = create_app(cfg, plan=plan)
    async with aiohttp.ClientSession() as session, TestServer(app) as server:
        await _exercise(app, server, session, real_vllm, second_vllm)


@dataclass
class _Traffic:
    """Clients that send requests through the gateway until ``stop``, counting those served
    and the errors of those that failed."""

    url: str
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    served: int = 0
    failed: list[str] = field(default_factory=list)

    async def loop(self, k: int, models: list[str],
                   one: Callable[[AsyncOpenAI, str, int], Awaitable[None]]) -> None:
        async with AsyncOpenAI(base_url=self.url, api_key="x", max_retries=0,
                               timeout=120) as client:
            i = k
            while not self.stop.is_set():
                model = models[i % len(models)]
                i += 1
                try:
                    await one(client, model, i)
                    self.served += 1
                except (openai.APIError, AssertionError) as exc:
                    self.failed.append(f"{model}: {exc!r}")


async def _ready(app: web.Application) -> None:
    for _ in range(600):
        if app[FLEET].ready:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the gateway never became ready")


async def _chat_or_completion(client: AsyncOpenAI, model: str, i: int) -> None:
    if i % 2:
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}],
            max_tokens=8, stream=True, temperature=0)
        chunks = [c async for c in stream]
        assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    else:
        done = await client.completions.create(
            model=model, prompt="hello", max_tokens=8, temperature=0)
        assert done.usage is not None and done.usage.completion_tokens > 0


async def _exercise(app: web.Application, server: TestServer,
                    session: aiohttp.ClientSession, real_vllm: RealVllm,
                    second_vllm: str) -> None:
    fleet = app[FLEET]
    await _ready(app)
    assert set(MOVED) <= await list_adapters(session, second_vllm, timeout=10)
    traffic = _Traffic(str(server.make_url("/v1")))
    models = [*KEPT, *MOVED, BASE_MODEL_NAME]
    tasks = [asyncio.create_task(traffic.loop(k, models, _chat_or_completion))
             for k in range(3)]
    try:
        while traffic.served < 10:
            await asyncio.sleep(0.2)
        result = await app[CONTROL].replanner.drain(1)  # re-plan: w1's adapters go to w0
        before = traffic.served
        while traffic.served < before + 10:
            await asyncio.sleep(0.2)
    finally:
        traffic.stop.set()
        await asyncio.gather(*tasks)
    failed = traffic.failed

    _check(result, failed, fleet.holding())
    await app[CONTROL].releases.settled()  # the source drains and unloads in the background
    on_w0 = await list_adapters(session, real_vllm.base_url, timeout=10)
    on_w1 = await list_adapters(session, second_vllm, timeout=10)
    assert set(MOVED) <= on_w0 and not set(MOVED) & on_w1  # loaded, then unloaded


def _check(result: dict[str, Any], failed: list[str],
           holding: dict[str, frozenset[str]]) -> None:
    assert result["migration"]["outcome"] == "ok", result
    assert set(result["diff"]["moved"]) == set(MOVED)
    assert not failed, failed[:5]
    assert holding == {"w0": frozenset((*KEPT, *MOVED)), "w1": frozenset()}


def _too_fast_profile(folder: Path) -> Path:
    """The shipped CPU profile with every step-time coefficient halved: a plan made with it
    expects the servers to be twice as fast as they are (their true speed: 0.5)."""
    data = json.loads((ROOT / "twin/profiles/cpu-tiny-llama.json").read_text())
    linear = data["linear"]
    for table in (linear, linear["lora"]):
        for key, value in table.items():
            if key.endswith("_s") and isinstance(value, float):
                table[key] = value / 2
    data["name"] = "cpu-tiny-llama-2x-fast"
    path = folder / "cpu-tiny-llama-2x-fast.json"
    path.write_text(json.dumps(data))
    return path


# Windows per server before the speeds are compared: with 6, a clean-clone run read the two
# identical servers at 0.275 and 0.135 (the second reloading adapters the test before moved
# away); the median over more windows settles.
WINDOWS = 10


async def test_gateway_learns_each_real_servers_speed(
        real_vllm: RealVllm, second_vllm: str, tmp_path: Path) -> None:
    """Planned with a profile 2x too fast, the gateway learns under load, from each real
    server's own windows, a speed well below 1 (unclamped: the servers under this test's
    load, two servers, the gateway and the client on two cores, run several times slower
    than even the shipped profile says), about the same for the two identical servers,
    re-plans with it (at the planner's floor, 0.5), and fails nothing."""
    cfg, plan = _config(real_vllm, [real_vllm.base_url, second_vllm])
    cfg = dataclasses.replace(cfg, profile=str(_too_fast_profile(tmp_path)),
                              replan_interval_s=20, observe_window_s=10, move_budget=0)
    app = create_app(cfg, plan=plan)
    async with TestServer(app) as server:
        await _ready(app)
        traffic = _Traffic(str(server.make_url("/v1")))

        async def streamed(client: AsyncOpenAI, model: str, i: int) -> None:
            stream = await client.completions.create(
                model=model, prompt="hello " * 8, max_tokens=48, stream=True, temperature=0)
            async for _ in stream:
                pass

        replanner = app[CONTROL].replanner
        tasks = [asyncio.create_task(traffic.loop(k, [*KEPT, *MOVED], streamed))
                 for k in range(8)]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 300
        online = replanner.learner.online
        try:  # a periodic re-plan on both speeds, each from WINDOWS windows at least
            while loop.time() < deadline and not (
                    min(online.windows("w0"), online.windows("w1")) >= WINDOWS and any(
                        len(b["speeds"]) == 2 and b["trigger"] == "periodic"
                        for b in replanner.history)):
                await asyncio.sleep(0.5)
        finally:
            traffic.stop.set()
            await asyncio.gather(*tasks)
    failed = traffic.failed
    learner = replanner.learner
    # unclamped (the speed the plan uses is clamped to OnlineLatency.bounds, 0.5 at least)
    raw = {w: round(1 / learner.online.ratio(w), 3) for w in ("w0", "w1")}
    windows = {w: learner.online.windows(w) for w in ("w0", "w1")}
    print(f"learned speeds {raw} from {windows} windows")  # for the note
    assert not failed, failed[:5]
    replanned = [b for b in replanner.history if len(b["speeds"]) == 2]
    assert replanned, list(learner.observed)
    for w, speed in replanned[0]["speeds"].items():
        assert 0 < speed <= 0.5 + 1e-9, (w, speed)  # the bounds' floor (less: the guard's)
    assert all(0 < speed < 0.45 for speed in raw.values()), raw  # the profile is too fast
    # one speed, two servers, within 2x: the two share two cores with the gateway and the
    # clients unevenly (read 1.38x apart on CI, 1.63x here beside a lint run)
    assert max(raw.values()) < 2.0 * min(raw.values()), raw
