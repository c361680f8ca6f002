"""The leader lease on a real Redis: one leader at a time, a clean hand-over, a lapsed lease
that cannot act (locally, nor in Redis: fenced writes), and a Redis that goes away."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from gateway.config.redis import RedisConfig, parse_redis
from gateway.shared.client import connect
from gateway.shared.lease import LeaderLease
from gateway.shared.published import Published
from tests.redis_server import RedisServer


def config(server: RedisServer, name: str, ttl: float = 1.0) -> RedisConfig:
    return parse_redis({"url": server.url, "replica": name, "lease_ttl_s": ttl,
                        "op_timeout_s": 0.3, "connect_timeout_s": 0.3}, host="127.0.0.1",
                       port=8080)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def pair(redis_server: RedisServer) -> AsyncIterator[tuple[LeaderLease, LeaderLease]]:
    a_cfg, b_cfg = config(redis_server, "a"), config(redis_server, "b")
    a_client, b_client = connect(a_cfg), connect(b_cfg)
    try:
        yield LeaderLease(a_client, a_cfg), LeaderLease(b_client, b_cfg)
    finally:
        await a_client.aclose()
        await b_client.aclose()


async def test_one_leader_and_a_clean_hand_over(
        pair: tuple[LeaderLease, LeaderLease]) -> None:
    a, b = pair
    assert await a.step() and not await b.step()
    assert b.leader is not None and (b.leader.replica, b.leader.epoch) == ("a", a.epoch)
    assert await a.step() and not await b.step()  # renewed, still a's
    await a.release()
    assert not a.leading and await b.step()  # at once, not after the TTL
    assert b.epoch is not None and a.leader is not None and b.epoch > a.leader.epoch


async def test_a_lapsed_lease_cannot_act_here_nor_in_redis(
        redis_server: RedisServer) -> None:
    clock = Clock()
    a_cfg, b_cfg = config(redis_server, "a", ttl=0.6), config(redis_server, "b", ttl=0.6)
    a_client, b_client = connect(a_cfg), connect(b_cfg)
    try:
        a, b = LeaderLease(a_client, a_cfg, clock=clock), LeaderLease(b_client, b_cfg)
        assert await a.step()
        stale = a.value
        assert stale is not None and a.epoch is not None
        published = Published(a_client, a_cfg)
        assert await published.publish(stale, a.epoch, b"{}") is not None
        clock.now += 0.6  # a's process is paused past its TTL (its clock runs on) ...
        assert not a.leading  # ... so it knows, before any call to Redis, not to act
        await asyncio.sleep(0.7)  # the key expires in Redis
        assert await b.step()
        assert await published.publish(stale, a.epoch, b"{}") is None  # fenced: refused
        assert not await a.step() and a.value is None  # it steps down
        assert a.leader is not None and a.leader.replica == "b"
    finally:
        await a_client.aclose()
        await b_client.aclose()


async def test_redis_gone_the_lease_lapses_and_is_taken_again(
        redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    cfg = config(redis_server, "a")
    client = connect(cfg)
    try:
        lease = LeaderLease(client, cfg, clock=clock)
        assert await lease.step()
        redis_server.stop()
        caplog.set_level(logging.INFO, logger="gateway.shared.lease")
        assert await lease.step()  # within its TTL: it still leads (nobody else can)
        clock.now += 1.0
        assert not await lease.step()  # past it: stepped down
        assert not await lease.step()
        lines = [r.getMessage() for r in caplog.records]
        assert sum("unreachable" in line for line in lines) == 1, lines  # one line an outage
        assert any("lapsed" in line for line in lines), lines
        redis_server.start()  # a restart: its data is gone, the lease is free
        assert await lease.step()
        assert any("answers again" in r.getMessage() for r in caplog.records)
    finally:
        await client.aclose()
