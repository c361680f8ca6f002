"""The request-path HTTP/1.1 client (gateway/fleet/upstream.py) against real sockets: small
asyncio servers that answer exactly as written, keep-alive, chunked, EOF-delimited, slow,
dropped and invalid responses."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from gateway.fleet.upstream import (
    ConnectFailed,
    Disconnected,
    ReadTimeout,
    UpstreamPool,
    _Origin,
)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, dict[str, str], bytes]:
    """(request line, headers with lower-case names, body) of one request."""
    head = await reader.readuntil(b"\r\n\r\n")
    line, *rest = head[:-4].split(b"\r\n")
    headers = {k.decode().lower(): v.decode().strip()
               for k, _, v in (h.partition(b":") for h in rest)}
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return line, headers, body


@contextlib.asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A loopback server running ``handler`` per connection: (base URL, connection ids)."""
    conns: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns.append(len(conns))
        try:
            await handler(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", conns
    finally:
        srv.close()
        await srv.wait_closed()


def pool(**kw: float) -> UpstreamPool:
    return UpstreamPool(connect_timeout_s=kw.get("connect", 2.0),
                        read_timeout_s=kw.get("read", 5.0),
                        max_connections=int(kw.get("limit", 1024)))


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)


def answer_once(response: bytes, *, hold: bool = False) -> Handler:
    """A handler that reads one request, writes ``response`` as it is, then closes (``hold``:
    keeps the connection open until the client closes it)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(response)
        await writer.drain()
        if hold:
            await reader.read()

    return handle


def never_answer(dropped: asyncio.Event) -> Handler:
    """A handler that reads one request, answers nothing and sets ``dropped`` when the client
    closes the connection."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # until the client closes
        dropped.set()

    return handle


async def test_keep_alive_reuses_one_connection_and_sends_the_headers() -> None:
    seen: list[tuple[bytes, dict[str, str], bytes]] = []

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await read_request(reader)
            seen.append(request)
            writer.write(ok(b'{"n": %d}' % len(seen)))
            await writer.drain()

    async with server(echo) as (url, conns):
        p = pool()
        p.headers["Authorization"] = "Bearer k"
        for i in range(3):
            resp = await p.post(url + "/prefix/", "/v1/completions", b'{"a": 1}',
                                {"X-Request-Id": f"r{i}"})
            assert resp.status == 200
            assert resp.headers["content-type"] == "application/json"
            assert await resp.read() == b'{"n": %d}' % (i + 1)
            resp.release()
        await p.close()
    assert len(conns) == 1  # one connection for the three requests
    line, headers, body = seen[2]
    assert line == b"POST /prefix/v1/completions HTTP/1.1"
    assert headers["host"] == url.removeprefix("http://")
    assert headers["authorization"] == "Bearer k" and headers["x-request-id"] == "r2"
    assert headers["content-type"] == "application/json" and body == b'{"a": 1}'


async def test_chunked_stream_arrives_chunk_by_chunk() -> None:
    release = asyncio.Event()

    async def sse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")
            writer.write(b"b\r\ndata: one\n\n\r\n")
            await writer.drain()
            await release.wait()
            writer.write(b"b\r\ndata: two\n\n\r\n0\r\n\r\n")
            await writer.drain()

    async with server(sse) as (url, conns):
        p = pool()
        resp = await p.post(url, "/v1/completions", b"{}", {})
        assert await resp.readany() == b"data: one\n\n"  # before the second chunk exists
        release.set()
        assert await resp.readany() == b"data: two\n\n"
        assert await resp.readany() == b""
        resp.release()
        release.clear()
        resp = await p.post(url, "/v1/completions", b"{}", {})  # the same connection again
        release.set()
        assert await resp.read() == b"data: one\n\ndata: two\n\n"
        resp.release()
        await p.close()
    assert len(conns) == 1


async def test_a_large_body_pauses_the_socket_and_arrives_whole() -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB

    async with server(answer_once(ok(payload))) as (url, _):
        p = pool()
        resp = await p.post(url, "/x", b"{}", {})
        await asyncio.sleep(0.2)  # the body arrives while nobody reads it
        assert resp._conn.paused  # flow control: the socket stopped past the high water
        got = b""
        while chunk := await resp.readany():
            got += chunk
        assert got == payload
        resp.release()
        await p.close()


