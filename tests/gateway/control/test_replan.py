"""Re-planning and migration on a live fleet of emulated workers, under load from the official
``openai`` client: adapters move and workers retire with zero failed or truncated requests; a
load that fails rolls back; a drained or dead worker's adapters are placed elsewhere."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import openai
import pytest
from openai import AsyncOpenAI

from gateway.control.migrate import fold
from gateway.fleet.metrics import ReplanTrigger
from gateway.fleet.registry import WorkerStatus
from gateway.server.keys import CONTROL, FLEET
from tests.gateway.server.factories import Stack, demands, gateway_stack

MAX_TOKENS = 4


@dataclass
class Tally:
    ok: int = 0
    failed: list[str] = field(default_factory=list)


@asynccontextmanager
async def steady_load(stack: Stack, models: Sequence[str],
                      concurrency: int = 8) -> AsyncIterator[Tally]:
    """Clients cycling through ``models`` (every other request streamed) until the block
    ends; a request fails if it errors or comes back truncated."""
    tally = Tally()
    stop = asyncio.Event()

    async def one(client: AsyncOpenAI, model: str, stream: bool) -> None:
        try:
            if stream:
                chunks = [c async for c in await client.completions.create(
                    model=model, prompt="hello", max_tokens=MAX_TOKENS, stream=True)]
                text = [c for c in chunks if c.choices]
                ok = len(text) == MAX_TOKENS and text[-1].choices[0].finish_reason == "length"
            else:
                done = await client.completions.create(model=model, prompt="hello",
                                                       max_tokens=MAX_TOKENS)
                ok = done.usage is not None and done.usage.completion_tokens == MAX_TOKENS
        except openai.APIError as exc:
            tally.failed.append(f"{model}: {exc!r}")
            return
        if ok:
            tally.ok += 1
        else:
            tally.failed.append(f"{model}: truncated")

    async def client_loop(k: int) -> None:
        async with AsyncOpenAI(base_url=stack.v1, api_key="unused", max_retries=0,
                               timeout=30) as client:
            i = k
            while not stop.is_set():
                await one(client, models[i % len(models)], stream=bool(i % 2))
                i += concurrency

    tasks = [asyncio.create_task(client_loop(k)) for k in range(concurrency)]
    try:
        yield tally
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def _names(n: int) -> list[str]:
    return [f"a{i:02d}" for i in range(n)]


async def test_fresh_replan_under_load_moves_adapters_and_retires_workers(
        tmp_path: Path) -> None:
    names = _names(30)
    async with gateway_stack(tmp_path, demands(*names), workers=8, roomy=True,
                             replan_interval_s=0) as stack:
        fleet, replanner = stack.app[FLEET], stack.app[CONTROL].replanner
        assert fleet.gpus_active == 8
        async with steady_load(stack, names) as tally:
            await asyncio.sleep(0.5)
            result = await replanner.replan(ReplanTrigger.ADMIN, fresh=True)
            await asyncio.sleep(0.5)
        assert result["migration"]["outcome"] == "ok", result
        assert result["diff"]["moved"] and result["diff"]["retired"]
        assert not tally.failed, tally.failed[:5]
        assert tally.ok > 50
        assert fleet.gpus_active == result["planned_gpus"] < 8
        assert result["migration"]["releasing"]
        await stack.app[CONTROL].releases.settled()  # the sources drain and unload
        retired = set(result["diff"]["retired"])
        for i, w in enumerate(fleet.workers):
            if w.endpoint.name in retired:  # nothing routed, nothing left loaded
                assert not fleet.plan.workers[i].shares and not w.resident
        # every adapter is still served
        async with AsyncOpenAI(base_url=stack.v1, api_key="x", max_retries=0) as client:
            for name in names:
                await client.completions.create(model=name, prompt="x", max_tokens=1)


async def test_periodic_replan_stays_within_the_move_budget(tmp_path: Path) -> None:
    names = _names(16)
    async with gateway_stack(tmp_path, demands(*names), workers=8, roomy=True,
                             replan_interval_s=0, move_budget=4) as stack:
        fleet, replanner = stack.app[FLEET], stack.app[CONTROL].replanner
        async with steady_load(stack, names) as tally:
            first = await replanner.replan(ReplanTrigger.PERIODIC)
            second = await replanner.replan(ReplanTrigger.PERIODIC)
        assert not tally.failed, tally.failed[:5]
        assert 0 < len(first["diff"]["moved"]) <= 4
        assert first["diff"]["retired"]
        assert fleet.gpus_active < 8
        assert len(second["diff"]["moved"]) <= 4


async def test_a_replan_starts_from_the_split_the_fleet_routes_by(tmp_path: Path) -> None:
    # A replicated adapter is re-planned at the shares it is routed by, not equal parts.
    split = [{"a0": 0.7, "a1": 1.0}, {"a0": 0.3}]
    async with gateway_stack(tmp_path, demands("a0", "a1"), shares=split,
                             replan_interval_s=0, search_seconds=0.25) as stack:
        job = stack.app[CONTROL].replanner.snapshot()
        assert job.shares == {"w0": {"a0": 0.7, "a1": 1.0}, "w1": {"a0": 0.3}}
        assert job.search_seconds == 0.25


async def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    names = _names(8)
    async with gateway_stack(tmp_path, demands(*names), workers=4, roomy=True,
                             replan_interval_s=0) as stack:
        fleet = stack.app[FLEET]
        before = fleet.holding()
        result = await stack.app[CONTROL].replanner.replan(ReplanTrigger.ADMIN, dry_run=True,
                                                   fresh=True)
        assert result["dry_run"] and result["diff"]["steps"] and "migration" not in result
        assert fleet.holding() == before


async def test_failed_load_rolls_back_and_routing_is_unchanged(tmp_path: Path) -> None:
    names = _names(8)
    async with gateway_stack(tmp_path, demands(*names), workers=4, roomy=True,
                             replan_interval_s=0) as stack:
        fleet = stack.app[FLEET]
        before = fleet.holding()
        for name in names:  # no adapter can be loaded anywhere new
            path = fleet.adapters[name].path
            assert path is not None
            shutil.rmtree(path)
        async with steady_load(stack, names) as tally:
            result = await stack.app[CONTROL].replanner.replan(ReplanTrigger.ADMIN, fresh=True)
        assert result["migration"]["outcome"] == "rolled_back"
        assert result["migration"]["error"]
        assert fleet.holding() == before
        assert not tally.failed, tally.failed[:5]
        assert fleet.gpus_active == 4


async def test_drained_worker_hands_its_adapters_over(tmp_path: Path) -> None:
    names = _names(8)
    async with gateway_stack(tmp_path, demands(*names), workers=4, roomy=True,
                             replan_interval_s=0) as stack:
        fleet = stack.app[FLEET]
        lost = fleet.holding()["w3"]
        assert lost
        async with steady_load(stack, names) as tally:
            result = await stack.app[CONTROL].replanner.drain(3)
        assert not tally.failed, tally.failed[:5]
        assert result["trigger"] == "drain"
        assert fleet.workers[3].status is WorkerStatus.DRAINING
        assert not fleet.holding()["w3"]
        held = set().union(*fleet.holding().values())
        assert lost <= held
        # drained, then stopped by the operator: draining throughout, never down (no page)
        assert (await stack.worker_states())["w3"] == "draining"
        await stack.workers.runners[3].cleanup()
        deadline = asyncio.get_running_loop().time() + 30
        while fleet.workers[3].status is not WorkerStatus.DOWN:
            assert asyncio.get_running_loop().time() < deadline, "the stop was not noticed"
            await asyncio.sleep(0.1)
        states = await stack.worker_states()  # the others up, or retired if emptied
        assert states["w3"] == "draining" and "down" not in states.values(), states


async def _kill_and_wait_for_replacement(stack: Stack, index: int) -> None:
    """Stop worker ``index``; wait (60 s at most) until it is down and holds nothing."""
    fleet = stack.app[FLEET]
    name = f"w{index}"
    await stack.workers.runners[index].cleanup()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while fleet.holding()[name] or fleet.workers[index].up:
        assert loop.time() < deadline, f"the dead worker {name}'s adapters were not re-placed"
        await asyncio.sleep(0.1)


async def test_dead_worker_adapters_are_placed_elsewhere(tmp_path: Path) -> None:
    names = _names(8)
    async with gateway_stack(tmp_path, demands(*names), workers=4, roomy=True,
                             replan_interval_s=0) as stack:
        fleet = stack.app[FLEET]
        lost = sorted(fleet.holding()["w2"])
        await _kill_and_wait_for_replacement(stack, 2)
        assert (await stack.worker_states())["w2"] == "down"  # crashed while serving: pages
        async with AsyncOpenAI(base_url=stack.v1, api_key="x", max_retries=0) as client:
            for name in lost:
                await client.completions.create(model=name, prompt="x", max_tokens=1)


def _first_plan_fails(monkeypatch: pytest.MonkeyPatch, error: Exception) -> list[str]:
    """The replanner's first planning call raises ``error``; the list counts the calls."""
    from gateway.control.replanner import Replanner

    real = Replanner.compute
    calls: list[str] = []

    async def flaky(self: Replanner, job):  # type: ignore[no-untyped-def]
        calls.append("compute")
        if len(calls) == 1:
            raise error
        return await real(self, job)

    monkeypatch.setattr(Replanner, "compute", flaky)
    return calls


