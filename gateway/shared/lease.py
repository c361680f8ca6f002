"""Leader election among gateway replicas: a lease in Redis with a TTL, renewed by the leader,
and a fencing token on every control action.

The lease is one key, ``<prefix>:leader``, holding ``"<epoch> <replica JSON>"``: ``epoch`` is
``INCR <prefix>:leader:epoch`` at the moment it was taken (the fencing token: a later
leader's is different, and higher while Redis keeps its data). It is taken with
``SET NX PX`` only when free, renewed every third of the TTL by a script that extends it only
while it still holds this replica's value, and deleted on a clean stop so another replica
leads at once.

Two guards keep a leader that lost the lease from acting (a long GC pause, a SIGSTOP, a
network partition):

- locally, ``leading`` is false once ``valid_until`` passes: the start of the last renewal
  that succeeded plus the TTL less a margin for clock drift (the monotonic clock runs while a
  process is stopped), so a replica resumed after its TTL knows before it acts;
- in Redis, every write of shared state runs in a script that first checks the lease still
  holds this replica's value (``fenced``), so a write from an old leader is refused.

Redis unreachable: the leader keeps leading until ``valid_until`` (no other replica can take
the lease meanwhile either), then steps down; renewals resume when Redis answers.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway.config.redis import RedisConfig
from gateway.shared.client import UNREACHABLE

__all__ = ["DRIFT", "LeaderInfo", "LeaderLease"]

logger = logging.getLogger(__name__)

DRIFT = 0.1  # share of the TTL held back for clock drift between this process and Redis

_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local epoch = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], epoch .. ' ' .. ARGV[1], 'PX', ARGV[2])
return epoch
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class LeaderInfo:
    """Who holds the lease: its name, where its admin API is, its fencing token."""

    replica: str
    url: str
    epoch: int

    @classmethod
    def parse(cls, value: bytes | str | None) -> LeaderInfo | None:
        """The lease's value read back (None: no leader, or not a lease value)."""
        if value is None:
            return None
        text = value.decode() if isinstance(value, bytes) else value
        epoch, _, body = text.partition(" ")
        try:
            data = json.loads(body)
            return cls(str(data["replica"]), str(data["url"]), int(epoch))
        except (ValueError, KeyError, TypeError):
            return None


class LeaderLease:
    """This replica's side of the election (one per process; ``step`` is its loop's body)."""

    def __init__(self, client: aioredis.Redis, cfg: RedisConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.cfg = cfg
        self.clock = clock
        self.key, self.epoch_key = cfg.key("leader"), cfg.key("leader:epoch")
        self.ttl_ms = int(cfg.lease_ttl_s * 1000)
        self.me = json.dumps({"replica": cfg.replica, "url": cfg.advertise_url},
                             separators=(",", ":"))
        self.value: str | None = None  # the lease's value while this replica holds it
        self.valid_until = -math.inf
        self.leader: LeaderInfo | None = None  # as last read (this replica's own when leading)
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._unreachable = False

    @property
    def leading(self) -> bool:
        """Whether this replica may act as the leader now."""
        return self.value is not None and self.clock() < self.valid_until

    @property
    def epoch(self) -> int | None:
        """The fencing token while leading."""
        return None if self.value is None else int(self.value.split(" ", 1)[0])

    @property
    def renew_every_s(self) -> float:
        return self.cfg.lease_ttl_s / 3

    async def step(self) -> bool:
        """Renew the lease (leading) or try to take it (following); whether this replica
        leads afterwards. Redis unreachable: logged once, and the lease lapses locally."""
        started = self.clock()
        try:
            if self.value is not None and await self._renew(
                    keys=[self.key], args=[self.value, self.ttl_ms]):
                self._held(started)
            elif self.value is not None:
                logger.warning("replica %s lost the leader lease (epoch %s) to another "
                               "replica; stepping down", self.cfg.replica, self.epoch)
                self.value, self.valid_until = None, -math.inf
            if self.value is None:
                epoch = await self._acquire(keys=[self.key, self.epoch_key],
                                            args=[self.me, self.ttl_ms])
                if epoch is not None:
                    self.value = f"{int(epoch)} {self.me}"
                    self._held(started)
                    logger.warning("replica %s leads (epoch %d)", self.cfg.replica, int(epoch))
            self.leader = LeaderInfo.parse(
                self.value if self.value is not None else await self.client.get(self.key))
        except UNREACHABLE as exc:
            if not self._unreachable:
                logger.warning("Redis at %s unreachable (%r): the leader lease cannot be "
                               "renewed or taken until it answers", self.cfg.url, exc)
            self._unreachable = True
            if self.value is not None and not self.leading:
                logger.warning("replica %s: the leader lease lapsed (epoch %s); stepping "
                               "down", self.cfg.replica, self.epoch)
                self.value = None
            return self.leading
        if self._unreachable:
            logger.info("Redis at %s answers again", self.cfg.url)
            self._unreachable = False
        return self.leading

    def _held(self, started: float) -> None:
        self.valid_until = started + self.cfg.lease_ttl_s * (1 - DRIFT)

    async def release(self) -> None:
        """Give the lease up (a clean stop): another replica may lead at once."""
        value, self.value, self.valid_until = self.value, None, -math.inf
        if value is None:
            return
        try:
            await self._release(keys=[self.key], args=[value])
        except UNREACHABLE as exc:
            logger.warning("could not release the leader lease (%r); it lapses in %g s",
                           exc, self.cfg.lease_ttl_s)
