"""Fleet-wide per-key rate limits: one token bucket per key in Redis, shared by every replica.

``SharedBuckets.take`` runs one Lua script (``TAKE``) per request of a rate-limited key, atomic
in Redis: it refills the bucket at ``<prefix>:bucket:<key name>`` (a hash: ``tokens``, ``at``)
by Redis's own clock (``TIME``: one clock for every replica, whatever theirs say), takes a
token when there is one, and sets the hash to expire about when it would be full again (a
bucket that is missing is a full one, so an idle key's bucket just vanishes). redis-py sends
the script with EVALSHA and loads it again when Redis answers NOSCRIPT (it forgets its scripts
when it restarts). The semantics are ``TokenBucket.take``'s (``gateway/server/auth.py``):
0.0 when a token was taken, else the seconds until one will be there.

``FleetLimits`` puts the replica's own bucket behind it for when Redis does not answer (down,
restarting, too slow: ``UNREACHABLE``, or any other ``RedisError``):

- ``limits_fail_open: true`` (the default): the key's bucket on this replica decides (each
  replica then grants up to the key's rate on its own); one WARNING when the outage starts,
  one INFO when Redis answers again.
- ``limits_fail_open: false``: ``LimitsUnavailable`` (the gateway answers 503).

After a failure Redis is left alone for ``backoff_s`` (one request then tries it again): an
outage costs the requests no connect timeout each.

Examples
--------
>>> expiry_ms(rate=2.0, burst=10.0, margin_s=1.0)  # 5 s to refill from empty, plus 1 s
6000
>>> redacted("redis://:s3cret@redis:6379/0")
'redis://redis:6379/0'
>>> redacted("unix:///run/redis.sock?password=s3cret")
'unix:///run/redis.sock'
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

import redis.asyncio as aioredis

from gateway.config.redis import RedisConfig
from gateway.shared.client import UNREACHABLE, RedisError

__all__ = ["TAKE", "FleetLimits", "LimitsUnavailable", "LocalBucket", "SharedBuckets",
           "expiry_ms", "redacted"]

logger = logging.getLogger(__name__)

# KEYS[1]: the bucket; ARGV: rate (tokens/s), burst, expiry (ms). Floats go back and forth
# as strings: a Lua number returned to Redis is truncated to an integer, and tostring() keeps
# only 14 digits (the time in seconds since 1970 would lose its tenths of a millisecond).
TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local held = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(held[1])
local at = tonumber(held[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
           'at', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return string.format('%.17g', wait)
"""

EXPIRY_MARGIN_S = 1.0  # past the refill time, so a bucket still filling never expires
BACKOFF_S = 1.0  # after a failure, Redis is left alone this long

# What FleetLimits takes as "Redis does not answer": any error of the Redis round trip.
REDIS_DOWN: tuple[type[BaseException], ...] = (*UNREACHABLE, RedisError)


def expiry_ms(rate: float, burst: float, margin_s: float = EXPIRY_MARGIN_S) -> int:
    """How long an untouched bucket lives: the time it takes to refill from empty (after
    which it is full, as a missing one is) plus ``margin_s``; in whole milliseconds."""
    return math.ceil((burst / rate + margin_s) * 1000)