async def test_a_failed_forced_replan_is_retried_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-plan for a dead worker that fails (here the planning call, once) is retried
    within seconds: with only forced re-plans (``replan_interval_s: 0``) nothing else would
    ever place the dead worker's adapters again (they answered 503 until the next period)."""
    calls = _first_plan_fails(monkeypatch, OverflowError("math range error"))
    names = _names(8)
    async with gateway_stack(tmp_path, demands(*names), workers=4, roomy=True,
                             replan_interval_s=0) as stack:
        await _kill_and_wait_for_replacement(stack, 2)
        replanner = stack.app[CONTROL].replanner
        assert len(calls) == 2 and replanner.owed is None
        assert [h["trigger"] for h in replanner.history] == ["worker_down"]


async def test_a_drain_whose_replan_fails_answers_503_and_completes_on_retry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _first_plan_fails(monkeypatch, RuntimeError("planning failed"))
    monkeypatch.setenv("LORAFLEET_TEST_ADMIN", "s3cret")
    names = _names(8)
    async with gateway_stack(tmp_path, demands(*names), workers=4, roomy=True,
                             replan_interval_s=0, admin_token_env="LORAFLEET_TEST_ADMIN",
                             ) as stack:
        async with stack.session.post(f"{stack.url}/admin/workers/w1/drain",
                                      headers={"Authorization": "Bearer s3cret"}) as resp:
            assert resp.status == 503 and "Retry-After" in resp.headers
            assert "retried" in (await resp.json())["error"]["message"]
        fleet = stack.app[FLEET]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while fleet.workers[1].status is not WorkerStatus.DRAINING:
            assert loop.time() < deadline, "the drain was not completed on a retry"
            await asyncio.sleep(0.1)
        assert not fleet.holding()["w1"] and len(calls) == 2


