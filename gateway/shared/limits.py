"""Fleet-wide per-key limits: one token bucket per key in Redis, shared by every replica.

``SharedBuckets.lease`` runs one Lua script (``TAKE``), atomic in Redis: it refills the bucket
at ``<prefix>:bucket:<key name>`` (a hash: ``tokens``, ``at``) by Redis's own clock (``TIME``:
one clock for every replica, whatever theirs say), takes up to ``want`` tokens when there is
one (at most half of what it holds, at least one), and sets the hash to expire about when it
would be full again (a bucket that is missing is a full one, so an idle key's bucket just
vanishes). redis-py sends the script with EVALSHA and loads it again when Redis answers
NOSCRIPT (it forgets its scripts when it restarts). ``SharedBuckets.take`` is one token, with
``TokenBucket.take``'s semantics (``gateway/server/auth.py``): 0.0 when a token was taken,
else the seconds until one will be there.

``FleetLimits`` serves a key's requests from a lease (``gateway/shared/token_lease.py``): the
tokens one call took for this replica, sized by the key's recent demand here, usable for
0.5 s, refilled in the background when half used. A request waits on Redis only when its
key's lease is empty; at a key's limit the bucket is empty and the request gets the wait
until a token, as with one call a request. Behind it, the replica's own bucket for when Redis
does not answer (down, restarting, too slow: ``UNREACHABLE``, or any other ``RedisError``):

- ``limits_fail_open: true`` (the default): the key's bucket on this replica decides (each
  replica then grants up to the key's rate on its own); one WARNING when the outage starts,
  one INFO when Redis answers again.
- ``limits_fail_open: false``: ``LimitsUnavailable`` (the gateway answers 503).

Tokens leased before an outage are used first either way (Redis granted them). After a
failure Redis is left alone for ``backoff_s`` (one request then tries it again): an outage
costs the requests no connect timeout each.

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

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Protocol
from urllib.parse import urlsplit

import redis.asyncio as aioredis

from gateway.config.redis import RedisConfig
from gateway.shared.client import UNREACHABLE, RedisError
from gateway.shared.token_lease import LEASE_TTL_S, TokenLease

__all__ = ["TAKE", "FleetLimits", "LimitsUnavailable", "LocalBucket", "SharedBuckets",
           "expiry_ms", "redacted"]

logger = logging.getLogger(__name__)

# KEYS[1]: the bucket; ARGV: rate (tokens/s), burst, expiry (ms), want (tokens, >= 1).
# Returns {tokens taken, wait}: tokens taken are min(want, half the bucket's tokens), at least
# one when it holds one; else none and wait is the seconds until it will hold one. Floats go
# back and forth as strings: a Lua number returned to Redis is truncated to an integer, and
# tostring() keeps only 14 digits (the time in seconds since 1970 would lose its tenths of a
# millisecond).
TAKE = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[4]) or 1
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
local taken = 0
local wait = 0
if tokens >= 1 then
  taken = math.max(1, math.min(want, math.floor(tokens / 2)))
  tokens = tokens - taken
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
           'at', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {taken, string.format('%.17g', wait)}
"""

EXPIRY_MARGIN_S = 1.0  # past the refill time, so a bucket still filling never expires
BACKOFF_S = 1.0  # after a failure, Redis is left alone this long

# What FleetLimits takes as "Redis does not answer": any error of the Redis round trip.
REDIS_DOWN: tuple[type[BaseException], ...] = (*UNREACHABLE, RedisError)


def expiry_ms(rate: float, burst: float, margin_s: float = EXPIRY_MARGIN_S) -> int:
    """How long an untouched bucket lives: the time it takes to refill from empty (after
    which it is full, as a missing one is) plus ``margin_s``; in whole milliseconds."""
    return math.ceil((burst / rate + margin_s) * 1000)


