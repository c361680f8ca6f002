"""The state file: atomic JSON, and a gateway restart that restores placement and registry."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.config import (
    AdapterEntry,
    AdapterOrigin,
    GatewayConfig,
    PlacementMode,
    WorkerEndpoint,
)
from gateway.control.planning import round_robin
from gateway.control.state import FileStateStore, GatewayState, snapshot
from gateway.emulator.adapters import scaffold_adapter
from gateway.server.app import create_app
from gateway.server.emulated import scaffold_entries, start_emulated, worker_configs
from gateway.server.keys import CONTROL, FLEET
from planner.demand import AdapterDemand
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


def _saved(**adapter: Any) -> str:
    return json.dumps({"version": 2, "placement": {"w0": {"sql": 1.0}}, "adapters": [
        {"name": "sql", "rank": 8, "rate": 1.0, "path": "/a/sql", **adapter}]})


@pytest.mark.parametrize(("text", "field"), [
    ("{not json", "state_file"),
    ('{"version": 99, "placement": {}, "adapters": []}', "state_file.version"),
    ('{"version": 1}', "state_file.placement"),
    ("[]", "state_file"),
    # Every number is bounded as in the config: one absurd rate stopped every re-plan.
    (_saved(rank=7), "state_file.adapters[0].rank"),
    (_saved(rate=1e308), "state_file.adapters[0].rate"),
    (_saved(rate="2"), "state_file.adapters[0].rate"),
    (_saved(input_tokens=0), "state_file.adapters[0].input_tokens"),
    (_saved(name=".."), "state_file.adapters[0].name"),
    (_saved(origin="ops"), "state_file.adapters[0].origin"),
    (_saved(path=None), "state_file.adapters[0].path"),
    (_saved(extra=1), "state_file.adapters[0].extra"),
    ('{"version": 2, "placement": {"w0": {"sql": 2.0}}, "adapters": []}',
     "state_file.placement.w0.sql"),
    ('{"version": 2, "placement": {}, "adapters": [], "engines": {"w0": {"max_loras": 0}}}',
     "state_file.engines.w0.max_loras"),
])
def test_a_bad_state_file_is_a_config_error_naming_the_field(tmp_path: Path, text: str,
                                                             field: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        FileStateStore(path).load()
    assert info.value.field == field


def test_a_version_1_state_reads_its_adapters_as_added_through_the_admin_api(
        tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(_saved().replace('"version": 2', '"version": 1'))
    state = FileStateStore(path).load()
    assert state is not None and state.adapters[0].origin is AdapterOrigin.ADMIN


def test_serve_refuses_a_bad_state_file_in_one_line(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    state = tmp_path / "state.json"
    state.write_text(_saved(rank=7))
    config = tmp_path / "gateway.yaml"
    config.write_text(f"base_model: b\nworkers: ['http://127.0.0.1:1']\nstate_file: {state}\n"
                      "replan_interval_s: 0\n")
    assert main(["serve", "--config", str(config), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "state_file.adapters[0].rank: must be 0" in err


async def _ready(app: web.Application) -> None:
    for _ in range(300):
        if app[FLEET].ready:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not ready")


async def _add(session: aiohttp.ClientSession, server: TestServer, name: str, path: str,
               rate: float) -> None:
    """Register an adapter through the admin API."""
    async with session.post(server.make_url("/admin/adapters"),
                            json={"name": name, "path": path, "rate": rate},
                            headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
        assert resp.status == 201, await resp.text()


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
            await _add(session, server, "extra", extra, 3.0)
            keeper = app[CONTROL].keeper
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


async def _roots(session: aiohttp.ClientSession, url: str) -> dict[str, str]:
    async with session.get(f"{url}/v1/models") as resp:
        return {m["id"]: m["root"] for m in (await resp.json())["data"] if m["parent"]}


async def test_a_restart_merges_the_config_with_the_state(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """The config is the source of truth for what it lists: after a restart a new adapter is
    served (it was a 404), a changed path is loaded anew on the worker, an adapter the config
    dropped is unloaded; the one added through the admin API stays; each difference is
    logged."""
    monkeypatch.setenv("LORAFLEET_ADMIN_TOKEN", TOKEN)
    names = ["w0"]
    ads = demands("sql", "chat", "old")
    plan = round_robin(ads, names, max_model_len=MAX_MODEL_LEN)
    fleet = await start_emulated(worker_configs(plan, served_model_name=BASE, time_scale=200.0))
    state_file = tmp_path / "state.json"
    extra = str(scaffold_adapter(tmp_path / "extra", rank=8))
    moved = str(scaffold_adapter(tmp_path / "v2" / "chat", rank=8))
    fresh = str(scaffold_adapter(tmp_path / "new", rank=8))
    try:
        cfg = GatewayConfig(base_model=BASE, workers=(WorkerEndpoint("w0", fleet.urls[0]),),
                            adapters=scaffold_entries(ads, tmp_path / "ad"),
                            placement=PlacementMode.ROUND_ROBIN, max_model_len=MAX_MODEL_LEN,
                            health_interval_s=0.2, replan_interval_s=0,
                            state_file=str(state_file))
        app = create_app(cfg, plan=plan)
        async with TestServer(app) as server, aiohttp.ClientSession() as session:
            await _ready(app)
            await _add(session, server, "extra", extra, 1.0)
            async with session.post(server.make_url("/v1/completions"), json={
                    "model": "extra", "prompt": "x", "max_tokens": 1}) as resp:
                assert resp.status == 200  # placed on demand
            assert (await _roots(session, fleet.urls[0]))["old"].endswith("/old")
        # The config now moves chat, drops old and adds new.
        entries = {a.demand.name: a for a in cfg.adapters}
        changed = replace(cfg, adapters=(
            entries["sql"], replace(entries["chat"], path=moved),
            AdapterEntry(AdapterDemand(name="new", rank=8, rate=1.0), fresh)))
        caplog.set_level("INFO", logger="gateway.control.restore")
        app = create_app(changed, plan=plan)
        async with TestServer(app) as server, aiohttp.ClientSession() as session:
            await _ready(app)
            assert set(app[FLEET].adapters) == {"sql", "chat", "new", "extra"}
            async with session.post(server.make_url("/v1/completions"), json={
                    "model": "new", "prompt": "x", "max_tokens": 1}) as resp:
                assert resp.status == 200, await resp.text()
            async with session.post(server.make_url("/v1/completions"), json={
                    "model": "old", "prompt": "x", "max_tokens": 1}) as resp:
                assert resp.status == 404
            roots = await _roots(session, fleet.urls[0])
            assert roots["chat"] == moved and "old" not in roots
            assert roots["extra"] == extra and roots["new"] == fresh
        notes = [r.getMessage() for r in caplog.records if r.name == "gateway.control.restore"]
        assert "the state file: adapter chat: the config changes path " \
               f"{entries['chat'].path} -> {moved}" in notes
        assert "the state file: adapter new: new in the config" in notes
        assert "the state file: adapter extra: added through the admin API, kept" in notes
        assert any(n.startswith("the state file: adapter old: no longer in the config")
                   for n in notes)
    finally:
        await fleet.stop()
