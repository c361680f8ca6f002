"""The ``prefer_loaded`` baseline of ``bench/fleet.py``: a fixed fleet behind a small proxy
that routes as the Kubernetes inference gateway does by default (a worker that already holds
the adapter, else the least loaded one) and loads adapters where they are first routed.

lorafleet's own gateway routes only to workers its plan loaded an adapter on, so this policy
gets a proxy of its own: ``twin.routing.Router`` with ``PREFER_LOADED`` (the same code the
cluster twin and the gateway use) over a placement that grows as adapters are loaded through
vLLM's runtime API (``/v1/load_lora_adapter``). Nothing is ever unloaded: the workers' GPU
LoRA slots swap adapters through vLLM's LRU (counted by the engines). Requests and streams
are passed through unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from gateway.fleet.lora_api import load_adapter
from twin.routing import Placement, Router, RoutingPolicy, WorkerPlacement

LOAD_TIMEOUT_S = 60.0


@dataclass(slots=True)
class PreferLoaded:
    """Routing state: who holds what, the router, and the loads made."""

    urls: list[str]
    paths: Mapping[str, str]  # adapter -> the folder workers load it from
    router: Router = field(init=False)
    loads: int = 0
    _loading: dict[tuple[int, str], asyncio.Future[None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.router = Router(Placement(tuple(WorkerPlacement(name=f"w{i}", shares={})
                                             for i in range(len(self.urls)))),
                             RoutingPolicy.PREFER_LOADED)

    def holds(self, index: int, adapter: str) -> bool:
        return adapter in self.router.placement.workers[index].shares

    def adapters_per_worker(self) -> list[int]:
        return [len(w.shares) for w in self.router.placement.workers]

    def _hold(self, index: int, adapter: str) -> None:
        workers = list(self.router.placement.workers)
        w = workers[index]
        workers[index] = WorkerPlacement(name=w.name, shares={**w.shares, adapter: 1.0})
        self.router.placement = Placement(tuple(workers))

    async def ensure(self, session: aiohttp.ClientSession, index: int, adapter: str) -> None:
        """Load ``adapter`` on worker ``index`` once (requests for it wait for the load)."""
        if self.holds(index, adapter):
            return
        key = (index, adapter)
        future = self._loading.get(key)
        if future is None:
            future = asyncio.ensure_future(load_adapter(
                session, self.urls[index], adapter, self.paths[adapter],
                timeout=LOAD_TIMEOUT_S))
            self._loading[key] = future
            try:
                await asyncio.shield(future)
            finally:
                del self._loading[key]
            self.loads += 1
            self._hold(index, adapter)
            return
        await asyncio.shield(future)


_STATE = web.AppKey("prefer_state", PreferLoaded)
_SESSION = web.AppKey("prefer_session", aiohttp.ClientSession)


async def _session(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600.0),
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        app[_SESSION] = session
        yield


async def _forward(request: web.Request) -> web.StreamResponse:
    state, session = request.app[_STATE], request.app[_SESSION]
    raw = await request.read()
    adapter = str((await request.json()).get("model", ""))
    if adapter not in state.paths:
        raise web.HTTPNotFound(text=f"unknown model {adapter!r}")
    index = state.router.route(adapter)
    try:
        await state.ensure(session, index, adapter)
        async with session.post(state.urls[index] + request.path, data=raw,
                                headers={"Content-Type": "application/json"}) as upstream:
            out = web.StreamResponse(status=upstream.status, headers={
                "Content-Type": upstream.headers.get("Content-Type", "application/json")})
            await out.prepare(request)
            async for chunk in upstream.content.iter_any():
                await out.write(chunk)
            await out.write_eof()
            return out
    finally:
        state.router.done(index)


def create_proxy(urls: Sequence[str], paths: Mapping[str, str]) -> web.Application:
    """The proxy over workers at ``urls``; ``paths`` names every adapter it may load."""
    app = web.Application()
    app[_STATE] = PreferLoaded(list(urls), dict(paths))
    app.cleanup_ctx.append(_session)
    app.router.add_post("/v1/completions", _forward)
    app.router.add_post("/v1/chat/completions", _forward)
    return app


def state_of(app: web.Application) -> PreferLoaded:
    return app[_STATE]
