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
from gateway.server.keys import FLEET
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
    assert await admin("add-adapter", "other", path, "--url", stack.url) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith("added other: rank 16, 0 req/s, 512 input / 128 output tokens")
    assert await admin("remove-adapter", "sql", "--url", stack.url) == 0
    out = capsys.readouterr().out.strip()
    assert out == "removed sql: its requests finished; unloaded from w0", out
    assert "sql" not in stack.app[FLEET].adapters
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
    monkeypatch.setenv("LORAFLEET_URL", "localhost:8080")
    assert await admin("workers", "--token", "t") == 2
    assert capsys.readouterr().err.strip() == ("lorafleet: admin workers: LORAFLEET_URL: must "
                                               "be an http:// or https:// URL, got "
                                               "'localhost:8080'")


REPLAN = {"trigger": "admin", "dry_run": False, "fresh": False, "planned_gpus": 2,
          "gpus": [0, 1], "validated": True, "starved": [], "repairs": 0,
          "learned_windows": 0, "baselines": {"one_per_adapter": 3, "round_robin": 2},
          "plan_seconds": 0.12, "validate_seconds": 0.5,
          "diff": {"moved": ["sql"], "retired": ["w1"], "added": [],
                   "steps": [{"kind": "load", "worker": "w0", "adapter": "sql"},
                             {"kind": "retire", "worker": "w1", "adapter": None}]},
          "capacity_scale": 1.01, "speeds": {"w0": 0.98},
          "migration": {"outcome": "ok", "loaded": [["w0", "sql"]], "releasing": [],
                        "retired": ["w1"], "moved": ["sql"], "seconds": 0.3, "error": None},
          "actuator": None, "gpus_active": 1, "at": 0.0}


async def test_replan_drain_and_undrain_calls(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[tuple[str, str, Any]] = []

    async def record(request: web.Request) -> web.Response:
        body = await request.json() if request.can_read_body else None
        seen.append((request.path, request.headers["Authorization"], body))
        if request.path.endswith("/undrain"):
            return web.json_response({"worker": "w 1", "status": "up"})
        trigger = "drain" if request.path.endswith("/drain") else "admin"
        return web.json_response({**REPLAN, "trigger": trigger,
                                  "dry_run": bool(body and body["dry_run"])})

    app = web.Application()
    app.router.add_post("/admin/replan", record)
    app.router.add_post("/admin/workers/{name}/drain", record)
    app.router.add_post("/admin/workers/{name}/undrain", record)
    async with TestServer(app) as server:
        url = str(server.make_url("")).rstrip("/")
        monkeypatch.setenv("LORAFLEET_URL", url)  # the gateway when --url is not given
        assert await admin("replan", "--dry-run", "--token", "t") == 0
        out = " ".join(capsys.readouterr().out.split())
        assert out.startswith("re-plan (admin, dry run): 2 GPUs planned, 1 active; holds in "
                              "the twin; planned in 0.12 s, checked in 0.5 s"), out
        assert "moved: sql; retired: w1; workers to add: -" in out
        assert "migration: ok in 0.3 s, loaded 1, releasing 0, retired w1" in out
        assert "baselines (GPUs): one_per_adapter 3, round_robin 2" in out
        assert "{" not in out and "[" not in out  # no raw JSON
        assert await admin("replan", "--fresh", "--token", "t") == 0
        capsys.readouterr()
        assert await admin("drain", "w 1", "--token", "t") == 0
        out = " ".join(capsys.readouterr().out.split())
        assert out.startswith("re-plan (drain): 2 GPUs planned") and "{" not in out
        assert await admin("drain", "w 1", "--token", "t", "--json") == 0
        assert json.loads(capsys.readouterr().out)["trigger"] == "drain"
        assert await admin("undrain", "w 1", "--token", "t") == 0
        assert capsys.readouterr().out.strip() == "w 1: up (back to the planner)"
    assert seen == [("/admin/replan", "Bearer t", {"dry_run": True}),
                    ("/admin/replan", "Bearer t", {"dry_run": False, "fresh": True}),
                    ("/admin/workers/w 1/drain", "Bearer t", None),
                    ("/admin/workers/w 1/drain", "Bearer t", None),
                    ("/admin/workers/w 1/undrain", "Bearer t", None)]


def test_url_defaults_to_the_gateways_default(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("LORAFLEET_URL", raising=False)
    calls: list[str] = []

    def fake(url: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(url)
        return {"workers": []}

    monkeypatch.setattr("gateway.admin_cli.request", fake)
    assert main(["admin", "workers", "--token", "t"]) == 0
    assert calls == ["http://127.0.0.1:8080"]
