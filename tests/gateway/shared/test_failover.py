"""Replicas as processes on one real Redis, clients (the official ``openai`` client) on the
others throughout: the leader killed (SIGKILL), the leader frozen past its lease (SIGSTOP,
then SIGCONT: fenced, it steps down), and Redis restarted under load."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import openai
import redis.asyncio as aioredis
from openai import AsyncOpenAI

from tests.gateway.server.factories import demands
from tests.gateway.shared.replica_procs import (
    ADMIN,
    GatewayProcess,
    gateway_processes,
    leads,
    series,
)
from tests.redis_server import RedisServer

NAMES = ("a0", "a1", "a2", "a3")
NEW_LEADER_WITHIN_S = 10.0  # the bound (the lease's TTL is 2 s here)


@dataclass
class Tally:
    served: int = 0
    failed: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def clients(gateways: Sequence[GatewayProcess], per: int = 2) -> AsyncIterator[Tally]:
    """``per`` clients on each of ``gateways``, short completions of every adapter."""
    tally, stop = Tally(), asyncio.Event()

    async def loop(gateway: GatewayProcess, k: int) -> None:
        async with AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key="x", max_retries=0,
                               timeout=30) as client:
            while not stop.is_set():
                model = NAMES[k % len(NAMES)]
                k += 1
                try:
                    done = await client.completions.create(model=model, prompt="hi",
                                                           max_tokens=4)
                    assert done.usage is not None and done.usage.completion_tokens == 4
                    tally.served += 1
                except (openai.APIError, AssertionError) as exc:
                    tally.failed.append(f"{gateway.name} {model}: {exc!r}")

    tasks = [asyncio.create_task(loop(g, k)) for g in gateways for k in range(per)]
    try:
        yield tally
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def _leader(session: aiohttp.ClientSession, gateways: Sequence[GatewayProcess],
                  timeout: float) -> tuple[GatewayProcess, float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while loop.time() - start < timeout:
        for g in gateways:
            if await leads(session, g):
                return g, loop.time() - start
        await asyncio.sleep(0.1)
    raise AssertionError("no replica leads")


async def _moved(session: aiohttp.ClientSession, gateways: Sequence[GatewayProcess]) -> float:
    total = 0.0
    for g in gateways:
        total += sum((await series(session, g, "lorafleet_adapters_moved_total")).values())
    return total


async def test_leader_killed_another_leads_and_requests_do_not_fail(
        tmp_path: Path, redis_server: RedisServer) -> None:
    async with gateway_processes(tmp_path, redis_server.url, demands(*NAMES)) as gateways, \
            aiohttp.ClientSession() as session:
        leader, rest = gateways[0], gateways[1:]
        assert await leads(session, leader)
        async with clients(rest) as tally:
            await asyncio.sleep(1.0)
            leader.kill()
            new, took = await _leader(session, rest, NEW_LEADER_WITHIN_S)
            # the next re-plan (a drain, asked of the follower, which may still take the
            # killed replica for the leader) runs on the new leader
            follower = next(g for g in rest if g is not new)
            async with session.post(f"{follower.url}/admin/workers/w1/drain",
                                    headers=ADMIN) as resp:
                body = await resp.json()
                assert resp.status == 200, body
            await asyncio.sleep(1.0)
        assert took < NEW_LEADER_WITHIN_S, took
        assert body["replica"] == new.name and body["migration"]["outcome"] == "ok"
        moved = body["diff"]["moved"]
        assert moved and await _moved(session, rest) == len(moved)  # each moved once
        assert tally.served > 0 and not tally.failed, tally.failed[:5]


async def test_leader_frozen_past_its_lease_does_not_act_and_steps_down(
        tmp_path: Path, redis_server: RedisServer) -> None:
    async with gateway_processes(tmp_path, redis_server.url, demands(*NAMES),
                                 replicas=2) as gateways, aiohttp.ClientSession() as session:
        old, other = gateways
        client = aioredis.Redis.from_url(redis_server.url)
        try:
            async with clients([other]) as tally:
                old.freeze()
                new, _ = await _leader(session, [other], NEW_LEADER_WITHIN_S)
                version = await client.get("lorafleet:state:version")
                old.thaw()  # it resumes believing nothing; its clock says the lease lapsed
                loop = asyncio.get_running_loop()
                start = loop.time()
                while await leads(session, old) and loop.time() - start < 10:
                    await asyncio.sleep(0.1)
                # a re-plan asked of the old leader is carried out by the new one
                async with session.post(f"{old.url}/admin/replan", headers=ADMIN) as resp:
                    body = await resp.json()
                    assert resp.status == 200, body
            assert not await leads(session, old) and await leads(session, new)
            assert body["replica"] == new.name
            replans = await series(session, old, "lorafleet_replans_total")
            assert sum(replans.values()) == 0, replans  # the old leader never acted
            now = (await client.get("lorafleet:state:version") or b"").decode()
            assert now.split(":")[0] == version.decode().split(":")[0]  # the new epoch's
            assert not tally.failed, tally.failed[:5]
        finally:
            await client.aclose()


async def test_redis_restarted_under_load(tmp_path: Path, redis_server: RedisServer) -> None:
    async with gateway_processes(tmp_path, redis_server.url, demands(*NAMES),
                                 replicas=2) as gateways, aiohttp.ClientSession() as session:
        async with clients(gateways) as tally:
            await asyncio.sleep(1.0)
            redis_server.stop()
            before = tally.served
            await asyncio.sleep(3.0)  # past the lease's TTL: nobody leads, all serve
            served_without = tally.served - before
            redis_server.start()
            _, took = await _leader(session, gateways, NEW_LEADER_WITHIN_S)
            client = aioredis.Redis.from_url(redis_server.url)
            try:
                loop = asyncio.get_running_loop()
                start = loop.time()
                while await client.get("lorafleet:state") is None:
                    assert loop.time() - start < 5, "the state was not published again"
                    await asyncio.sleep(0.1)
            finally:
                await client.aclose()
            await asyncio.sleep(1.0)
        assert served_without > 0 and not tally.failed, tally.failed[:5]
        assert took < NEW_LEADER_WITHIN_S
