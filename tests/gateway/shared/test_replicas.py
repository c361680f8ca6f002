"""Gateway replicas in one process on one real Redis, in front of the same emulated workers,
driven with the official ``openai`` client through every replica: one leader, followers that
route by its placement within a second, admin calls on a follower carried out by the leader,
every replica's traffic seen by the leader, and a hand-over when the leader stops."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from gateway.emulator.adapters import scaffold_adapter
from gateway.server.keys import CONTROL, FLEET, OBSERVER
from gateway.shared.lease import LeaderInfo
from tests.gateway.server.factories import demands
from tests.gateway.shared.replica_stack import Replica, replica_stack, until
from tests.redis_server import RedisServer, free_port

NAMES = ("a0", "a1", "a2", "a3")
ADMIN = {"Authorization": "Bearer replica-token"}


@pytest.fixture(autouse=True)
def _admin_token(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("LORAFLEET_ADMIN_TOKEN", "replica-token")
    yield


async def _complete(replica: Replica, model: str) -> None:
    async with AsyncOpenAI(base_url=f"{replica.url}/v1", api_key="x", max_retries=0,
                           timeout=30) as client:
        done = await client.completions.create(model=model, prompt="hi", max_tokens=4)
        assert done.usage is not None and done.usage.completion_tokens == 4


async def _leader_series(session: aiohttp.ClientSession, replica: Replica) -> dict[str, float]:
    async with session.get(f"{replica.url}/metrics") as resp:
        text = await resp.text()
    return {s.labels["replica"]: s.value for f in text_string_to_metric_families(text)
            if f.name == "lorafleet_leader" for s in f.samples}


async def test_followers_route_by_the_leaders_placement_within_a_second(
        tmp_path: Path, redis_server: RedisServer) -> None:
    async with replica_stack(tmp_path, redis_server.url, demands(*NAMES), replicas=3
                             ) as replicas, aiohttp.ClientSession() as session:
        leader, followers = replicas[0], replicas[1:]
        assert leader.leading and not any(f.leading for f in followers)
        assert [await _leader_series(session, r) for r in replicas] == [
            {"r0": 1.0}, {"r1": 0.0}, {"r2": 0.0}]
        for replica in replicas:  # every replica serves every adapter
            await asyncio.gather(*(_complete(replica, n) for n in NAMES))
        before = leader.app[FLEET].holding()
        assert all(f.app[FLEET].holding() == before for f in followers)

        changed_at: list[float] = []
        loop = asyncio.get_running_loop()

        async def watch() -> float:
            await until(lambda: leader.app[FLEET].holding() != before, what="a new placement")
            changed_at.append(loop.time())
            await until(lambda: all(f.app[FLEET].holding() == leader.app[FLEET].holding()
                                    for f in followers), timeout=5, what="followers")
            return loop.time() - changed_at[0]

        watching = asyncio.create_task(watch())
        # a drain asked of a follower: the leader re-plans and migrates
        async with session.post(f"{followers[0].url}/admin/workers/w1/drain",
                                headers=ADMIN) as resp:
            body = await resp.json()
            assert resp.status == 200, body
        assert body["migration"]["outcome"] == "ok" and body["diff"]["moved"]
        lag = await watching
        assert lag < 1.0, lag
        after = leader.app[FLEET].holding()
        assert after["w1"] == frozenset() and after["w0"] == frozenset(NAMES)
        assert leader.app[CONTROL].replanner.history and not any(
            f.app[CONTROL].replanner.history for f in followers)  # it ran on the leader alone
        for replica in replicas:
            await asyncio.gather(*(_complete(replica, n) for n in NAMES))


async def test_the_leader_sees_every_replicas_traffic(
        tmp_path: Path, redis_server: RedisServer) -> None:
    async with replica_stack(tmp_path, redis_server.url, demands(*NAMES)) as replicas:
        leader, follower = replicas
        for _ in range(5):
            await _complete(follower, "a2")  # only through the follower
        observer = leader.app[OBSERVER]
        # each completion is recorded after its response went out: it may flush later
        await until(lambda: len(observer._arrivals["a2"]) == len(observer._done["a2"]) == 5,
                    timeout=5, what="the follower's arrivals and completions at the leader")
        assert observer.rates(now=asyncio.get_running_loop().time())["a2"] > 0
        assert all(d.completion == 4 for d in observer._done["a2"])


async def test_an_adapter_added_on_a_follower_is_placed_by_the_leader(
        tmp_path: Path, redis_server: RedisServer) -> None:
    async with replica_stack(tmp_path, redis_server.url, demands(*NAMES)
                             ) as replicas, aiohttp.ClientSession() as session:
        leader, follower = replicas
        path = scaffold_adapter(tmp_path / "late", rank=8)
        async with session.post(f"{follower.url}/admin/adapters", headers=ADMIN,
                                json={"name": "late", "path": str(path), "rate": 1.0}) as resp:
            assert resp.status == 201, await resp.text()
        assert "late" in leader.app[FLEET].adapters  # registered on the leader
        await until(lambda: "late" in follower.app[FLEET].adapters, timeout=2)
        await _complete(follower, "late")  # waits for the leader to place and load it
        assert leader.app[FLEET].placed("late") and follower.app[FLEET].placed("late")
        triggers = [b["trigger"] for b in leader.app[CONTROL].replanner.history]
        assert triggers == ["on_demand"], triggers


async def test_a_stopped_leader_hands_over_and_serving_goes_on(
        tmp_path: Path, redis_server: RedisServer) -> None:
    async with replica_stack(tmp_path, redis_server.url, demands(*NAMES), replicas=3
                             ) as replicas, aiohttp.ClientSession() as session:
        leader, rest = replicas[0], replicas[1:]
        failed: list[str] = []
        stop = asyncio.Event()

        async def clients(replica: Replica) -> int:
            served = 0
            while not stop.is_set():
                for name in NAMES:
                    try:
                        await _complete(replica, name)
                        served += 1
                    except openai.APIError as exc:
                        failed.append(f"{name}: {exc!r}")
            return served

        load = [asyncio.create_task(clients(r)) for r in rest]
        await asyncio.sleep(0.5)
        await leader.server.close()  # a clean stop: the lease is released at once
        took = await until(lambda: any(r.leading for r in rest), timeout=10,
                           what="a new leader")
        new = next(r for r in rest if r.leading)
        async with session.post(f"{new.url}/admin/replan", headers=ADMIN) as resp:
            assert resp.status == 200, await resp.text()
        await asyncio.sleep(0.5)
        stop.set()
        served = await asyncio.gather(*load)
        assert not failed, failed[:5]
        assert all(served), served
        assert took < 2.0, took  # a renewal period, not a TTL
        assert new.app[CONTROL].replanner.history[-1]["trigger"] == "admin"


async def test_a_follower_that_knew_a_gone_leader_asks_redis_who_leads(
        tmp_path: Path, redis_server: RedisServer) -> None:
    async with replica_stack(tmp_path, redis_server.url, demands(*NAMES)
                             ) as replicas, aiohttp.ClientSession() as session:
        leader, follower = replicas
        lease = follower.app[CONTROL].role.lease
        assert lease is not None
        lease.leader = LeaderInfo("gone", f"http://127.0.0.1:{free_port()}", 0)  # refused
        async with session.post(f"{follower.url}/admin/replan", headers=ADMIN) as resp:
            body = await resp.json()
            assert resp.status == 200, body
        assert body["replica"] == "r0" and leader.app[CONTROL].replanner.history
