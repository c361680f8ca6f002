"""OpenAI-style errors: malformed JSON, oversized bodies, unknown routes, no healthy worker."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway.server.access import ACCESS_LOGGER
from tests.gateway.server.factories import BASE, demands, gateway_stack


def _is_error(body: dict, status: int) -> None:  # type: ignore[type-arg]
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == status


async def test_malformed_json_and_non_object(tmp_path: Path) -> None:
    async with gateway_stack(tmp_path, demands("sql")) as s:
        for data in (b"{bad", b"[1, 2]", b"\xff\xfe"):
            async with s.session.post(f"{s.v1}/completions", data=data,
                                      headers={"Content-Type": "application/json"}) as resp:
                assert resp.status == 400
                _is_error(await resp.json(), 400)
        async with s.session.post(f"{s.v1}/chat/completions",
                                  json={"model": "sql", "messages": []}) as resp:
            body = await resp.json()
            assert resp.status == 400 and body["error"]["param"] == "messages"


async def test_deep_json_is_a_400_without_a_traceback(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A 30,000-deep array, under the body limit, was a 500 with a traceback per request."""
    deep = b'{"model": "sql", "prompt": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    async with gateway_stack(tmp_path, demands("sql")) as s:
        for path in ("/completions", "/chat/completions"):
            async with s.session.post(f"{s.v1}{path}", data=deep,
                                      headers={"Content-Type": "application/json"}) as resp:
                assert resp.status == 400
                body = await resp.json()
                _is_error(body, 400)
                assert body["error"]["type"] == "BadRequestError"
    assert not [r for r in caplog.records if r.levelname == "ERROR" or r.exc_info]


async def test_a_huge_model_name_is_clipped_in_the_error_and_the_log(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    name = "m" * 100_000
    async with gateway_stack(tmp_path, demands("sql")) as s, s.session.post(
            f"{s.v1}/completions", json={"model": name, "prompt": "x"}) as resp:
        assert resp.status == 404
        message = (await resp.json())["error"]["message"]
    assert len(message) < 400 and "(100000 characters)" in message
    lines = [r.getMessage() for r in caplog.records if r.name == ACCESS_LOGGER]
    assert lines and all(len(line) < 1000 for line in lines)


async def test_probes_and_scrapes_are_logged_at_debug(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    async with gateway_stack(tmp_path, demands("sql")) as s:
        for path in ("/metrics", "/health", "/ready", "/v1/models"):
            async with s.session.get(f"{s.url}{path}") as resp:
                assert resp.status == 200
    paths = [r.getMessage().split()[1] for r in caplog.records if r.name == ACCESS_LOGGER]
    assert paths == ["path=/v1/models"]


async def test_a_workers_validation_error_has_the_gateways_error_style(tmp_path: Path) -> None:
    """vLLM answers a body that fails its validation with ``"type": "Bad Request"``; the
    gateway's own 400s say ``BadRequestError``: passed through, the worker's says it too."""
    async with gateway_stack(tmp_path, demands("sql")) as s, s.session.post(
            f"{s.v1}/completions", json={"model": "sql", "prompt": "x", "n": 2}) as resp:
        assert resp.status == 400
        body = await resp.json()
    _is_error(body, 400)
    assert body["error"]["type"] == "BadRequestError", body


async def test_oversized_body_is_413(tmp_path: Path) -> None:
    async with gateway_stack(tmp_path, demands("sql"), max_body_bytes=4096) as s:
        body = {"model": "sql", "prompt": "x" * 5000, "max_tokens": 1}
        async with s.session.post(f"{s.v1}/completions", json=body) as resp:
            assert resp.status == 413
            _is_error(await resp.json(), 413)

        async def chunks():  # type: ignore[no-untyped-def]
            yield b'{"model": "sql", "prompt": "'
            for _ in range(10):
                yield b"x" * 1000
            yield b'"}'

        async with s.session.post(f"{s.v1}/completions", data=chunks(),
                                  headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 413


async def test_unknown_route_and_method(tmp_path: Path) -> None:
    async with gateway_stack(tmp_path, demands("sql")) as s:
        async with s.session.get(f"{s.v1}/nothing") as resp:
            assert resp.status == 404
            _is_error(await resp.json(), 404)
        async with s.session.get(f"{s.v1}/completions") as resp:
            assert resp.status == 405 and "POST" in resp.headers["Allow"]


async def test_all_workers_down_is_503(tmp_path: Path) -> None:
    # No health checks while the workers stop: a check accepted by a closing worker leaves
    # its socket to the garbage collector (a ResourceWarning, an error here).
    async with gateway_stack(tmp_path, demands("sql"), workers=2,
                             health_interval_s=60.0) as s:
        await s.workers.stop()
        for model in (BASE, "sql"):
            async with s.session.post(f"{s.v1}/completions",
                                      json={"model": model, "prompt": "x"}) as resp:
                assert resp.status == 503, model
                assert int(resp.headers["Retry-After"]) >= 1
                _is_error(await resp.json(), 503)
        async with s.session.get(f"{s.url}/ready") as resp:
            assert resp.status == 503
