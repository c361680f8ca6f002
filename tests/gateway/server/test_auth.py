"""Client API keys, rate limits, the workers' key, request ids and the access log."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from openai import AsyncOpenAI

from gateway.config import AdapterEntry, GatewayConfig, PlacementMode, WorkerEndpoint
from gateway.config.keys import parse_keys
from gateway.control.planning import round_robin
from gateway.emulator.adapters import scaffold_adapter
from gateway.server.app import create_app
from gateway.server.auth import KeyRing, TokenBucket
from gateway.server.keys import FLEET
from tests.gateway.server.factories import BASE, Stack, demands, gateway_stack
from twin.errors import ConfigError

KEYS = [{"key": "sk-a", "name": "team-a", "adapters": ["sql", BASE]},
        {"key_env": "LF_TEST_KEY_B", "name": "team-b", "rate_limit": 0.5},
        {"key": "sk-ops", "name": "ops", "adapters": "*"}]


@pytest.fixture
async def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Stack]:
    monkeypatch.setenv("LF_TEST_KEY_B", "sk-b")
    async with gateway_stack(tmp_path, demands("sql", "chat"), workers=2,
                             keys=parse_keys(KEYS)) as s:
        yield s


def client(stack: Stack, key: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=stack.v1, api_key=key, max_retries=0, timeout=20)


async def test_missing_or_wrong_key_is_401(stack: Stack) -> None:
    async with client(stack, "sk-wrong") as c:
        with pytest.raises(openai.AuthenticationError) as info:
            await c.completions.create(model="sql", prompt="x", max_tokens=1)
    assert info.value.body == {"message": "Incorrect API key provided.",  # type: ignore[comparison-overlap]
                               "type": "invalid_request_error", "param": None,
                               "code": "invalid_api_key"}
    body = {"model": "sql", "prompt": "x", "max_tokens": 1}
    async with stack.session.post(f"{stack.v1}/completions", json=body) as resp:
        error = (await resp.json())["error"]
        assert resp.status == 401 and error["type"] == "invalid_request_error"
        assert error["code"] is None and "didn't provide an API key" in error["message"]
    for headers in ({"Authorization": "Basic sk-a"}, {"Authorization": "Bearer"}):
        async with stack.session.get(f"{stack.v1}/models", headers=headers) as resp:
            assert resp.status == 401
    for path in ("/health", "/ready", "/metrics"):  # probes and scrapers need no key
        async with stack.session.get(stack.url + path) as resp:
            assert resp.status == 200, path


async def test_key_sees_and_uses_only_its_models(stack: Stack) -> None:
    async with client(stack, "sk-a") as c:
        assert {m.id for m in (await c.models.list()).data} == {BASE, "sql"}
        done = await c.completions.create(model="sql", prompt="x", max_tokens=2)
        assert done.usage is not None and done.usage.completion_tokens == 2
        with pytest.raises(openai.NotFoundError) as hidden:
            await c.completions.create(model="chat", prompt="x", max_tokens=1)
        with pytest.raises(openai.NotFoundError) as unknown:
            await c.completions.create(model="nope", prompt="x", max_tokens=1)
    # Not allowed reads exactly as unknown: the name is not confirmed to exist.
    assert hidden.value.body == {**unknown.value.body,  # type: ignore[dict-item]
                                 "message": "The model `chat` does not exist."}
    async with client(stack, "sk-ops") as c:
        assert {m.id for m in (await c.models.list()).data} == {BASE, "sql", "chat"}
        await c.chat.completions.create(model="chat", max_tokens=1,
                                        messages=[{"role": "user", "content": "hi"}])


async def test_rate_limit_is_429_with_retry_after(stack: Stack) -> None:
    async with client(stack, "sk-b") as c:
        await c.completions.create(model="chat", prompt="x", max_tokens=1)  # the burst of 1
        with pytest.raises(openai.RateLimitError) as info:
            await c.completions.create(model="chat", prompt="x", max_tokens=1)
    assert info.value.response.headers["Retry-After"] == "2"  # a token every 2 s, rounded up
    assert info.value.body["type"] == "requests"  # type: ignore[index]
    assert info.value.body["code"] == "rate_limit_exceeded"  # type: ignore[index]
    async with client(stack, "sk-a") as c:  # other keys have their own buckets
        await c.completions.create(model="sql", prompt="x", max_tokens=1)


def test_token_bucket_refills_at_its_rate() -> None:
    b = TokenBucket(rate=2.0, burst=3.0, now=0.0)
    assert [b.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take(0.0) == pytest.approx(0.5)
    assert b.take(0.5) == 0.0  # one token back after 1/rate seconds
    assert b.take(10.0) == 0.0 and b.take(10.0) == 0.0 and b.take(10.0) == 0.0
    assert b.take(10.0) > 0  # never more than the burst


@pytest.mark.parametrize(("keys", "field"), [
    ([{"name": "a"}], "keys[0].key"),
    ([{"key": "k", "key_env": "E", "name": "a"}], "keys[0].key"),
    ([{"key": "k"}], "keys[0].name"),
    ([{"key": "k", "name": "a", "rate_limit": 0}], "keys[0].rate_limit"),
    ([{"key": "k", "name": "a", "adapters": "sql"}], "keys[0].adapters"),
    ([{"key": "k", "name": "a", "scope": 1}], "keys[0].scope"),
    ([{"key": "k", "name": "a"}, {"key": "j", "name": "a"}], "keys[1].name"),
])
def test_bad_keys_name_the_field(keys: list[dict[str, Any]], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_keys(keys)
    assert info.value.field == field


def test_unset_key_env_names_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        KeyRing.resolve(parse_keys([{"key_env": "LF_TEST_UNSET", "name": "a"}]), environ={})
    assert info.value.field == "keys[0].key_env"
    assert KeyRing.resolve(parse_keys([{"key_env": "K", "name": "a"}]),
                           environ={"K": "v"}).authenticate("bearer v") is not None


def _fake_vllm(seen: list[dict[str, str]], api_key: str) -> web.Application:
    """A worker that checks the key as ``vllm serve --api-key`` does (``/v1/*`` only) and
    records the headers of each completion."""

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.startswith("/v1") and \
                request.headers.get("Authorization") != f"Bearer {api_key}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        return await handler(request)  # type: ignore[no-any-return]

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": BASE, "parent": None}, {"id": "sql", "parent": BASE}]})

    async def health(request: web.Request) -> web.Response:
        return web.Response()

    async def completions(request: web.Request) -> web.Response:
        seen.append({k.lower(): v for k, v in request.headers.items()})
        return web.json_response({"id": "c", "object": "text_completion", "model": "sql",
                                  "created": 0, "choices": [{
                                      "index": 0, "text": "ok", "finish_reason": "length"}],
                                  "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                            "total_tokens": 2}})

    app = web.Application(middlewares=[guard])
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/health", health)
    return app


async def test_worker_key_and_request_id_go_upstream(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("LF_TEST_WORKER_KEY", "sk-worker")
    seen: list[dict[str, str]] = []
    async with TestServer(_fake_vllm(seen, "sk-worker")) as worker:
        sql = demands("sql")
        cfg = GatewayConfig(
            base_model=BASE, workers=(WorkerEndpoint("w0", str(worker.make_url("")).rstrip("/")),),
            adapters=(AdapterEntry(sql[0], str(scaffold_adapter(tmp_path / "sql", rank=8))),),
            placement=PlacementMode.ROUND_ROBIN, worker_api_key_env="LF_TEST_WORKER_KEY",
            keys=parse_keys([{"key": "sk-a", "name": "team-a"}]))
        app = create_app(cfg, plan=round_robin(sql, ["w0"]))
        async with TestServer(app) as gw, aiohttp.ClientSession() as session:
            assert app[FLEET].workers[0].resident == set()
            for _ in range(200):
                if app[FLEET].ready:
                    break
                await asyncio.sleep(0.01)
            assert app[FLEET].workers[0].resident == {"sql"}  # /v1/models passed the guard
            url = str(gw.make_url("/v1/completions"))
            body = {"model": "sql", "prompt": "x", "max_tokens": 1}
            auth = {"Authorization": "Bearer sk-a"}
            caplog.set_level(logging.INFO, logger="lorafleet.access")
            async with session.post(url, json=body,
                                    headers={**auth, "X-Request-Id": "trace-42"}) as resp:
                assert resp.status == 200 and resp.headers["X-Request-Id"] == "trace-42"
            made = []
            for bad in ("bad id", "x" * 129):  # a space; too long
                async with session.post(url, json=body,
                                        headers={**auth, "X-Request-Id": bad}) as resp:
                    made.append(resp.headers["X-Request-Id"])
            assert all(len(m) == 32 for m in made) and made[0] != made[1]
    assert [h["x-request-id"] for h in seen] == ["trace-42", *made]
    assert all(h["authorization"] == "Bearer sk-worker" for h in seen)  # not the client's
    lines = [r.getMessage() for r in caplog.records if r.name == "lorafleet.access"]
    assert lines[0].startswith("method=POST path=/v1/completions model=sql status=200 "
                               "worker=w0 duration_ms=")
    assert lines[0].endswith(" request_id=trace-42 key=team-a")


async def test_unset_worker_key_env_fails_at_creation(tmp_path: Path) -> None:
    cfg = GatewayConfig(base_model=BASE, workers=(WorkerEndpoint("w0", "http://127.0.0.1:1"),),
                        adapters=(), worker_api_key_env="LF_TEST_UNSET_WORKER_KEY")
    with pytest.raises(ConfigError, match="worker_api_key_env"):
        create_app(cfg)
