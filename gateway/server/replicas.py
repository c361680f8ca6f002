"""Replicas on shared state: the composition of ``gateway.shared`` into the app (nothing
happens without ``redis:`` in the config: one gateway process, the embedded default)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from gateway.keys import GATEWAY_CONFIG, REDIS
from gateway.shared.client import connect

__all__ = ["redis_client"]


async def redis_client(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx``: ``app[REDIS]``, the replica's Redis client (None without ``redis:``)."""
    cfg = app[GATEWAY_CONFIG].redis
    client = None if cfg is None else connect(cfg)
    app[REDIS] = client
    try:
        yield
    finally:
        if client is not None:
            await client.aclose()