def redacted(url: str) -> str:
    """``url`` without its user, password and query (``?password=`` is redis-py's other
    place for one), fit for a log line."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"


class SharedBuckets:
    """The keys' token buckets in Redis (the same for every replica on it).

    Parameters
    ----------
    client
        The replica's Redis client (``app[CONTROL].redis``).
    cfg
        The ``redis:`` section: the buckets live under ``cfg.key("bucket:<name>")``.
    expiry_margin_s
        How long past its refill time an untouched bucket stays.
    """

    def __init__(self, client: aioredis.Redis, cfg: RedisConfig, *,
                 expiry_margin_s: float = EXPIRY_MARGIN_S) -> None:
        self.cfg = cfg
        self.expiry_margin_s = expiry_margin_s
        self._script = client.register_script(TAKE)

    def key(self, name: str) -> str:
        """The Redis key of ``name``'s bucket."""
        return self.cfg.key(f"bucket:{name}")

    async def take(self, name: str, rate: float, burst: float) -> float:
        """0.0 when a token was taken from ``name``'s bucket (``burst`` tokens, refilled at
        ``rate`` per second); else the seconds until one will be there. Redis's errors
        (``UNREACHABLE``, ``RedisError``) propagate."""
        reply = await self._script(
            keys=[self.key(name)],
            args=[repr(float(rate)), repr(float(burst)),
                  expiry_ms(rate, burst, self.expiry_margin_s)])
        return float(reply.decode() if isinstance(reply, bytes) else reply)


class LocalBucket(Protocol):
    """A replica's own bucket for a key (``gateway.server.auth.TokenBucket``)."""

    rate: float
    burst: float

    def take(self, now: float) -> float: ...


class LimitsUnavailable(Exception):
    """Redis does not answer and ``limits_fail_open`` is false: no request of a rate-limited
    key can be let through (the gateway answers 503, ``Retry-After: retry_after_s``)."""

    def __init__(self, url: str, retry_after_s: float) -> None:
        self.url = url
        self.retry_after_s = retry_after_s
        super().__init__(f"Redis at {url} does not answer")


class FleetLimits:
    """Per-key limits across the replicas, with this replica's buckets for when Redis is down.

    Parameters
    ----------
    buckets
        The shared buckets.
    fail_open
        Redis unreachable: the local bucket decides (True) or ``LimitsUnavailable`` (False).
    clock
        Monotonic seconds: the local buckets' clock and the backoff's.
    backoff_s
        After a failure, how long requests skip Redis before one tries it again.
    """

    def __init__(self, buckets: SharedBuckets, *, fail_open: bool,
                 clock: Callable[[], float] = time.monotonic,
                 backoff_s: float = BACKOFF_S) -> None:
        self.buckets = buckets
        self.fail_open = fail_open
        self.clock = clock
        self.backoff_s = backoff_s
        self.url = redacted(buckets.cfg.url)
        self._down_since: float | None = None  # when the outage began; None: Redis answers
        self._retry_at = 0.0  # no request tries Redis before then

    @property
    def down(self) -> bool:
        """Whether Redis failed last time it was asked."""
        return self._down_since is not None

    async def take(self, name: str, local: LocalBucket) -> float:
        """A token for key ``name`` from the shared bucket (``local``'s rate and burst), or,
        while Redis does not answer, from ``local`` (fail open) or ``LimitsUnavailable``."""
        now = self.clock()
        if now >= self._retry_at:
            if self.down:  # one request probes; the others skip Redis while it does
                self._retry_at = now + self.backoff_s
            try:
                wait = await self.buckets.take(name, local.rate, local.burst)
            except REDIS_DOWN as exc:
                self._failed(exc)
            else:
                self._answered()
                return wait
        now = self.clock()
        if not self.fail_open:
            raise LimitsUnavailable(self.url, max(0.0, self._retry_at - now))
        return local.take(now)

    def _failed(self, exc: BaseException) -> None:
        now = self.clock()
        self._retry_at = now + self.backoff_s
        if self._down_since is not None:
            return
        self._down_since = now
        then = ("per-key limits fall back to this replica's own buckets" if self.fail_open
                else "requests of rate-limited keys are refused (503)")
        logger.warning("Redis at %s unreachable (%s: %s): %s until it answers", self.url,
                       type(exc).__name__, exc, then)

    def _answered(self) -> None:
        if self._down_since is None:
            return
        logger.info("Redis at %s answers again after %.1f s: per-key limits are fleet-wide "
                    "again", self.url, self.clock() - self._down_since)
        self._down_since = None
        self._retry_at = 0.0
