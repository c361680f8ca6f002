"""Gateway replicas in one process (aiohttp test servers) on one real Redis, in front of the
same emulated workers: the first one started leads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.config import GatewayConfig, PlacementMode, WorkerEndpoint
from gateway.config.engine import fallback_engine
from gateway.config.redis import parse_redis
from gateway.control.planning import round_robin
from gateway.server.app import create_app
from gateway.server.emulated import scaffold_entries, start_emulated, worker_configs
from gateway.server.keys import CONTROL, FLEET
from planner.demand import AdapterDemand
from tests.gateway.server.factories import BASE, MAX_MODEL_LEN
from tests.redis_server import free_port

TIME_SCALE = 200.0
# three gateways share one event loop here: a renewal may wait behind the others
LEASE_TTL_S = 3.0


@dataclass
class Replica:
    app: web.Application
    server: TestServer

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def leading(self) -> bool:
        return self.app[CONTROL].role.leading


async def until(check: Any, timeout: float = 20.0, what: str = "") -> float:
    """Wait for ``check()`` to hold; the seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not check():
        assert loop.time() - start < timeout, f"timed out waiting for {what or check}"
        await asyncio.sleep(0.02)
    return loop.time() - start


@asynccontextmanager
async def replica_stack(folder: Path, redis_url: str, adapters: Sequence[AdapterDemand], *,
                        replicas: int = 2, workers: int = 2, **overrides: Any
                        ) -> AsyncIterator[list[Replica]]:
    names = [f"w{i}" for i in range(workers)]
    engine = fallback_engine(adapters, "a100-80gb", MAX_MODEL_LEN)
    plan = replace(round_robin(adapters, names, max_model_len=MAX_MODEL_LEN),
                   engines=(engine,) * workers)
    fleet = await start_emulated(worker_configs(plan, served_model_name=BASE,
                                                time_scale=TIME_SCALE))
    entries = scaffold_entries(adapters, folder / "adapters")
    try:
        async with AsyncExitStack() as stack:
            out: list[Replica] = []
            for i in range(replicas):
                port = free_port()
                values: dict[str, Any] = {
                    "placement": PlacementMode.ROUND_ROBIN, "max_model_len": MAX_MODEL_LEN,
                    "health_interval_s": 0.2, "connect_timeout_s": 1.0,
                    "time_scale": TIME_SCALE, "replan_interval_s": 0, "port": port,
                    "validate_replans": False, "train_target": False,
                    "redis": parse_redis({"url": redis_url, "replica": f"r{i}",
                                          "lease_ttl_s": LEASE_TTL_S}, host="127.0.0.1", port=port)}
                values.update(overrides)
                cfg = GatewayConfig(base_model=BASE, workers=tuple(
                    WorkerEndpoint(n, u) for n, u in zip(names, fleet.urls, strict=True)),
                    adapters=entries, **values)
                app = create_app(cfg, plan=plan)
                server = await stack.enter_async_context(TestServer(app, port=port))
                out.append(Replica(app, server))
                await until(lambda a=app: a[FLEET].ready, what=f"replica r{i} ready")
            yield out
    finally:
        await fleet.stop()
