"""The gateway's listening socket: what one client can hold of it, and its low-level errors.

aiohttp serves each connection with a ``RequestHandler``; the gateway's adds:

- **A header timeout.** A request's head (request line and headers) must arrive within
  ``client_header_timeout_s`` of the connection's start or of the previous response (nginx's
  ``client_header_timeout``); it is aiohttp's keep-alive timer, which its handler starts at
  the connection and after every response and which closes a connection still waiting for
  a complete head (``web_protocol.RequestHandler._process_keepalive``). So a client that
  trickles headers (slowloris) is closed after it, and so is an idle kept-alive connection
  (vLLM's uvicorn closes those after 5 s).
- **Connection limits.** At most ``client_max_connections`` open client connections, and at
  most ``client_max_connections_per_address`` from one IP address (0: no limit). A connection
  past either is answered ``503`` (OpenAI-style JSON, ``Retry-After``) as soon as it sends
  something, then closed, and does not count: the gateway keeps serving everyone else.
- **OpenAI-style low-level errors.** What aiohttp refuses before any route runs (a malformed
  request line or header, a header too long) is a ``400`` JSON error like the gateway's own,
  logged as one line without a traceback (aiohttp answers plain text and logs a traceback
  for each).

Examples
--------
>>> guard = ConnectionGuard(ListenerLimits(header_timeout_s=10.0, max_connections=2,
...                                       max_connections_per_address=1))
>>> guard.admit("10.0.0.1"), guard.admit("10.0.0.1"), guard.admit("10.0.0.2")
(True, False, True)
>>> guard.admit("10.0.0.3"), guard.open, guard.refused
(False, 2, 2)
>>> guard.release("10.0.0.1"); guard.admit("10.0.0.3")
True
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gateway.errors import ApiError, clip, error_type

__all__ = ["ConnectionGuard", "GuardedSite", "ListenerLimits"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerLimits:
    """What clients may hold (``GatewayConfig``'s ``client_*`` fields, and their defaults)."""

    header_timeout_s: float
    max_connections: int
    max_connections_per_address: int  # 0: no limit per address


class ConnectionGuard:
    """Counts open connections, in all and by address, against ``ListenerLimits``."""

    def __init__(self, limits: ListenerLimits) -> None:
        self.limits = limits
        self.by_address: Counter[str] = Counter()
        self.open = 0
        self.refused = 0

    def admit(self, address: str) -> bool:
        """Count a new connection from ``address``; False (and not counted) past a limit."""
        per = self.limits.max_connections_per_address
        if self.open >= self.limits.max_connections or (per and self.by_address[address] >= per):
            self.refused += 1
            return False
        self.open += 1
        self.by_address[address] += 1
        return True

    def release(self, address: str) -> None:
        self.open -= 1
        self.by_address[address] -= 1
        if self.by_address[address] <= 0:
            del self.by_address[address]


def _refusal(retry_after: int) -> bytes:
    error = ApiError.unavailable("Too many open connections to the gateway; retry later.",
                                 retry_after)
    body = json.dumps(error.body()).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nRetry-After: %d\r\nConnection: close\r\n\r\n%s"
            % (len(body), retry_after, body))


class _Handler(RequestHandler):
    """aiohttp's connection handler with the guard and JSON low-level errors."""

    def __init__(self, manager: web.Server, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._address: str | None = None  # counted by the guard
        self._refused: asyncio.Transport | None = None  # past a limit: answered 503
        self._refused_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "-"
        if self._guard.admit(address):
            self._address = address
            super().connection_made(transport)
            return
        # Answer once the client has sent something (an answer before its request would
        # meet a reset when its request arrives at a closed socket), or close at the header
        # timeout.
        assert isinstance(transport, asyncio.Transport)
        self._refused = transport
        self._refused_timer = asyncio.get_running_loop().call_later(
            self._guard.limits.header_timeout_s, transport.close)

    def data_received(self, data: bytes) -> None:
        if self._refused is None:
            super().data_received(data)
        elif not self._refused.is_closing():
            self._refused.write(_refusal(1))
            self._refused.close()

    def eof_received(self) -> None:
        if self._refused is None:
            super().eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused is not None:
            if self._refused_timer is not None:
                self._refused_timer.cancel()
            return
        if self._address is not None:
            self._guard.release(self._address)
            self._address = None
        super().connection_lost(exc)

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:  # a fault of the gateway's: aiohttp logs its traceback
            super().handle_error(request, status, exc, message)
            error = ApiError.internal()
        else:
            reason = clip(" ".join((message or str(exc or HTTPStatus(status).phrase)).split()),
                          200)
            logger.warning("invalid HTTP request from %s: %s", request.remote, reason)
            error = ApiError(HTTPStatus(status), error_type(status),
                             f"Invalid HTTP request: {reason}")
        response = web.json_response(error.body(), status=int(error.status))
        response.force_close()
        return response


class GuardedSite(web.TCPSite):
    """A TCP site whose connections are served by ``_Handler`` under ``guard``."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *,
                 guard: ConnectionGuard) -> None:
        super().__init__(runner, host, port)
        self.guard = guard

    async def start(self) -> None:
        # TCPSite.start, with the handler factory the guard needs (aiohttp builds its
        # handlers in Server.__call__ from the server's keyword arguments, as here).
        self._runner._reg_site(self)
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        kwargs = dict(server._kwargs)
        kwargs["keepalive_timeout"] = self.guard.limits.header_timeout_s

        def factory() -> _Handler:
            return _Handler(server, self.guard, loop=loop, **kwargs)

        self._server = await loop.create_server(factory, self._host, self._port,
                                                backlog=self._backlog,
                                                reuse_address=self._reuse_address,
                                                reuse_port=self._reuse_port)
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
