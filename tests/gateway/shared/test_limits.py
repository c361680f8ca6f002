"""Fleet-wide per-key limits (``gateway/shared/limits.py``) on a real Redis: the shared bucket
itself, its fallback while Redis is down, and two gateway replicas limiting one key together."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from pathlib import Path

import aiohttp
import openai
import pytest
import redis.asyncio as aioredis
from openai import AsyncOpenAI

from gateway.config.keys import parse_keys
from gateway.config.redis import RedisConfig
from gateway.server.auth import TokenBucket
from gateway.server.keys import SHARED_LIMITS
from gateway.shared.client import connect
from gateway.shared.limits import (
    REDIS_DOWN,
    FleetLimits,
    LimitsUnavailable,
    SharedBuckets,
    expiry_ms,
)
from tests.gateway.server.factories import BASE, Stack, demands, gateway_stack
from tests.redis_server import RedisServer

LOGGER = "gateway.shared.limits"


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    redis = connect(RedisConfig(url=redis_server.url))
    try:
        yield redis
    finally:
        await redis.aclose()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CountingBuckets(SharedBuckets):
    """Shared buckets that count the times Redis is asked."""

    calls = 0

    async def lease(self, name: str, rate: float, burst: float, want: int = 1
                    ) -> tuple[int, float]:
        self.calls += 1
        return await super().lease(name, rate, burst, want)


async def _answered(buckets: SharedBuckets, name: str = "k", tries: int = 5) -> float:
    """A take once Redis answers again (the first command after a restart may meet a
    connection the restart broke)."""
    for _ in range(tries):
        try:
            return await buckets.take(name, 1.0, 1.0)
        except REDIS_DOWN:
            await asyncio.sleep(0.05)
    raise AssertionError("Redis did not answer again")


# -- the shared bucket --------------------------------------------------------------------------

async def test_two_replicas_grant_burst_plus_rate_in_all(redis_server: RedisServer) -> None:
    cfg = RedisConfig(url=redis_server.url, prefix="t")
    rate, burst, span = 20.0, 5.0, 2.0
    async with AsyncExitStack() as stack:
        clients = [connect(cfg), connect(cfg)]  # two replicas, each its own connections
        for c in clients:
            stack.push_async_callback(c.aclose)
        granted, waits = [0, 0], []
        start = time.monotonic()

        async def replica(i: int) -> None:
            buckets = SharedBuckets(clients[i], cfg)
            while time.monotonic() - start < span:
                wait = await buckets.take("team", rate, burst)
                if wait == 0.0:
                    granted[i] += 1
                else:
                    waits.append(wait)

        await asyncio.gather(replica(0), replica(1))
        elapsed = time.monotonic() - start
    allowed = burst + rate * elapsed  # what one bucket grants over the span
    assert 0.85 * allowed <= sum(granted) <= allowed + 1, (granted, elapsed)
    assert min(granted) > 0  # both replicas were served
    assert waits and all(0 < w <= 1 / rate + 1e-6 for w in waits)  # under a token's time


async def test_wait_expiry_and_a_missing_bucket_is_full(
        redis_server: RedisServer, client: aioredis.Redis) -> None:
    cfg = RedisConfig(url=redis_server.url)
    buckets = SharedBuckets(client, cfg)
    assert await buckets.take("a", 2.0, 1.0) == 0.0
    wait = await buckets.take("a", 2.0, 1.0)
    assert 0.4 < wait <= 0.5  # a token every 0.5 s, the last taken just now
    held = await client.hgetall(buckets.key("a"))
    assert set(held) == {b"tokens", b"at"} and buckets.key("a") == "lorafleet:bucket:a"
    assert float(held[b"tokens"]) < 0.2  # not truncated to an integer
    assert 0 < await client.pttl(buckets.key("a")) <= expiry_ms(2.0, 1.0) == 1500
    # An idle bucket vanishes once it would be full again (here 10 ms + a 50 ms margin).
    quick = SharedBuckets(client, cfg, expiry_margin_s=0.05)
    assert await quick.take("b", 100.0, 1.0) == 0.0
    assert await client.exists(quick.key("b")) == 1
    await asyncio.sleep(0.3)
    assert await client.exists(quick.key("b")) == 0
    assert await quick.take("b", 100.0, 1.0) == 0.0  # and comes back full


async def test_a_lease_takes_up_to_half_the_bucket(
        redis_server: RedisServer, client: aioredis.Redis) -> None:
    buckets = SharedBuckets(client, RedisConfig(url=redis_server.url))
    assert await buckets.lease("a", 0.01, 20.0, want=6) == (6, 0.0)  # 20 held: 6 of them
    assert await buckets.lease("a", 0.01, 20.0, want=50) == (7, 0.0)  # 14 held: half
    assert await buckets.lease("a", 0.01, 20.0, want=50) == (3, 0.0)  # 7 held
    assert await buckets.lease("a", 0.01, 20.0, want=50) == (2, 0.0)
    assert await buckets.lease("a", 0.01, 20.0, want=50) == (1, 0.0)
    assert await buckets.lease("a", 0.01, 20.0, want=50) == (1, 0.0)  # 1 held: still one
    taken, wait = await buckets.lease("a", 0.01, 20.0, want=50)
    assert taken == 0 and 99 < wait <= 100  # empty: a token in 100 s, as take says
    assert 99 < await buckets.take("a", 0.01, 20.0) <= 100
    assert float((await client.hgetall(buckets.key("a")))[b"tokens"]) < 0.01


async def test_two_leasing_replicas_grant_burst_plus_rate_in_all(
        redis_server: RedisServer) -> None:
    cfg = RedisConfig(url=redis_server.url, prefix="t")
    rate, burst, span = 100.0, 100.0, 2.0  # leases of up to 10 tokens
    async with AsyncExitStack() as stack:
        clients = [connect(cfg), connect(cfg)]
        for c in clients:
            stack.push_async_callback(c.aclose)
        shared = [CountingBuckets(c, cfg) for c in clients]
        replicas = [FleetLimits(b, fail_open=True) for b in shared]
        for replica in replicas:
            stack.push_async_callback(replica.aclose)
        granted, served_locally, asked = [0, 0], [0, 0], [0]
        start = time.monotonic()

        async def user(i: int) -> None:
            local = TokenBucket(rate=rate, burst=burst, now=time.monotonic())
            while time.monotonic() - start < span:
                asked[0] += 1
                if await replicas[i].take("team", local) == 0.0:
                    granted[i] += 1
                    await asyncio.sleep(0)  # the request's own work (a leased token: no wait)
                else:
                    await asyncio.sleep(0.001)
                served_locally[i] += replicas[i].down

        await asyncio.gather(*(user(i % 2) for i in range(8)))
        elapsed = time.monotonic() - start
    allowed = burst + rate * elapsed  # one bucket for the key; each replica's would be 2x
    assert served_locally == [0, 0]  # Redis answered throughout
    assert 0.85 * allowed <= sum(granted) <= allowed + 1, (granted, elapsed)
    assert min(granted) > 0.25 * sum(granted)  # both replicas were served
    # at the limit, a refused request is told the wait Redis gave another shortly before
    assert sum(b.calls for b in shared) < 0.5 * asked[0], (asked, granted)


async def test_script_is_loaded_again_after_a_restart(
        redis_server: RedisServer, client: aioredis.Redis) -> None:
    buckets = SharedBuckets(client, RedisConfig(url=redis_server.url))
    assert await buckets.take("k", 1.0, 1.0) == 0.0
    sha = buckets._script.sha
    assert await client.script_exists(sha) == [True]
    redis_server.stop()
    with pytest.raises(REDIS_DOWN):
        await buckets.take("k", 1.0, 1.0)
    redis_server.start()  # same port, nothing kept: no bucket, no script
    assert await _answered(buckets) == 0.0  # a full bucket again
    assert await client.script_exists(sha) == [True]


# -- Redis down: this replica's buckets, or 503 --------------------------------------------------

def _records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


async def test_fail_open_uses_the_local_bucket_and_backs_off(
        redis_server: RedisServer, client: aioredis.Redis,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    cfg = RedisConfig(url=redis_server.url)
    buckets, clock = CountingBuckets(client, cfg), Clock()
    limits = FleetLimits(buckets, fail_open=True, clock=clock, backoff_s=1.0)
    local = TokenBucket(rate=1.0, burst=2.0, now=0.0)
    assert await limits.take("k", local) == 0.0 and buckets.calls == 1
    redis_server.stop()
    assert await limits.take("k", local) == 0.0  # Redis fails: the local bucket's first token
    assert limits.down and buckets.calls == 2
    assert await limits.take("k", local) == 0.0  # within the backoff: Redis is not asked
    assert await limits.take("k", local) == pytest.approx(1.0)  # the local burst is spent
    assert buckets.calls == 2
    clock.now = 1.5  # past the backoff: one request tries Redis again (still down)
    assert await limits.take("k", local) == 0.0 and buckets.calls == 3
    warnings = _records(caplog, logging.WARNING)
    assert len(warnings) == 1, warnings  # one line for the whole outage
    assert warnings[0].startswith(f"Redis at {redis_server.url} unreachable (ConnectionError")
    assert "fall back to this replica's own buckets" in warnings[0]
    redis_server.start()
    for _ in range(5):  # the first try may meet a connection the restart broke
        clock.now += 1.5
        await limits.take("k", local)
        if not limits.down:
            break
    assert not limits.down
    assert await client.exists(buckets.key("k")) == 1  # served by Redis again
    assert [m for m in _records(caplog, logging.INFO) if "answers again" in m]
    assert len(_records(caplog, logging.WARNING)) == 1


async def test_fail_closed_raises_without_asking_redis_in_the_backoff(
        redis_server: RedisServer, client: aioredis.Redis,
        caplog: pytest.LogCaptureFixture) -> None:
    buckets, clock = CountingBuckets(client, RedisConfig(url=redis_server.url)), Clock()
    limits = FleetLimits(buckets, fail_open=False, clock=clock, backoff_s=1.0)
    local = TokenBucket(rate=1.0, burst=5.0, now=0.0)
    redis_server.stop()
    with pytest.raises(LimitsUnavailable) as info:
        await limits.take("k", local)
    assert info.value.retry_after_s == 1.0 and buckets.calls == 1
    clock.now = 0.4
    with pytest.raises(LimitsUnavailable) as info:
        await limits.take("k", local)
    assert info.value.retry_after_s == pytest.approx(0.6) and buckets.calls == 1
    assert "refused (503)" in _records(caplog, logging.WARNING)[0]


# -- two gateway replicas -------------------------------------------------------------------------

def _redis(server: RedisServer, *, fail_open: bool = True) -> RedisConfig:
    return RedisConfig(url=server.url, prefix="gw", limits_fail_open=fail_open)


def _replica(folder: Path, redis: RedisConfig, keys: list[dict[str, object]]
             ) -> AbstractAsyncContextManager[Stack]:
    """One gateway replica in front of its own emulated worker, with its own static
    placement (round-robin, no re-planning): Redis is all the replicas share."""
    folder.mkdir()
    return gateway_stack(folder, demands("sql"), workers=1, keys=parse_keys(keys), redis=redis,
                         replan_interval_s=0)


def _openai(stack: Stack, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=stack.v1, api_key=key, max_retries=0, timeout=20)


@pytest.mark.parametrize("burst", [2.0, 20.0])  # leases of one token; of up to two
async def test_two_replicas_limit_a_key_to_its_rate_in_all(
        tmp_path: Path, redis_server: RedisServer, burst: float) -> None:
    rate, span = 10.0, 2.0
    keys = [{"key": "sk-t", "name": "team", "rate_limit": rate, "burst": burst}]
    redis = _redis(redis_server)
    async with _replica(tmp_path / "a", redis, keys) as a, \
            _replica(tmp_path / "b", redis, keys) as b, \
            _openai(a, "sk-t") as ca, _openai(b, "sk-t") as cb:
        assert a.app[SHARED_LIMITS] is not None
        counts = {"ok": 0, "429": 0}
        start = time.monotonic()

        async def user(first: int) -> None:
            turn = first
            while time.monotonic() - start < span:
                c = (ca, cb)[turn % 2]  # alternate between the replicas
                turn += 1
                try:
                    await c.completions.create(model=BASE, prompt="x", max_tokens=1)
                    counts["ok"] += 1
                except openai.RateLimitError:
                    counts["429"] += 1

        await asyncio.gather(*(user(i) for i in range(4)))
        elapsed = time.monotonic() - start
    allowed = burst + rate * elapsed  # one bucket for the key; each replica's would be 2x
    assert 0.7 * allowed <= counts["ok"] <= allowed + 1, (counts, elapsed)
    assert counts["429"] > counts["ok"]  # the load was well past the rate


async def test_redis_outage_fails_open_to_local_buckets(
        tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    keys = [{"key": "sk-t", "name": "team", "rate_limit": 0.5, "burst": 2}]
    async with _replica(tmp_path / "a", _redis(redis_server), keys) as gw, \
            _openai(gw, "sk-t") as c, AsyncExitStack() as stack:
        probe = connect(_redis(redis_server))
        stack.push_async_callback(probe.aclose)
        await c.completions.create(model=BASE, prompt="x", max_tokens=1)
        assert await probe.exists("gw:bucket:team") == 1  # the fleet's bucket
        redis_server.stop()
        outcomes = []
        for _ in range(4):
            try:
                await c.completions.create(model=BASE, prompt="x", max_tokens=1)
                outcomes.append(200)
            except openai.RateLimitError as exc:
                assert exc.response.headers["Retry-After"] == "2"
                outcomes.append(429)
        assert outcomes == [200, 200, 429, 429]  # this replica's bucket: its burst of 2
        warnings = _records(caplog, logging.WARNING)
        assert len(warnings) == 1 and f"Redis at {redis_server.url} unreachable" in warnings[0]
        redis_server.start()  # empty: the key's bucket starts full again
        for _ in range(5):
            await asyncio.sleep(1.1)  # past the backoff
            await c.completions.create(model=BASE, prompt="x", max_tokens=1)
            if await probe.exists("gw:bucket:team"):
                break
        assert await probe.exists("gw:bucket:team") == 1  # served through Redis again
    assert [m for m in _records(caplog, logging.INFO) if "answers again" in m]
    assert len(_records(caplog, logging.WARNING)) == 1


async def test_redis_outage_fails_closed_with_503(
        tmp_path: Path, redis_server: RedisServer) -> None:
    keys: list[dict[str, object]] = [{"key": "sk-t", "name": "team", "rate_limit": 100},
                                     {"key": "sk-free", "name": "free"}]  # never asks Redis
    async with _replica(tmp_path / "a", _redis(redis_server, fail_open=False), keys) as gw, \
            _openai(gw, "sk-t") as c, _openai(gw, "sk-free") as free:
        await c.completions.create(model=BASE, prompt="x", max_tokens=1)
        redis_server.stop()
        with pytest.raises(openai.InternalServerError) as info:
            await c.completions.create(model=BASE, prompt="x", max_tokens=1)
        assert info.value.status_code == 503
        assert info.value.response.headers["Retry-After"] == "1"
        body = {"model": BASE, "prompt": "x", "max_tokens": 1}
        async with gw.session.post(f"{gw.v1}/completions", json=body,
                                   headers={"Authorization": "Bearer sk-t"}) as resp:
            error = (await resp.json())["error"]
        assert resp.status == 503 and error["type"] == "ServiceUnavailableError"
        assert error["code"] == 503 and "rate limiter is unavailable" in error["message"]
        await free.completions.create(model=BASE, prompt="x", max_tokens=1)
        redis_server.start()
        for _ in range(5):
            await asyncio.sleep(1.1)
            try:
                await c.completions.create(model=BASE, prompt="x", max_tokens=1)
                break
            except openai.InternalServerError:
                continue
        else:
            raise AssertionError("still 503 after Redis came back")


async def test_no_shared_limits_without_a_rate_limited_key(
        tmp_path: Path, redis_server: RedisServer) -> None:
    async with _replica(tmp_path / "a", _redis(redis_server),
                        [{"key": "sk-free", "name": "free"}]) as gw:
        assert gw.app[SHARED_LIMITS] is None
        async with aiohttp.ClientSession() as session, session.get(
                f"{gw.v1}/models", headers={"Authorization": "Bearer sk-free"}) as resp:
            assert resp.status == 200
