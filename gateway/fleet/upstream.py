"""The gateway's HTTP/1.1 client to its workers for the request path: kept-alive
connections, one asyncio ``Protocol`` each, responses parsed by ``httptools`` (llhttp, the
parser uvicorn and so vLLM's own server use).

Why not ``aiohttp.ClientSession`` here: per proxied request it builds a ``ClientRequest``,
payload and header objects, a ``StreamReader`` and timers, about half of the gateway's CPU
per request (``bench/peers_cpu.py``; the Rust vLLM router spent a third of it). This client
writes the request in one call and buffers the body as it arrives. It serves only
``POST`` to a worker and relays what comes back; the control calls (LoRA load and unload,
``/v1/models``, health, metrics) keep the ``ClientSession``.

Behaviour kept from the ``ClientSession`` it replaces:

- ``connect_timeout_s`` to connect (``ConnectFailed``: refused, unreachable, timed out);
  ``read_timeout_s`` with no byte from the worker (``ReadTimeout``), like aiohttp's
  ``sock_read``; a connection dropped before the response ends is ``Disconnected``.
- A connection idle for ``MAX_IDLE_S`` (4 s, under vLLM's 5 s keep-alive) is not reused.
- At most ``max_connections`` open connections in all (aiohttp's ``TCPConnector(limit=)``):
  past it an idle one is closed, or the request waits for one to be released.
- ``release()`` returns a connection whose response was read to the end and that the worker
  keeps alive; ``close()`` drops it, which aborts the request on a vLLM worker.
- A body read faster than the client takes it pauses the socket past 64 KiB (flow control).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from typing import cast
from urllib.parse import urlsplit

import httptools

__all__ = ["ConnectFailed", "Disconnected", "ReadTimeout", "UpstreamError", "UpstreamPool",
           "UpstreamResponse"]

HIGH_WATER = 64 * 1024  # bytes of body buffered before the socket pauses
# A connection idle this long is not reused: vLLM's server (uvicorn) closes kept-alive
# connections after VLLM_HTTP_TIMEOUT_KEEP_ALIVE, 5 s by default (vllm/envs.py,
# entrypoints/launchers/api_server/entry.py), and a request written as that close is in
# flight would fail.
MAX_IDLE_S = 4.0


class UpstreamError(Exception):
    """A worker could not be reached or failed to answer."""


class ConnectFailed(UpstreamError):
    """No connection: refused, unreachable or timed out (the worker is down)."""


class Disconnected(UpstreamError):
    """The worker closed the connection (or sent what is not HTTP) before the response
    ended."""


class ReadTimeout(UpstreamError):
    """No byte from the worker for ``read_timeout_s``."""


class _Origin:
    """A worker base URL, split once: where to connect, the ``Host`` header, the path
    prefix."""

    __slots__ = ("host", "host_header", "idle", "port", "prefix", "ssl")

    def __init__(self, base: str) -> None:
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base!r}")
        self.ssl = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.ssl else 80)
        self.host_header = parts.netloc.rpartition("@")[2].encode("idna")
        self.prefix = parts.path.rstrip("/")
        self.idle: collections.deque[_Connection] = collections.deque()


class _Connection(asyncio.Protocol):
    """One kept-alive connection and the response being read on it."""

    def __init__(self, pool: UpstreamPool, origin: _Origin) -> None:
        self.pool, self.origin = pool, origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.paused = False
        self.idle_since = 0.0
        self.waiter: asyncio.Future[None] | None = None
        self._begin()

    def _begin(self) -> None:
        """Ready for the next response."""
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.headers_done = self.complete = self.keep_alive = False
        self.until_eof = False  # neither Content-Length nor chunked: the body ends at EOF
        self.error: UpstreamError | None = None

    # -- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.error = Disconnected(f"the worker sent an invalid response: {exc}")
            self._drop()
            self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        if not self.complete and self.error is None:
            if self.headers_done and self.until_eof:
                self.complete = True
            else:
                self.error = Disconnected("the worker closed the connection"
                                          + (f": {exc}" if exc else ""))
        self._wake()

    # -- httptools callbacks -----------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        self.headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.headers_done = True
        self.until_eof = ("content-length" not in self.headers
                          and "chunked" not in self.headers.get("transfer-encoding", "")
                          and self.status not in (204, 304) and self.status >= 200)
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    # -- waiting -----------------------------------------------------------------------------
    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> None:
        """Until the parser reports something new (or the connection ends); ``ReadTimeout``
        after ``read_timeout_s`` without."""
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        timer = loop.call_later(self.pool.read_timeout_s, self._timed_out, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None

    def _timed_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(ReadTimeout(
                f"no response for {self.pool.read_timeout_s:g} s"))

    def resume(self) -> None:
        """Read from the socket again if flow control paused it."""
        if self.paused and self.transport is not None:
            self.transport.resume_reading()
            self.paused = False

    def take(self) -> bytes:
        """The body bytes buffered so far (the socket resumes)."""
        data = self.body[0] if len(self.body) == 1 else b"".join(self.body)
        self.body.clear()
        self.buffered = 0
        self.resume()
        return data

    def _drop(self) -> None:
        """Close the connection and free its slot in the pool."""
        if self.transport is not None:
            self.transport.close()
        self.closed = True
        self.pool._forget(self)


class UpstreamResponse:
    """A worker's response: ``status`` and ``headers`` (lower-case names) are read; the body
    is read with ``read()`` or chunk by chunk with ``readany()``. The caller ends it with
    ``release()`` (read to the end: the connection is reused) or ``close()``."""

    __slots__ = ("_conn", "headers", "status")

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.status = conn.status
        self.headers = conn.headers

    async def readany(self) -> bytes:
        """The body bytes received since the last call, waiting for some; b"" at the end."""
        conn = self._conn
        while not conn.body:
            if conn.error is not None:
                raise conn.error
            if conn.complete:
                return b""
            await conn.wait()
        return conn.take()

    async def read(self) -> bytes:
        """The whole (rest of the) body."""
        conn = self._conn
        while not conn.complete:
            if conn.error is not None:
                raise conn.error
            conn.resume()  # read() buffers it all anyway
            await conn.wait()
        return conn.take()

    def release(self) -> None:
        """Done with the response: its connection is kept for the next request if the body
        was read to the end and the worker keeps it alive, else closed."""
        self._conn.pool._done(self._conn, reuse=self._conn.complete and not self._conn.body)

    def close(self) -> None:
        """Drop the connection (a vLLM worker aborts the request)."""
        self._conn.pool._done(self._conn, reuse=False)


class UpstreamPool:
    """Kept-alive connections to the workers, reused per origin (LIFO: the warmest)."""

    def __init__(self, *, connect_timeout_s: float, read_timeout_s: float,
                 max_connections: int = 1024, max_idle_s: float = MAX_IDLE_S) -> None:
        self.connect_timeout_s = connect_timeout_s
        self.max_idle_s = max_idle_s
        self.read_timeout_s = read_timeout_s
        self.max_connections = max_connections
        self.headers: dict[str, str] = {}  # sent on every request (a worker API key)
        self._origins: dict[str, _Origin] = {}
        self._open: set[_Connection] = set()
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._ssl: ssl.SSLContext | None = None

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def post(self, base: str, path: str, payload: bytes,
                   headers: dict[str, str]) -> UpstreamResponse:
        """``POST`` ``payload`` (JSON) to ``base + path``; returns once the status line and
        headers are in. Cancelled meanwhile, the connection is dropped."""
        origin = self._origins.get(base)
        if origin is None:
            origin = self._origins[base] = _Origin(base)
        conn = await self._acquire(origin)
        assert conn.transport is not None
        conn._begin()
        conn.transport.write(self._head(origin, path, len(payload), headers) + payload)
        try:
            while not conn.headers_done:
                if conn.error is not None:
                    raise conn.error
                await conn.wait()
        except BaseException:
            self._done(conn, reuse=False)
            raise
        return UpstreamResponse(conn)

    def _head(self, origin: _Origin, path: str, length: int, headers: dict[str, str]) -> bytes:
        lines = [b"POST ", origin.prefix.encode() + path.encode(), b" HTTP/1.1\r\nHost: ",
                 origin.host_header, b"\r\nContent-Type: application/json\r\nContent-Length: ",
                 str(length).encode(), b"\r\n"]
        for group in (self.headers, headers):
            for name, value in group.items():
                if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                    raise ValueError(f"header {name!r}: a line break in a header")
                lines += [name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n"]
        lines.append(b"\r\n")
        return b"".join(lines)

    def _reuse(self, origin: _Origin) -> _Connection | None:
        """The most recently released live connection to ``origin``; those idle past
        ``MAX_IDLE_S`` are closed (the oldest sit at the left)."""
        idle = origin.idle
        if idle:
            stale = time.monotonic() - self.max_idle_s
            while idle and (idle[0].closed or idle[0].idle_since < stale):
                idle.popleft()._drop()
            while idle:
                conn = idle.pop()
                if not conn.closed:
                    return conn
        return None

    async def _acquire(self, origin: _Origin) -> _Connection:
        conn = self._reuse(origin)
        if conn is not None:
            return conn
        while len(self._open) >= self.max_connections:
            idle = next((o for o in self._origins.values() if o.idle), None)
            if idle is not None:
                idle.idle.popleft()._drop()  # the coldest idle connection makes room
                continue
            waiter = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiting:
                    self._waiting.remove(waiter)
            conn = self._reuse(origin)  # released to this origin meanwhile
            if conn is not None:
                return conn
        return await self._connect(origin)

    async def _connect(self, origin: _Origin) -> _Connection:
        loop = asyncio.get_running_loop()
        context = None
        if origin.ssl:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        conn = _Connection(self, origin)
        self._open.add(conn)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                await loop.create_connection(lambda: conn, origin.host, origin.port,
                                             ssl=context)
        except (OSError, TimeoutError) as exc:
            self._forget(conn)
            raise ConnectFailed(f"cannot connect to {origin.host}:{origin.port}: "
                                f"{exc or type(exc).__name__}") from None
        except BaseException:
            conn._drop()
            raise
        return conn

    def _done(self, conn: _Connection, *, reuse: bool) -> None:
        if reuse and conn.keep_alive and not conn.closed:
            conn.idle_since = time.monotonic()
            conn.origin.idle.append(conn)
            self._wake_one()
        else:
            conn._drop()

    def _forget(self, conn: _Connection) -> None:
        if conn in self._open:
            self._open.discard(conn)
            self._wake_one()

    def _wake_one(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        """Close every connection."""
        for conn in list(self._open):
            conn._drop()
        for origin in self._origins.values():
            origin.idle.clear()
        await asyncio.sleep(0)  # let the transports close

    def __repr__(self) -> str:
        return f"UpstreamPool(open={len(self._open)}, origins={len(self._origins)})"
