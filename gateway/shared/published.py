"""The fleet's state as the leader publishes it: one JSON document and its version in Redis.

The leader writes both in one script that first checks the lease still holds its value
(a fenced write: an old leader's is refused); followers poll the version (a few bytes, every
``POLL_S``) and read the document when it changed, both in one ``MGET``. A version is
``"<epoch>:<term>:<n>"``: the lease's epoch, a random id of the leader's term (a Redis that
lost its data counts epochs from 1 again) and the term's count of publications, so a
follower compares versions for equality only.

The document is the leader's to define (``gateway.control.replicas``); here it is bytes.
"""

from __future__ import annotations

import secrets
from typing import Any

import redis
import redis.asyncio as aioredis

from gateway.config.redis import RedisConfig

__all__ = ["POLL_S", "Published", "load_now"]

POLL_S = 0.2  # a follower routes by a new placement within this (plus one read)

_PUBLISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], ARGV[3])
return 1
"""


class Published:
    """The published state's keys, for the leader (``publish``) and followers (``read``)."""

    def __init__(self, client: aioredis.Redis, cfg: RedisConfig) -> None:
        self.client = client
        self.lease_key = cfg.key("leader")
        self.state_key, self.version_key = cfg.key("state"), cfg.key("state:version")
        self._publish = client.register_script(_PUBLISH)
        self._term = secrets.token_hex(4)
        self._count = 0

    async def publish(self, lease_value: str, epoch: int, document: bytes) -> str | None:
        """Write ``document`` as the leader holding ``lease_value``; its version, or None
        when the lease holds another value (this replica leads no more: nothing written)."""
        self._count += 1
        version = f"{epoch}:{self._term}:{self._count}"
        done = await self._publish(keys=[self.lease_key, self.state_key, self.version_key],
                                   args=[lease_value, document, version])
        return version if done else None

    async def version(self) -> str | None:
        value: Any = await self.client.get(self.version_key)
        return None if value is None else bytes(value).decode()

    async def read(self) -> tuple[str, bytes] | None:
        """(version, document) as last published; None when nothing is."""
        found: Any = await self.client.mget(self.version_key, self.state_key)
        version, document = found
        if version is None or document is None:
            return None
        return bytes(version).decode(), bytes(document)


def load_now(cfg: RedisConfig) -> bytes | None:
    """The published document, read synchronously at start-up (``create_app``); None when
    nothing is published. Redis errors propagate (the caller decides)."""
    client = redis.Redis.from_url(cfg.url, socket_connect_timeout=cfg.connect_timeout_s,
                                  socket_timeout=cfg.op_timeout_s)
    try:
        value: Any = client.get(cfg.key("state"))
        return None if value is None else bytes(value)
    finally:
        client.close()
