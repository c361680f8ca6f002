"""Routing by the placement with ``twin.routing.Router``: only holders get an adapter's
requests, in the plan's shares; a lost adapter or a dead worker is retried once elsewhere."""

from __future__ import annotations

from pathlib import Path

from gateway.server.keys import FLEET
from tests.gateway.server.factories import BASE, Stack, demands, gateway_stack
from twin.routing import BASE_MODEL

# sql only on w0; chat on w1 and w2 at 3:1 (smooth weighted round-robin: exact proportions).
SHARES = [{"sql": 1.0}, {"chat": 0.75}, {"chat": 0.25}]


async def _complete(s: Stack, model: str, n: int = 1) -> list[int]:
    statuses = []
    for _ in range(n):
        async with s.session.post(f"{s.v1}/completions",
                                  json={"model": model, "prompt": "x", "max_tokens": 1}) as r:
            await r.read()
            statuses.append(r.status)
    return statuses


async def test_requests_go_only_to_holders_in_their_shares(tmp_path: Path) -> None:
    async with gateway_stack(tmp_path, demands("sql", "chat"), workers=3,
                             shares=SHARES) as s:
        assert await _complete(s, "sql", 3) == [200] * 3
        assert await s.served() == [3, 0, 0]
        assert await _complete(s, "chat", 8) == [200] * 8
        assert await s.served() == [3, 6, 2]


async def test_adapters_are_loaded_only_where_placed(tmp_path: Path) -> None:
    async with gateway_stack(tmp_path, demands("sql", "chat"), workers=3,
                             shares=SHARES) as s:
        held = []
        for url in s.workers.urls:
            async with s.session.get(f"{url}/v1/models") as resp:
                cards = (await resp.json())["data"]
            held.append(sorted(c["id"] for c in cards if c["parent"] == BASE))
        assert held == [["sql"], ["chat"], ["chat"]]


async def test_base_model_is_spread_over_workers(tmp_path: Path) -> None:
    async with gateway_stack(tmp_path, [*demands("sql"), *demands("base-load", rank=0)],
                             workers=2) as s:
        plan = s.app[FLEET].plan
        assert plan is not None
        assert all(w.shares.get(BASE_MODEL) == 0.5 for w in plan.workers)
        assert await _complete(s, BASE, 4) == [200] * 4
        assert await s.served() == [2, 2]


async def test_lost_adapter_is_retried_on_another_holder(tmp_path: Path) -> None:
    async with gateway_stack(tmp_path, demands("chat"), workers=2,
                             shares=[{"chat": 0.5}, {"chat": 0.5}]) as s:
        async with s.session.post(f"{s.workers.urls[0]}/v1/unload_lora_adapter",
                                  json={"lora_name": "chat"}) as resp:
            assert resp.status == 200
        assert await _complete(s, "chat", 4) == [200] * 4
        assert await s.served() == [0, 4]


async def test_dead_worker_is_retried_and_marked_down(tmp_path: Path) -> None:
    async with gateway_stack(tmp_path, demands("chat"), workers=2,
                             shares=[{"chat": 0.5}, {"chat": 0.5}],
                             health_interval_s=60.0) as s:
        runner = s.workers.runners.pop(0)
        await runner.cleanup()
        assert await _complete(s, "chat", 4) == [200] * 4
        assert await s.worker_metric(1, "vllm:request_success_total") == 4
        assert await s.worker_states() == {"w0": "down", "w1": "up"}  # it was serving
