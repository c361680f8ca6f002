"""Admin calls on a follower replica: passed to the leader (its ``advertise_url``) and its
answer returned as it is; with no leader reachable, 503 (or acted on here with
``redis.admin_fail_open``). Without ``redis:`` every call is this replica's own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
from aiohttp import web

from gateway.config.redis import RedisConfig
from gateway.errors import ApiError
from gateway.server.admin import PREFIX as ADMIN_PREFIX
from gateway.server.keys import CONTROL

__all__ = ["FORWARDED", "forward_admin", "forward_session"]

FORWARDED = "X-Lorafleet-Forwarded-By"  # an admin call a follower passed to the leader
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_FORWARD_SESSION = web.AppKey("gateway_forward_session", aiohttp.ClientSession)


async def forward_session(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: the session admin calls are forwarded with."""
    async with aiohttp.ClientSession() as session:
        app[_FORWARD_SESSION] = session
        yield


@web.middleware
async def forward_admin(request: web.Request, handler: Handler) -> web.StreamResponse:
    """On a follower, an admin call goes to the leader and its answer comes back."""
    role = request.app[CONTROL].role
    if (not role.shared or role.leading
            or not (request.path == ADMIN_PREFIX or request.path.startswith(ADMIN_PREFIX + "/"))):
        return await handler(request)
    cfg = request.app[CONTROL].cfg.redis
    assert cfg is not None
    if request.headers.get(FORWARDED):  # this replica was taken for the leader: no more
        return await _unforwarded(request, handler, cfg, "this replica does not lead")
    body = await request.read()
    url = role.leader_url or await role.refresh_leader()
    for attempt in range(2):
        if role.leading:  # it took the lead meanwhile
            return await handler(request)
        if url is None:
            return await _unforwarded(request, handler, cfg, "no leader replica is known")
        try:
            return await _forward(request, url, body, role.name)
        except aiohttp.ClientConnectorError:  # the leader it knew is gone: who leads now?
            fresh = await role.refresh_leader() if attempt == 0 else None
            if fresh is None or fresh == url:
                return await _unforwarded(request, handler, cfg,
                                          f"the leader replica at {url} cannot be reached")
            url = fresh
        except (aiohttp.ClientError, TimeoutError) as exc:
            return await _unforwarded(request, handler, cfg, f"the leader replica at {url} "
                                      f"failed ({type(exc).__name__})")
    raise AssertionError("unreachable")


async def _forward(request: web.Request, url: str, body: bytes, name: str) -> web.Response:
    headers = {k: v for k, v in request.headers.items()
               if k.lower() in ("authorization", "content-type", "accept")}
    headers[FORWARDED] = name
    async with request.app[_FORWARD_SESSION].request(
            request.method, url + request.path_qs, data=body, headers=headers,
            timeout=aiohttp.ClientTimeout(total=None)) as resp:
        out = web.Response(body=await resp.read(), status=resp.status)
        for key in ("Content-Type", "Retry-After"):
            if key in resp.headers:
                out.headers[key] = resp.headers[key]
        return out


async def _unforwarded(request: web.Request, handler: Handler, cfg: RedisConfig,
                       why: str) -> web.StreamResponse:
    """An admin call no leader takes: acted on here (``admin_fail_open``), else 503."""
    if cfg.admin_fail_open:
        return await handler(request)
    raise ApiError.unavailable(f"{why} to take admin calls; retry once one leads",
                               max(1, round(cfg.lease_ttl_s)))
