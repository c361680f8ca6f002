"""The control plane on its own (``gateway/control/plane.py``, ``running.py``): built from its
dependencies in front of emulated workers, with no gateway HTTP (no aiohttp app, no routes),
it installs the placement on the workers, re-plans, migrates and drains."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from gateway.config import GatewayConfig, PlacementMode, WorkerEndpoint
from gateway.control.plane import ControlPlane
from gateway.control.planning import round_robin
from gateway.control.running import running
from gateway.fleet.lora_api import list_adapters
from gateway.fleet.metrics import GatewayMetrics, ReplanTrigger
from gateway.fleet.registry import Fleet, WorkerStatus
from gateway.server.emulated import scaffold_entries, start_emulated, worker_configs
from tests.gateway.server.factories import BASE, MAX_MODEL_LEN, demands, plan_of


@asynccontextmanager
async def plane_over_workers(folder: Path, names: list[str], shares: list[dict[str, float]],
                             ) -> AsyncIterator[tuple[ControlPlane, list[str]]]:
    """Two emulated workers holding ``shares``, and a running control plane over them."""
    adapters = demands(*names)
    workers = [f"w{i}" for i in range(len(shares))]
    plan = plan_of(shares, round_robin(adapters, workers, max_model_len=MAX_MODEL_LEN))
    emulated = await start_emulated(worker_configs(plan, served_model_name=BASE,
                                                   time_scale=200.0))
    cfg = GatewayConfig(base_model=BASE, workers=tuple(
        WorkerEndpoint(n, u) for n, u in zip(workers, emulated.urls, strict=True)),
        adapters=scaffold_entries(adapters, folder), placement=PlacementMode.ROUND_ROBIN,
        max_model_len=MAX_MODEL_LEN, health_interval_s=0.2, replan_interval_s=0,
        validate_replans=False, time_scale=200.0, train_target=False)
    fleet = Fleet(cfg.base_model, cfg.workers, {a.demand.name: a for a in cfg.adapters},
                  cfg.routing, cfg.retry_after_s)
    metrics = GatewayMetrics()
    metrics.bind(fleet, adapters=len(cfg.adapters))
    plane = ControlPlane(cfg, fleet, metrics)
    try:
        async with aiohttp.ClientSession() as session:
            plane.session = session
            async with running(plane, plan):
                for _ in range(500):
                    if fleet.ready:
                        break
                    await asyncio.sleep(0.01)
                assert fleet.ready
                yield plane, emulated.urls
    finally:
        await emulated.stop()


async def test_the_plane_installs_its_placement_on_the_workers(tmp_path: Path) -> None:
    async with plane_over_workers(tmp_path, ["a", "b"], [{"a": 1.0, "b": 1.0}, {}]) as (
            plane, urls):
        assert plane.role.leading  # alone: no redis:, it always leads
        resident = await list_adapters(plane.session, urls[0], timeout=5)
        assert {"a", "b"} <= resident
        assert plane.fleet.holding() == {"w0": frozenset({"a", "b"}), "w1": frozenset()}


async def test_a_drain_moves_the_adapters_off_the_worker(tmp_path: Path) -> None:
    async with plane_over_workers(tmp_path, ["a", "b"], [{"a": 1.0}, {"b": 1.0}]) as (
            plane, urls):
        body = await plane.replanner.drain(1)
        assert body["trigger"] == ReplanTrigger.DRAIN.value
        assert body["migration"]["outcome"] == "ok"
        assert plane.fleet.holding()["w1"] == frozenset()
        assert "b" in plane.fleet.holding()["w0"]
        assert "b" in await list_adapters(plane.session, urls[0], timeout=5)
        await plane.releases.settled()  # the source drains and unloads in the background
        assert "b" not in await list_adapters(plane.session, urls[1], timeout=5)
        assert plane.fleet.workers[1].status is WorkerStatus.DRAINING
        assert plane.metrics.replans.labels("drain")._value.get() == 1


async def test_a_dry_run_changes_nothing(tmp_path: Path) -> None:
    async with plane_over_workers(tmp_path, ["a", "b", "c"],
                                  [{"a": 1.0, "b": 1.0, "c": 1.0}, {}]) as (plane, _):
        before = plane.fleet.holding()
        body = await plane.replanner.replan(ReplanTrigger.ADMIN, dry_run=True, fresh=True)
        assert body["dry_run"] and "migration" not in body
        assert plane.fleet.holding() == before
