"""``lorafleet admin`` against a live gateway (and a tiny app for replan and drain)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.cli import main
from gateway.emulator.adapters import scaffold_adapter
from gateway.keys import FLEET
from tests.gateway.server.factories import Stack, demands, gateway_stack

TOKEN = "admin-secret"


@pytest.fixture
async def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    monkeypatch.setenv("LORAFLEET_ADMIN_TOKEN", TOKEN)
    async with gateway_stack(tmp_path, demands("sql", "chat"), workers=2) as s:
        yield s


async def admin(*args: str) -> int:
    # The CLI is synchronous: run it off the loop that serves the gateway.
    return await asyncio.to_thread(main, ["admin", *args])


async def test_placement_workers_and_adapters(stack: Stack, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert await admin("placement", "--url", stack.url) == 0
    out = capsys.readouterr().out
    assert "2 GPUs active" in out and "sql" in out and "one_per_adapter: 2" in out
    assert await admin("workers", "--url", stack.url, "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert [w["resident"] for w in data["workers"]] == [["sql"], ["chat"]]
    path = str(scaffold_adapter(tmp_path / "new", rank=16))
    assert await admin("add-adapter", "new", path, "--rate", "2", "--url", stack.url,
                       "--json") == 0
    assert json.loads(capsys.readouterr().out)["rank"] == 16
    assert "new" in stack.app[FLEET].adapters
    assert await admin("add-adapter", "new", path, "--url", stack.url) == 1
    assert capsys.readouterr().err.strip() == \
        "lorafleet: admin add-adapter: 409 (name): The adapter `new` exists."
    assert await admin("add-adapter", "bad", str(tmp_path), "--url", stack.url) == 2
    assert capsys.readouterr().err.startswith("lorafleet: admin add-adapter: 400 (path): ")
    assert await admin("remove-adapter", "sql", "--url", stack.url) == 0
    assert "unloaded_from" in capsys.readouterr().out and "sql" not in stack.app[FLEET].adapters
    assert await admin("remove-adapter", "sql", "--url", stack.url) == 1
    assert "404" in capsys.readouterr().err


async def test_one_line_errors(stack: Stack, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert await admin("workers", "--url", stack.url, "--token", "wrong") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "401: Incorrect admin token." in err
    monkeypatch.delenv("LORAFLEET_ADMIN_TOKEN")
    assert await admin("workers", "--url", stack.url) == 2
    assert "no admin token" in capsys.readouterr().err
    assert await admin("workers", "--url", "http://127.0.0.1:1", "--token", "t") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach the gateway" in err
    assert await admin("workers", "--url", "localhost:8080", "--token", "t") == 2
    assert "--url" in capsys.readouterr().err


async def test_replan_and_drain_calls(capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[tuple[str, str, Any]] = []

    async def record(request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        seen.append((request.path, request.headers["Authorization"], body))
        return web.json_response({"moves": 1, "dry_run": bool(body and body["dry_run"])})

    app = web.Application()
    app.router.add_post("/admin/replan", record)
    app.router.add_post("/admin/workers/{name}/drain", record)
    async with TestServer(app) as server:
        url = str(server.make_url("")).rstrip("/")
        assert await admin("replan", "--dry-run", "--url", url, "--token", "t") == 0
        assert "moves" in capsys.readouterr().out
        assert await admin("drain", "w 1", "--url", url, "--token", "t", "--json") == 0
        assert json.loads(capsys.readouterr().out) == {"moves": 1, "dry_run": False}
    assert seen == [("/admin/replan", "Bearer t", {"dry_run": True}),
                    ("/admin/workers/w 1/drain", "Bearer t", None)]
