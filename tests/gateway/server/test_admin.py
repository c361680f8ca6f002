"""The admin API: its token, placement and workers, adding and removing adapters."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI

from gateway.emulator.adapters import scaffold_adapter
from gateway.server.keys import FLEET
from tests.gateway.server.factories import BASE, Stack, demands, gateway_stack

TOKEN = "admin-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    monkeypatch.setenv("LORAFLEET_ADMIN_TOKEN", TOKEN)
    async with gateway_stack(tmp_path, demands("sql", "chat", "code"), workers=2) as s:
        yield s


async def call(stack: Stack, method: str, path: str, body: Any = None,
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with stack.session.request(method, stack.url + path, json=body,
                                     headers=AUTH if headers is None else headers) as resp:
        return resp.status, await resp.json()


async def test_token_required(stack: Stack) -> None:
    status, body = await call(stack, "GET", "/admin/placement", headers={})
    assert status == 401 and body["error"]["type"] == "invalid_request_error"
    status, body = await call(stack, "GET", "/admin/workers",
                              headers={"Authorization": "Bearer nope"})
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    status, body = await call(stack, "DELETE", "/admin/adapters/sql", headers={})
    assert status == 401 and "sql" in stack.app[FLEET].adapters  # nothing happened
    status, _ = await call(stack, "GET", "/admin/nothing")
    assert status == 404  # behind the token, unknown admin routes are plain 404s


async def test_no_token_configured_is_403(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LORAFLEET_ADMIN_TOKEN", raising=False)
    async with gateway_stack(tmp_path, demands("sql")) as s:
        status, body = await call(s, "GET", "/admin/placement")
    assert status == 403 and "LORAFLEET_ADMIN_TOKEN" in body["error"]["message"]


async def test_placement_and_workers(stack: Stack) -> None:
    status, body = await call(stack, "GET", "/admin/placement")
    assert status == 200
    assert body["workers"] == [{"name": "w0", "adapters": {"sql": 1.0, "code": 1.0}},
                               {"name": "w1", "adapters": {"chat": 1.0}}]
    assert body["planned_gpus"] == 2 and body["gpus_active"] == body["gpus_running"] == 2
    # round_robin once the planning process has measured it (at start-up)
    assert body["baselines"]["one_per_adapter"] == 3 and body["unplaced"] == []
    assert set(body["baselines"]) <= {"one_per_adapter", "round_robin"}
    status, body = await call(stack, "GET", "/admin/workers")
    assert status == 200
    assert body["workers"][1] == {"name": "w1", "url": stack.workers.urls[1], "status": "up",
                                  "state": "up", "outstanding": 0, "resident": ["chat"]}


async def test_add_adapter_reads_its_rank(stack: Stack, tmp_path: Path) -> None:
    path = str(scaffold_adapter(tmp_path / "extra" / "new", rank=16))
    status, body = await call(stack, "POST", "/admin/adapters",
                              {"name": "new", "path": path, "rate": 0.5})
    assert status == 201
    assert (body["name"], body["rank"], body["rate"], body["placed"]) == ("new", 16, 0.5, False)
    async with AsyncOpenAI(base_url=stack.v1, api_key="unused", max_retries=0) as c:
        cards = {m.id: m for m in (await c.models.list()).data}
    assert cards["new"].model_extra["root"] == path  # type: ignore[index]
    status, body = await call(stack, "POST", "/admin/adapters", {"name": "new", "path": path})
    assert status == 409 and body["error"]["param"] == "name"
    status, body = await call(stack, "POST", "/admin/adapters", {"name": BASE, "path": path})
    assert status == 409
    _, placement = await call(stack, "GET", "/admin/placement")
    assert placement["unplaced"] == ["new"]  # placing it is the replanner's job


@pytest.mark.parametrize(("body", "param"), [
    ({"path": "/x"}, "name"),
    ({"name": "n"}, "path"),
    ({"name": "n", "path": "/x", "rate": -1}, "rate"),
    ({"name": "n", "path": "/x", "rate": "fast"}, "rate"),
    ({"name": "n", "path": "/x", "output_tokens": 0}, "output_tokens"),
    ({"name": "n", "path": "/x", "ranks": 8}, "ranks"),
    ({"name": "a b", "path": "/x"}, "name"),
    ({"name": "n", "path": "/no/such/folder"}, "path"),
    # Every number bounded as in the config: a rate of 1e308 was saved and then stopped
    # every re-plan (OverflowError), failover included.
    ({"name": "n", "path": "/x", "rate": 1e308}, "rate"),
    ({"name": "n", "path": "/x", "input_tokens": 1e12}, "input_tokens"),
    ({"name": "n", "path": "/x", "cv": 1e9}, "cv"),
    ({"name": "..", "path": "/x"}, "name"),
    ({"name": ".hidden", "path": "/x"}, "name"),
    ({"name": "a\\b", "path": "/x"}, "name"),
    ({"name": "x" * 257, "path": "/x"}, "name"),
])
async def test_bad_adapter_bodies_name_the_field(stack: Stack, body: dict[str, Any],
                                                 param: str) -> None:
    status, answer = await call(stack, "POST", "/admin/adapters", body)
    assert status == 400 and answer["error"]["param"] == param, answer


async def test_bad_rank_or_json(stack: Stack, tmp_path: Path) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"r": 3}))
    status, body = await call(stack, "POST", "/admin/adapters",
                              {"name": "odd", "path": str(folder)})
    assert status == 400 and body["error"]["param"] == "path" and "r must be" in \
        body["error"]["message"]
    async with stack.session.post(f"{stack.url}/admin/adapters", data=b"{nope",
                                  headers=AUTH) as resp:
        assert resp.status == 400
    status, body = await call(stack, "POST", "/admin/adapters", [1, 2])
    assert status == 400


async def test_deep_json_is_a_400_without_a_traceback(
        stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    deep = b"[" * 30_000 + b"]" * 30_000
    for path in ("/admin/adapters", "/admin/replan"):
        async with stack.session.post(f"{stack.url}{path}", data=deep,
                                      headers={**AUTH, "Content-Type": "application/json"},
                                      ) as resp:
            assert resp.status == 400
            assert "nests too deeply" in (await resp.json())["error"]["message"]
    assert not [r for r in caplog.records if r.levelname == "ERROR" or r.exc_info]


async def test_a_long_unknown_name_is_clipped(stack: Stack) -> None:
    status, body = await call(stack, "DELETE", "/admin/adapters/" + "n" * 5000)
    assert status == 404
    assert len(body["error"]["message"]) < 400 and "(5000 characters)" in \
        body["error"]["message"]


async def test_remove_adapter_waits_for_its_stream(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFLEET_ADMIN_TOKEN", TOKEN)
    # time_scale 10: 400 tokens stream for about half a second
    async with gateway_stack(tmp_path, demands("sql", "chat", "code"), workers=2,
                             time_scale=10.0) as stack:
        status, body = await call(stack, "DELETE", "/admin/adapters/nope")
        assert status == 404 and body["error"]["param"] == "name"
        fleet = stack.app[FLEET]
        busy_when_removed: list[int] = []
        async with AsyncOpenAI(base_url=stack.v1, api_key="unused", max_retries=0,
                               timeout=30) as c:
            stream = await c.completions.create(model="sql", prompt="x", max_tokens=400,
                                                stream=True)
            first = await stream.__anext__()
            removal = asyncio.create_task(call(stack, "DELETE", "/admin/adapters/sql"))
            removal.add_done_callback(lambda _: busy_when_removed.append(
                fleet.busy(0, ["sql"])))
            for _ in range(100):
                if "sql" not in fleet.adapters:
                    break
                await asyncio.sleep(0.005)
            assert "sql" in fleet.removing and fleet.busy(0, ["sql"]) == 1
            status, body = await call(stack, "POST", "/v1/completions",
                                      {"model": "sql", "prompt": "x", "max_tokens": 1})
            assert status == 404  # routing stopped at once; the stream goes on
            assert not removal.done()
            rest = [chunk async for chunk in stream]
            status, body = await removal
        assert first.choices and len(rest) == 399  # the stream finished whole
        assert busy_when_removed == [0]  # the removal waited for it
        assert status == 200 and body == {"name": "sql", "removed": True, "drained": True,
                                          "unloaded_from": ["w0"], "failed": {}}
        async with stack.session.get(f"{stack.workers.urls[0]}/v1/models") as resp:
            assert "sql" not in {m["id"] for m in (await resp.json())["data"]}
        assert fleet.removing == set() and fleet.workers[0].resident == {"code"}
        _, placement = await call(stack, "GET", "/admin/placement")
        assert placement["workers"][0]["adapters"] == {"code": 1.0}