def _reap(task: asyncio.Task[float | None]) -> None:
    """Log what a background refill raised, other than Redis not answering (handled)."""
    if not task.cancelled() and task.exception() is not None:
        logger.error("a lease refill failed", exc_info=task.exception())


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

    async def lease(self, name: str, rate: float, burst: float, want: int = 1
                    ) -> tuple[int, float]:
        """Up to ``want`` tokens from ``name``'s bucket (``burst`` tokens, refilled at
        ``rate`` per second): (tokens taken, 0.0), at least one when the bucket holds one;
        else (0, the seconds until it will). Redis's errors (``UNREACHABLE``,
        ``RedisError``) propagate."""
        taken, wait = await self._script(
            keys=[self.key(name)],
            args=[repr(float(rate)), repr(float(burst)),
                  expiry_ms(rate, burst, self.expiry_margin_s), max(1, int(want))])
        return int(taken), float(wait.decode() if isinstance(wait, bytes) else wait)

    async def take(self, name: str, rate: float, burst: float) -> float:
        """0.0 when a token was taken from ``name``'s bucket; else the seconds until one
        will be there (``lease`` of one token)."""
        return (await self.lease(name, rate, burst))[1]


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
    """Per-key limits across the replicas: leases of the keys' tokens in Redis, and this
    replica's buckets for when Redis is down.

    Parameters
    ----------
    buckets
        The shared buckets.
    fail_open
        Redis unreachable: the local bucket decides (True) or ``LimitsUnavailable`` (False).
    clock
        Monotonic seconds: the leases', the local buckets' and the backoff's clock.
    backoff_s
        After a failure, how long requests skip Redis before one tries it again.
    lease_ttl_s
        How long a leased token stays usable (``TokenLease``).
    """

    def __init__(self, buckets: SharedBuckets, *, fail_open: bool,
                 clock: Callable[[], float] = time.monotonic,
                 backoff_s: float = BACKOFF_S, lease_ttl_s: float = LEASE_TTL_S) -> None:
        self.buckets = buckets
        self.fail_open = fail_open
        self.clock = clock
        self.backoff_s = backoff_s
        self.lease_ttl_s = lease_ttl_s
        self.url = redacted(buckets.cfg.url)
        self.leases: dict[str, TokenLease] = {}  # by key name
        self._down_since: float | None = None  # when the outage began; None: Redis answers
        self._retry_at = 0.0  # no request tries Redis before then

    @property
    def down(self) -> bool:
        """Whether Redis failed last time it was asked."""
        return self._down_since is not None

    async def take(self, name: str, local: LocalBucket) -> float:
        """A token for key ``name`` (``local``'s rate and burst): from its lease, else from
        the shared bucket (the seconds until it has one when it is empty), or, while Redis
        does not answer, from ``local`` (fail open) or ``LimitsUnavailable``."""
        now = self.clock()
        lease = self.leases.get(name)
        if lease is None:
            lease = self.leases[name] = TokenLease(local.rate, local.burst,
                                                   ttl_s=self.lease_ttl_s)
        lease.arrive(now)
        if lease.take(now):  # the fast path: no Redis
            if lease.refill is None and not self.down and lease.low(now):
                self._ask(name, lease, lease.spare())  # in the background
            return 0.0
        while True:  # tokens a refill brought may all go to other waiting requests
            wait = lease.known_wait(now)
            if wait > 0.0:
                return wait
            if now < self._retry_at:  # in the backoff, or another request probes
                break
            if lease.refill is None:
                if self.down:  # one request probes; the others skip Redis while it does
                    self._retry_at = now + self.backoff_s
                # its own token, the other requests waiting on the lease, and the spare
                self._ask(name, lease, 1 + lease.waiting + lease.spare())
            assert lease.refill is not None
            lease.waiting += 1
            try:
                answer = await asyncio.shield(lease.refill)
            finally:
                lease.waiting -= 1
            if answer is None:  # Redis did not answer
                break
            now = self.clock()
            if lease.take(now):
                return 0.0
            if answer > 0.0:  # the bucket is empty: Redis's wait, as without a lease
                return answer
        now = self.clock()
        if not self.fail_open:
            raise LimitsUnavailable(self.url, max(0.0, self._retry_at - now))
        return local.take(now)

    def _ask(self, name: str, lease: TokenLease, want: int) -> None:
        lease.refill = asyncio.create_task(self._refill(name, lease, want),
                                           name=f"lease {name}")
        lease.refill.add_done_callback(_reap)

    async def _refill(self, name: str, lease: TokenLease, want: int) -> float | None:
        """Ask Redis for ``want`` of ``name``'s tokens into ``lease``: Redis's wait (0.0:
        tokens are in the lease), or None when it did not answer."""
        sent = self.clock()
        try:
            count, wait = await self.buckets.lease(name, lease.rate, lease.burst, want)
        except REDIS_DOWN as exc:
            self._failed(exc)
            return None
        finally:
            lease.refill = None
        lease.granted(count, wait, sent_at=sent, now=self.clock())
        self._answered()
        return wait

    async def aclose(self) -> None:
        """Cancel the Redis calls in flight (before the client closes)."""
        tasks = []
        for lease in self.leases.values():
            if lease.refill is not None:
                tasks.append(lease.refill)
                lease.refill.cancel()
                lease.refill = None  # a task cancelled before it ran never clears it
        await asyncio.gather(*tasks, return_exceptions=True)

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