async def test_body_until_eof_without_a_length() -> None:
    old = answer_once(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
    async with server(old) as (url, _):
        p = pool()
        resp = await p.post(url, "/x", b"{}", {})
        assert await resp.read() == b"all of it"
        resp.release()
        assert p.open_connections == 0  # not kept: the worker closed it
        await p.close()


async def test_refused_connection_is_connect_failed() -> None:
    async def nothing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        pass

    async with server(nothing) as (url, _):
        pass  # closed: nothing listens on its port any more
    p = pool()
    with pytest.raises(ConnectFailed):
        await p.post(url, "/x", b"{}", {})
    assert p.open_connections == 0
    await p.close()


async def test_silent_worker_is_a_read_timeout_and_the_connection_is_dropped() -> None:
    dropped = asyncio.Event()

    async with server(never_answer(dropped)) as (url, _):
        p = pool(read=0.2)
        with pytest.raises(ReadTimeout):
            await p.post(url, "/x", b"{}", {})
        await asyncio.wait_for(dropped.wait(), 2)
        assert p.open_connections == 0
        await p.close()


async def test_dropped_mid_body_and_invalid_responses_are_disconnected() -> None:
    cut = answer_once(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
    garbage = answer_once(b"this is not http\r\n\r\n", hold=True)

    async with server(cut) as (url, _):
        p = pool()
        resp = await p.post(url, "/x", b"{}", {})
        with pytest.raises(Disconnected):
            await resp.read()
        resp.close()
        await p.close()
    async with server(garbage) as (url, _):
        p = pool()
        with pytest.raises(Disconnected, match="invalid response"):
            await p.post(url, "/x", b"{}", {})
        await p.close()


async def test_cancelled_request_closes_its_connection() -> None:
    dropped = asyncio.Event()

    async with server(never_answer(dropped)) as (url, _):
        p = pool()
        task = asyncio.create_task(p.post(url, "/x", b"{}", {}))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(dropped.wait(), 2)  # the worker saw the client leave
        assert p.open_connections == 0
        await p.close()


async def test_a_connection_the_worker_closed_while_idle_is_not_reused() -> None:
    once = answer_once(ok(b"{}"))  # says nothing of closing, then closes (a keep-alive timeout)
    async with server(once) as (url, conns):
        p = pool()
        for _ in range(2):
            resp = await p.post(url, "/x", b"{}", {})
            assert await resp.read() == b"{}"
            resp.release()
            await asyncio.sleep(0.1)  # the worker's close arrives
        await p.close()
    assert len(conns) == 2


async def test_a_connection_idle_past_the_limit_is_not_reused() -> None:
    async def keep(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(ok(b"{}"))
            await writer.drain()

    async with server(keep) as (url, conns):
        p = UpstreamPool(connect_timeout_s=2, read_timeout_s=5, max_idle_s=0.2)
        for pause in (0.0, 0.05, 0.4):  # reused, reused, then too old: a new connection
            await asyncio.sleep(pause)
            resp = await p.post(url, "/x", b"{}", {})
            await resp.read()
            resp.release()
        assert p.open_connections == 1
        await p.close()
    assert len(conns) == 2


async def test_max_connections_queues_the_next_request() -> None:
    go = asyncio.Event()

    async def gated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            await go.wait()
            writer.write(ok(b"{}"))
            await writer.drain()

    async with server(gated) as (url, conns):
        p = pool(limit=1)
        first = asyncio.create_task(p.post(url, "/x", b"{}", {}))
        second = asyncio.create_task(p.post(url, "/x", b"{}", {}))
        await asyncio.sleep(0.1)
        assert p.open_connections == 1 and not second.done()
        go.set()
        resp = await first
        await resp.read()
        resp.release()  # hands its connection to the waiting request
        resp = await asyncio.wait_for(second, 2)
        assert await resp.read() == b"{}"
        resp.release()
        await p.close()
    assert len(conns) == 1


def test_header_values_cannot_carry_line_breaks() -> None:
    with pytest.raises(ValueError, match="line break"):
        pool()._head(_Origin("http://h:1"), "/x", 0, {"X-Request-Id": "a\r\nEvil: 1"})
