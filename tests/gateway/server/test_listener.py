"""The gateway's listener (``gateway/server/listener.py``) over real sockets: slow headers are
cut at the header timeout, connection limits in all and per address keep others served, and
malformed requests get an OpenAI-style 400 without a traceback in the log."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest

from gateway.config import parse_config
from gateway.server.app import create_app, serve

OTHER = "127.0.0.2"  # a second client address on the loopback network


@asynccontextmanager
async def gateway(**overrides: Any) -> AsyncIterator[int]:
    """A gateway on a free port, in front of a worker that is down (``/health`` answers)."""
    cfg = parse_config({"base_model": "b", "workers": ["http://127.0.0.1:1"],
                        "replan_interval_s": 0, "health_interval_s": 60, **overrides})
    runner = await serve(create_app(cfg), "127.0.0.1", 0)
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


async def _health(port: int) -> int:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{port}/health", timeout=aiohttp.ClientTimeout(total=30)) as resp:
        return resp.status


async def _open(port: int, source: str = "127.0.0.1"
                ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def _ask(port: int, source: str = "127.0.0.1") -> bytes:
    """One ``GET /health`` on a new connection from ``source``: the raw response."""
    reader, writer = await _open(port, source)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    try:
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()


async def test_slow_headers_are_cut_at_the_header_timeout_while_others_are_served() -> None:
    """200 clients trickling a request head stayed open 30 s and more (aiohttp's keep-alive
    timer, 75 s); with ``client_header_timeout_s: 1`` they are closed within seconds."""
    async with gateway(client_header_timeout_s=1) as port:
        slow = [await _open(port) for _ in range(200)]
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> float:
            """A header line every 0.25 s (for 50 s at most) until the gateway closes."""
            writer.write(b"GET /health HTTP/1.1\r\n")
            try:
                for i in range(200):
                    writer.write(b"X-Slow-%d: 1\r\n" % i)
                    try:
                        if not await asyncio.wait_for(reader.read(1), 0.25):
                            break  # closed
                    except TimeoutError:
                        continue
            except ConnectionError:
                pass
            finally:
                writer.close()
            return loop.time() - started

        tasks = [asyncio.create_task(trickle(r, w)) for r, w in slow]
        assert await _health(port) == 200  # served while the 200 trickle
        closed_after = await asyncio.wait_for(asyncio.gather(*tasks), 40)
        assert max(closed_after) < 20  # the trickle would go on for 50 s


async def test_past_the_per_address_limit_a_client_is_refused_and_others_served() -> None:
    async with gateway(client_max_connections_per_address=20) as port:
        held = [await _open(port, OTHER) for _ in range(20)]
        refused = await _ask(port, OTHER)
        head, _, body = refused.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in head
        error = json.loads(body)["error"]
        assert error["type"] == "ServiceUnavailableError" and error["code"] == 503
        assert (await _ask(port)).startswith(b"HTTP/1.1 200")  # another address is served
        held.pop()[1].close()  # a slot is freed
        for _ in range(100):
            answer = await _ask(port, OTHER)
            if answer.startswith(b"HTTP/1.1 200"):
                break
            await asyncio.sleep(0.05)
        assert answer.startswith(b"HTTP/1.1 200")
        for _, writer in held:
            writer.close()


async def test_past_the_total_limit_new_connections_are_refused() -> None:
    async with gateway(client_max_connections=5) as port:
        held = [await _open(port) for _ in range(5)]
        assert (await _ask(port)).startswith(b"HTTP/1.1 503")
        for _, writer in held:
            writer.close()
        for _ in range(100):
            if (await _ask(port)).startswith(b"HTTP/1.1 200"):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the connections closed were not released")


@pytest.mark.parametrize("request_head", [
    b"GET /health HTTP/1.1\r\nBad Header\r\n\r\n",
    b"GET /health HTTP/1.1\r\nHost: " + b"x" * 20_000 + b"\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello on the plain port
])
async def test_a_malformed_request_is_an_openai_style_400_without_a_traceback(
        request_head: bytes, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with gateway() as port:
        reader, writer = await _open(port)
        writer.write(request_head)
        answer = await asyncio.wait_for(reader.read(), 30)
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split()[1] in (b"400", b"431"), head
    error = json.loads(body)["error"]
    assert error["type"] in ("BadRequestError", "RequestHeaderFieldsTooLargeError")
    assert error["message"].startswith("Invalid HTTP request") and "\n" not in error["message"]
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
