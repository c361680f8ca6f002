"""The replicas' Redis connection (redis-py's asyncio client, one pool per process)."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gateway.config.redis import RedisConfig

__all__ = ["UNREACHABLE", "RedisError", "connect"]

# What a Redis that is down, restarting or too slow raises (redis-py's own classes, the OS's
# when a connection breaks mid-command), or one that refuses a command (``RedisError``)
UNREACHABLE: tuple[type[Exception], ...] = (
    RedisConnectionError, RedisTimeoutError, RedisError, ConnectionError, TimeoutError,
    OSError)


def connect(cfg: RedisConfig) -> aioredis.Redis:
    """A client for ``cfg.url``: every command bounded by ``op_timeout_s``, a connection by
    ``connect_timeout_s``; nothing is sent until the first command."""
    return aioredis.Redis.from_url(
        cfg.url, socket_connect_timeout=cfg.connect_timeout_s,
        socket_timeout=cfg.op_timeout_s, decode_responses=False,
        health_check_interval=max(1, int(cfg.lease_ttl_s)), retry_on_timeout=False)