async def test_admin_routes_replan_and_drain(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLEET_TEST_ADMIN", "s3cret")
    names = _names(8)
    async with gateway_stack(tmp_path, demands(*names), workers=4, roomy=True,
                             replan_interval_s=0, admin_token_env="LORAFLEET_TEST_ADMIN",
                             ) as stack:
        auth = {"Authorization": "Bearer s3cret"}
        url = f"{stack.url}/admin"
        async with stack.session.post(f"{url}/replan", json={"dry_run": True}) as resp:
            assert resp.status == 401
        async with stack.session.post(f"{url}/replan", json={"dry_run": 1, "x": 2},
                                      headers=auth) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["param"]
        async with stack.session.post(f"{url}/replan", json={"dry_run": True, "fresh": True},
                                      headers=auth) as resp:
            assert resp.status == 200
            body = await resp.json()
        assert body["dry_run"] and body["diff"]["steps"] and body["planned_gpus"] >= 1
        async with stack.session.post(f"{url}/workers/w9/drain", headers=auth) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"]["param"] == "name"
        async with stack.session.post(f"{url}/workers/w1/drain", headers=auth) as resp:
            assert resp.status == 200
        assert not stack.app[FLEET].holding()["w1"]
        async with stack.session.post(f"{url}/workers/w1/undrain", headers=auth) as resp:
            assert (await resp.json())["status"] == "up"


async def test_registered_adapter_is_placed_on_first_request(tmp_path: Path) -> None:
    names = _names(4)
    async with gateway_stack(tmp_path, demands(*names), workers=2, roomy=True,
                             replan_interval_s=0) as stack:
        fleet = stack.app[FLEET]
        entry = fleet.adapters.pop("a03")  # registered later, placed nowhere yet
        for wp in fleet.plan.workers:
            wp.shares.pop("a03", None)
        fleet.set_plan(fleet.plan)
        fleet.adapters["a03"] = entry
        assert not fleet.placed("a03")
        async with AsyncOpenAI(base_url=stack.v1, api_key="x", max_retries=0,
                               timeout=60) as client:
            done = await asyncio.gather(*(client.completions.create(
                model="a03", prompt="x", max_tokens=2) for _ in range(5)))
        assert all(d.usage is not None and d.usage.completion_tokens == 2 for d in done)
        assert fleet.placed("a03")
        triggers = [h["trigger"] for h in stack.app[CONTROL].replanner.history]
        assert triggers == ["on_demand"]  # one re-plan for all five requests


def test_fold_puts_load_of_missing_workers_on_running_hosts_only() -> None:
    shares = {"w0": {"a": 1.0}, "w1": {"b": 1.0}, "new-2": {"c": 1.0, "d": 1.0}}
    placement = fold(shares, ["w0", "w1"], up={"w0"})  # w1 is being drained
    assert [dict(w.shares) for w in placement.workers] == [
        {"a": 1.0, "c": 1.0, "d": 1.0}, {"b": 1.0}]


def test_fold_puts_no_adapter_on_a_worker_that_cannot_load_it() -> None:
    """A rank-16 adapter from a GPU the plan wanted but that does not run went to the worker
    with the fewest adapters whatever its ``max_lora_rank`` (8): the load failed and rolled
    the whole migration back. Now it goes where it can load, or nowhere (with a warning)."""
    ranks = {"a": 8, "b": 8, "c": 16, "d": 8, "e": 32}
    limit = {"w0": 8, "w1": 16}

    def takes(worker: str, adapter: str) -> bool:
        return ranks[adapter] <= limit[worker]

    shares = {"w0": {"a": 1.0}, "w1": {"b": 1.0, "d": 1.0}, "new-2": {"c": 1.0},
              "new-3": {"e": 1.0}}
    placement = fold(shares, ["w0", "w1"], takes=takes)
    assert [dict(w.shares) for w in placement.workers] == [
        {"a": 1.0}, {"b": 1.0, "d": 1.0, "c": 1.0}]  # w0 has fewer adapters, but rank 8
    # No worker takes the whole group: adapter by adapter (w1 takes only b and c here).
    mixed = fold({"w0": {"a": 1.0}, "w1": {"b": 1.0}, "new-2": {"c": 1.0, "d": 1.0}},
                 ["w0", "w1"], takes=lambda w, k: ranks[k] <= 8 if w == "w0" else k in "bc")
    assert [dict(w.shares) for w in mixed.workers] == [{"a": 1.0, "d": 1.0},
                                                       {"b": 1.0, "c": 1.0}]


@pytest.mark.parametrize("surge_replan", [True, False])
async def test_a_jump_in_an_adapters_traffic_replans_at_once(tmp_path: Path,
                                                             surge_replan: bool) -> None:
    """Planned at a trickle (0.001 req/s of the profile's time: 0.2 req/s at time scale 200),
    ``a00`` then gets about 20 req/s: a surge re-plan within seconds, where the periodic one
    is an hour away; none with ``surge_replan`` off."""
    names = _names(2)
    trickle = [replace(d, rate=0.001) for d in demands(*names)]
    async with gateway_stack(tmp_path, trickle, workers=2, roomy=True,
                             replan_interval_s=3600, observe_window_s=3.0,
                             surge_replan=surge_replan) as stack:
        replanner = stack.app[CONTROL].replanner
        async with AsyncOpenAI(base_url=stack.v1, api_key="x", max_retries=0) as client:
            for _ in range(120):  # about 6 s at 20 req/s
                await client.completions.create(model="a00", prompt="x", max_tokens=1)
                await asyncio.sleep(0.05)
                if any(h["trigger"] == "surge" for h in replanner.history):
                    break
        triggers = [h["trigger"] for h in replanner.history]
        assert ("surge" in triggers) is surge_replan, triggers
        if surge_replan:  # planned for what it now gets: the surge does not fire again
            assert replanner.planned is not None and replanner.planned["a00"] > 5.0
