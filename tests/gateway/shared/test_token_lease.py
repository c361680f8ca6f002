"""Leases of a key's fleet-wide tokens (``gateway/shared/token_lease.py``) and ``FleetLimits``
serving requests from them, on an injected clock and an in-memory stand-in for the bucket in
Redis (the script's semantics; ``test_limits.py`` runs the real one)."""

from __future__ import annotations

import asyncio
import logging
import math

import pytest

from gateway.config.redis import RedisConfig
from gateway.server.auth import TokenBucket
from gateway.shared.limits import FleetLimits, LimitsUnavailable, SharedBuckets
from gateway.shared.token_lease import MAX_LEASE, TokenLease

LOGGER = "gateway.shared.limits"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class MemoryBuckets(SharedBuckets):
    """The buckets as ``TAKE`` keeps them, in memory, on ``clock``; every call recorded (its
    ``want``). ``gate``, when set, holds each call until it is set; ``down`` makes them fail;
    ``reply_s`` is how far the clock moves while an answer travels back."""

    def __init__(self, clock: Clock) -> None:  # no client: nothing goes to Redis
        self.cfg = RedisConfig(url="redis://127.0.0.1:1/0")
        self.clock = clock
        self.state: dict[str, tuple[float, float]] = {}  # name -> (tokens, at)
        self.wants: list[int] = []
        self.gate: asyncio.Event | None = None
        self.down = False
        self.reply_s = 0.0

    async def lease(self, name: str, rate: float, burst: float, want: int = 1
                    ) -> tuple[int, float]:
        self.wants.append(want)
        if self.gate is not None:
            await self.gate.wait()
        if self.down:
            raise ConnectionError("Connection refused")
        now = self.clock()
        tokens, at = self.state.get(name, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        taken, wait = 0, 0.0
        if tokens >= 1:
            taken = max(1, min(want, math.floor(tokens / 2)))
            tokens -= taken
        else:
            wait = (1 - tokens) / rate
        self.state[name] = (tokens, now)
        self.clock.now += self.reply_s
        return taken, wait


async def settle() -> None:
    """Let the background refills run (they finish at once on ``MemoryBuckets``)."""
    for _ in range(5):
        await asyncio.sleep(0)


def limits_on(clock: Clock, *, fail_open: bool = True) -> tuple[FleetLimits, MemoryBuckets]:
    buckets = MemoryBuckets(clock)
    return FleetLimits(buckets, fail_open=fail_open, clock=clock, backoff_s=1.0), buckets


# -- the lease's bookkeeping ----------------------------------------------------------------------

def test_size_follows_the_demand_here_within_its_cap() -> None:
    assert TokenLease(10.0, 2.0).cap == 1  # a small burst: one token at a time
    assert TokenLease(100.0, 100.0).cap == 10  # a tenth of the burst
    assert TokenLease(1e6, 1e6).cap == MAX_LEASE
    lease = TokenLease(1000.0, 1000.0)
    for i in range(10):  # one request a second: nothing to lease
        lease.arrive(float(i))
    assert lease.spare() == 0
    t = 10.0
    for _ in range(2000):  # 500 a second for 4 s: about 0.1 s of them, 50
        t += 0.002
        lease.arrive(t)
    assert 45 <= lease.spare() <= 50
    for _ in range(20000):  # 10000 a second: capped
        t += 0.0001
        lease.arrive(t)
    assert lease.spare() == 100
    lease.arrive(t + 5.0)  # quiet for 5 s: the estimate decays
    assert lease.spare() == 0


def test_tokens_are_used_oldest_first_and_expire() -> None:
    lease = TokenLease(100.0, 100.0, ttl_s=0.5)
    assert not lease.take(0.0) and lease.held(0.0) == 0
    lease.granted(2, 0.0, sent_at=0.0, now=0.01)  # usable until 0.51
    lease.granted(3, 0.0, sent_at=0.3, now=0.31)  # until 0.81
    assert lease.held(0.4) == 5
    assert lease.take(0.4) and lease.take(0.4) and lease.held(0.4) == 3  # the older two
    lease.granted(1, 0.0, sent_at=0.5, now=0.5)  # until 1.0
    assert lease.held(0.9) == 1  # the batch of 3 went unused: dropped at 0.81
    assert lease.take(0.9) and not lease.take(0.9)
    lease.granted(4, 0.0, sent_at=1.0, now=1.0)
    assert not lease.take(1.5)  # expired exactly at 1.5


def test_refill_when_half_used() -> None:
    lease = TokenLease(1000.0, 1000.0)
    t = 0.0
    for _ in range(1000):  # 400 a second for 2.5 s
        t += 0.0025
        lease.arrive(t)
    spare = lease.spare()
    assert spare >= 30
    assert lease.low(t)  # nothing held
    lease.granted(spare, 0.0, sent_at=t, now=t)
    while lease.held(t) > spare // 2:
        assert not lease.low(t)
        assert lease.take(t)
    assert lease.low(t)
    rare = TokenLease(1000.0, 1000.0)
    rare.arrive(0.0)
    assert not rare.low(0.0)  # not leased: never refilled ahead


def test_an_empty_bucket_is_known_empty_for_a_while() -> None:
    lease = TokenLease(0.5, 1.0, ttl_s=0.5)
    lease.granted(0, 1.8, sent_at=10.0, now=10.01)  # a token at 11.8
    assert lease.known_wait(10.01) == pytest.approx(1.79)
    assert lease.known_wait(10.49) == pytest.approx(1.31)
    assert lease.known_wait(10.5) == 0.0  # stale: ask Redis again
    lease.granted(0, 0.1, sent_at=20.0, now=20.0)
    assert lease.known_wait(20.05) == pytest.approx(0.05)
    assert lease.known_wait(20.1) == 0.0  # the token is there by now
    lease.granted(0, 1.0, sent_at=30.0, now=30.0)
    lease.granted(1, 0.0, sent_at=30.1, now=30.1)  # tokens after all (a Redis restart)
    assert lease.known_wait(30.2) == 0.0


# -- FleetLimits on leases ------------------------------------------------------------------------

async def test_a_rare_key_asks_redis_for_one_token_a_request() -> None:
    clock = Clock()
    limits, buckets = limits_on(clock)
    local = TokenBucket(rate=100.0, burst=100.0, now=0.0)
    for i in range(5):
        clock.now = float(i)
        assert await limits.take("k", local) == 0.0
        await settle()
    assert buckets.wants == [1] * 5  # as without leases: nothing held, nothing ahead


async def test_a_busy_key_is_served_from_its_lease() -> None:
    clock = Clock()
    limits, buckets = limits_on(clock)
    local = TokenBucket(rate=1000.0, burst=1000.0, now=0.0)
    served = 0
    for _ in range(2000):  # 500 a second for 4 s
        clock.now += 0.002
        assert await limits.take("k", local) == 0.0
        served += 1
        await settle()
    assert len(buckets.wants) < served / 20  # one Redis call for many requests
    assert max(buckets.wants) >= 40  # the lease grew with the demand
    tokens, _ = buckets.state["k"]
    assert 1000.0 - tokens < 60  # what is leased and unused is a tenth of a second's worth


async def test_the_request_does_not_wait_for_the_refill() -> None:
    clock = Clock()
    limits, buckets = limits_on(clock)
    local = TokenBucket(rate=1000.0, burst=1000.0, now=0.0)
    for _ in range(500):  # 500 a second for 1 s: a lease of about 40 tokens
        clock.now += 0.002
        await limits.take("k", local)
        await settle()
    lease = limits.leases["k"]
    while not lease.low(clock.now):  # use the lease down to its refill mark
        assert lease.take(clock.now)
    calls = len(buckets.wants)
    buckets.gate = asyncio.Event()  # Redis answers nothing until the gate opens
    held = lease.held(clock.now)
    for _ in range(held):  # served while the refill hangs
        assert await asyncio.wait_for(limits.take("k", local), 1.0) == 0.0
    assert len(buckets.wants) == calls + 1  # one refill, in the background
    waiting = asyncio.ensure_future(limits.take("k", local))  # the lease is empty: it waits
    await settle()
    assert not waiting.done() and len(buckets.wants) == calls + 1  # for that same refill
    buckets.gate.set()
    assert await waiting == 0.0


async def test_at_the_limit_the_wait_comes_back_and_is_reused() -> None:
    clock = Clock()
    limits, buckets = limits_on(clock)
    local = TokenBucket(rate=2.0, burst=2.0, now=0.0)
    waits = [await limits.take("k", local) for _ in range(4)]
    assert waits[:2] == [0.0, 0.0] and waits[2] == pytest.approx(0.5)
    assert waits[3] == pytest.approx(0.5)  # known empty: Redis was not asked again
    assert len(buckets.wants) == 3
    clock.now = 0.3
    assert await limits.take("k", local) == pytest.approx(0.2)
    clock.now = 0.5  # the token is there
    assert await limits.take("k", local) == 0.0 and len(buckets.wants) == 4


async def test_a_wait_shorter_than_the_call_still_comes_back() -> None:
    clock = Clock()
    limits, buckets = limits_on(clock)
    local = TokenBucket(rate=1000.0, burst=1.0, now=0.0)
    assert await limits.take("k", local) == 0.0
    buckets.reply_s = 0.002  # Redis says "in 1 ms"; its answer takes 2
    assert await limits.take("k", local) == pytest.approx(0.001)  # as it said
    assert len(buckets.wants) == 2


async def test_two_replicas_grant_the_rate_in_all_not_each() -> None:
    clock = Clock()
    buckets = MemoryBuckets(clock)
    replicas = [FleetLimits(buckets, fail_open=True, clock=clock) for _ in range(2)]
    rate, burst, span = 200.0, 200.0, 5.0
    locals_ = [TokenBucket(rate=rate, burst=burst, now=0.0) for _ in replicas]
    granted, tick = [0, 0], 0
    while clock.now < span:  # each replica asked 1000 times a second: 10x the rate in all
        clock.now += 0.001
        tick += 1
        for i in (0, 1) if tick % 2 else (1, 0):  # neither always first
            if await replicas[i].take("team", locals_[i]) == 0.0:
                granted[i] += 1
            await settle()
    allowed = burst + rate * clock.now
    assert 0.9 * allowed <= sum(granted) <= allowed  # never more than the bucket allows
    assert min(granted) > 0.3 * sum(granted)  # both replicas were served


async def test_expired_tokens_are_not_used() -> None:
    clock = Clock()
    limits, buckets = limits_on(clock)
    local = TokenBucket(rate=1000.0, burst=1000.0, now=0.0)
    for _ in range(500):
        clock.now += 0.002
        await limits.take("k", local)
        await settle()
    assert limits.leases["k"].held(clock.now) > 0
    calls = len(buckets.wants)
    clock.now += 0.6  # past the lease's 0.5 s
    assert await limits.take("k", local) == 0.0
    assert len(buckets.wants) == calls + 1  # Redis was asked


async def test_concurrent_requests_share_a_refill() -> None:
    clock = Clock()
    limits, buckets = limits_on(clock)
    local = TokenBucket(rate=1000.0, burst=1000.0, now=0.0)
    buckets.gate = asyncio.Event()
    requests = [asyncio.ensure_future(limits.take("k", local)) for _ in range(10)]
    await settle()
    assert buckets.wants == [1]  # the first asks, the others wait on its answer
    buckets.gate.set()
    assert await asyncio.gather(*requests) == [0.0] * 10
    assert buckets.wants[1] >= 9 and len(buckets.wants) == 2  # the rest, in one more call


async def test_a_failed_refill_falls_back_once_the_lease_is_used(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    clock = Clock()
    limits, buckets = limits_on(clock)
    local = TokenBucket(rate=1000.0, burst=3.0, now=0.0)  # this replica's own: a burst of 3
    shared = TokenBucket(rate=1000.0, burst=1000.0, now=0.0)
    for _ in range(500):
        clock.now += 0.002
        await limits.take("k", shared)
        await settle()
    lease = limits.leases["k"]
    buckets.down = True
    while not lease.low(clock.now):
        assert lease.take(clock.now)
    held, calls = lease.held(clock.now), len(buckets.wants)
    assert await limits.take("k", shared) == 0.0  # a leased token; the refill fails
    await settle()
    assert limits.down and len(buckets.wants) == calls + 1
    calls += 1
    for _ in range(held - 1):  # the rest of the lease: Redis granted it
        assert await limits.take("k", shared) == 0.0
        await settle()
    assert [await limits.take("k", local) for _ in range(4)][3] > 0  # the local burst of 3
    assert len(buckets.wants) == calls  # in the backoff: Redis is not asked
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()
    buckets.down = False
    clock.now += 1.5  # past the backoff: one request probes, and Redis answers
    assert await limits.take("k", shared) == 0.0 and not limits.down
    assert [r for r in caplog.records if "answers again" in r.getMessage()]


async def test_fail_closed_once_the_lease_is_used() -> None:
    clock = Clock()
    limits, buckets = limits_on(clock, fail_open=False)
    local = TokenBucket(rate=1000.0, burst=1000.0, now=0.0)
    assert await limits.take("k", local) == 0.0
    buckets.down = True
    clock.now = 0.1
    with pytest.raises(LimitsUnavailable) as info:
        await limits.take("k", local)
    assert info.value.retry_after_s == pytest.approx(1.0)


async def test_aclose_cancels_the_refill_in_flight() -> None:
    clock = Clock()
    limits, buckets = limits_on(clock)
    local = TokenBucket(rate=1000.0, burst=1000.0, now=0.0)
    buckets.gate = asyncio.Event()
    request = asyncio.ensure_future(limits.take("k", local))
    await settle()
    refill = limits.leases["k"].refill
    assert refill is not None
    await limits.aclose()
    assert refill.cancelled() and limits.leases["k"].refill is None
    with pytest.raises(asyncio.CancelledError):
        await request
