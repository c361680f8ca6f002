"""The state file: atomic JSON, and a gateway restart that restores placement and registry."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.emulator.adapters import scaffold_adapter
from gateway.keys import FLEET, STATE_KEEPER
from gateway.server.app import create_app
from gateway.server.config import AdapterEntry, GatewayConfig, PlacementMode, WorkerEndpoint
from gateway.server.emulated import scaffold_entries, start_emulated, worker_configs
from gateway.server.planning import round_robin
from gateway.server.state import FileStateStore, GatewayState, snapshot
from planner.features import AdapterDemand
from tests.gateway.server.factories import BASE, MAX_MODEL_LEN, demands, plan_of
from twin.errors import ConfigError
from twin.routing import BASE_MODEL

TOKEN = "admin-secret"


def test_store_round_trip_is_atomic_json(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    store = FileStateStore(path)
    assert store.load() is None
    sql = AdapterEntry(AdapterDemand(name="sql", rank=8, rate=2.0, input_tokens=300), "/a/sql")
    state = GatewayState(placement={"w0": {"sql": 0.5, BASE_MODEL: 1.0}, "w1": {"sql": 0.5}},
                         adapters=(sql,), planned_gpus=2)
    store.save(state)
    store.save(state)  # replacing an existing file
    assert store.load() == state
    data = json.loads(path.read_text())
    assert data["version"] == GatewayState.VERSION and data["adapters"][0]["path"] == "/a/sql"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temporary files left


@pytest.mark.parametrize("text", ["{not json", '{"version": 99, "placement": {}, '
                                  '"adapters": []}', '{"version": 1}', "[]"])
def test_a_bad_state_file_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        FileStateStore(path).load()
    assert info.value.field == "state_file"


async def _ready(app: web.Application) -> None:
    for _ in range(300):
        if app[FLEET].ready:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not ready")


async def test_restart_restores_placement_and_registry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLEET_ADMIN_TOKEN", TOKEN)
    names = ["w0", "w1"]
    ads = demands("sql", "chat", "code")
    first_plan = plan_of([{}, {"sql": 1.0, "chat": 1.0, "code": 1.0}],  # all on w1
                         round_robin(ads, names, max_model_len=MAX_MODEL_LEN))
    fleet = await start_emulated(worker_configs(first_plan, served_model_name=BASE,
                                                time_scale=200.0))
    state_file = tmp_path / "state" / "gateway.json"
    state_file.parent.mkdir()
    extra = str(scaffold_adapter(tmp_path / "extra", rank=32))
    try:
        cfg = GatewayConfig(base_model=BASE, workers=tuple(
            WorkerEndpoint(n, u) for n, u in zip(names, fleet.urls, strict=True)),
            adapters=scaffold_entries(ads, tmp_path / "ad"),
            placement=PlacementMode.ROUND_ROBIN, max_model_len=MAX_MODEL_LEN,
            health_interval_s=0.2, state_file=str(state_file))
        before: dict[str, Any] = {}
        app = create_app(cfg, plan=first_plan)
        async with TestServer(app) as server, aiohttp.ClientSession() as session:
            await _ready(app)
            async with session.post(server.make_url("/admin/adapters"),
                                    json={"name": "extra", "path": extra, "rate": 3.0},
                                    headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                assert resp.status == 201
            keeper = app[STATE_KEEPER]
            assert keeper is not None
            await keeper.flush()
            saved = FileStateStore(state_file).load()  # saved on change, not only at exit
            assert saved is not None and "extra" in {a.demand.name for a in saved.adapters}
            before = snapshot(app[FLEET]).to_json()
        # A new gateway on the same state file, handed a different (round-robin) plan: the
        # saved placement wins, and the registry comes back with the added adapter.
        app = create_app(cfg, plan=round_robin(ads, names, max_model_len=MAX_MODEL_LEN))
        async with TestServer(app):
            await _ready(app)
            after = snapshot(app[FLEET]).to_json()
            assert app[FLEET].adapters["extra"].demand.rank == 32
            assert app[FLEET].workers[1].resident == {"sql", "chat", "code"}
            assert app[FLEET].workers[0].resident == set()
        assert after == before
        assert after["placement"] == {"w0": {}, "w1": {"sql": 1.0, "chat": 1.0, "code": 1.0}}
    finally:
        await fleet.stop()
