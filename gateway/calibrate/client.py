"""An HTTP client of one vLLM server (or an emulated one) that times what it sends.

Only vLLM's public HTTP API is used: ``/v1/completions`` streamed with
``stream_options.continuous_usage_stats`` (every chunk carries the completion tokens so far,
so a chunk that merges several tokens is counted right), ``/v1/models``,
``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter`` and ``/metrics``. Prompts are token
ids drawn at random, so that vLLM's prefix cache finds nothing to reuse and every request
costs its full prefill; ``ignore_eos`` makes every request generate ``max_tokens`` tokens.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import aiohttp
import numpy as np

from gateway.calibrate.prom import Scrape, parse_metrics

__all__ = ["CalibrationError", "RequestTiming", "ServerClient"]

#: Token ids the prompts draw from: above the tiny tokenizer's specials, inside any vocab.
PROMPT_TOKEN_RANGE = (10, 500)


class CalibrationError(Exception):
    """The server could not be reached or answered what calibration cannot use."""


@dataclass(slots=True)
class RequestTiming:
    """One request as the client saw it (``time.perf_counter`` seconds)."""

    model: str
    prompt_tokens: int
    max_tokens: int
    sent: float
    first: float | None = None
    end: float | None = None
    tokens: int = 0
    error: str | None = None
    finished: bool = False
    token_times: list[float] = field(default_factory=list)

    @property
    def ttft(self) -> float | None:
        return None if self.first is None else self.first - self.sent

    @property
    def e2e(self) -> float | None:
        return None if self.end is None or not self.finished else self.end - self.sent


class ServerClient:
    """A session on one server; use as ``async with ServerClient(url) as c``."""

    def __init__(self, url: str, *, seed: int = 0, connections: int = 512,
                 timeout_s: float = 600.0) -> None:
        self.url = url.rstrip("/")
        self._rng = np.random.default_rng(seed)
        self._connections = connections
        self._timeout = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ServerClient:
        # No keep-alive: a pooled connection the server has just closed (uvicorn's 5 s
        # keep-alive) fails the next request with "Server disconnected".
        connector = aiohttp.TCPConnector(limit=self._connections, force_close=True)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self._timeout))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use ServerClient as an async context manager"
        return self._session

    def prompt(self, tokens: int) -> list[int]:
        """``tokens`` random token ids."""
        lo, hi = PROMPT_TOKEN_RANGE
        return [int(t) for t in self._rng.integers(lo, hi, size=tokens)]

    # -- meta --------------------------------------------------------------------------------

    async def _get(self, path: str) -> tuple[int, str]:
        try:
            async with self.session.get(self.url + path) as resp:
                return resp.status, await resp.text()
        except (aiohttp.ClientError, OSError) as exc:
            raise CalibrationError(f"cannot reach {self.url}: {exc}") from None

    async def models(self) -> list[dict[str, object]]:
        """The ``/v1/models`` cards (base model first, then adapters)."""
        status, text = await self._get("/v1/models")
        if status != 200:
            raise CalibrationError(f"GET {self.url}/v1/models answered {status}")
        data: list[dict[str, object]] = json.loads(text)["data"]
        return data

    async def scrape(self) -> Scrape:
        status, text = await self._get("/metrics")
        if status != 200:
            raise CalibrationError(f"GET {self.url}/metrics answered {status}")
        return parse_metrics(text)

    async def version(self) -> str:
        status, text = await self._get("/version")
        return str(json.loads(text).get("version", "unknown")) if status == 200 else "unknown"

    async def timed_get(self) -> float:
        """Seconds of one ``GET /health`` (the HTTP round trip alone)."""
        start = time.perf_counter()
        await self._get("/health")
        return time.perf_counter() - start

    # -- adapters ----------------------------------------------------------------------------

    async def _post(self, path: str, body: dict[str, object]) -> tuple[int, str]:
        try:
            async with self.session.post(self.url + path, json=body) as resp:
                return resp.status, await resp.text()
        except (aiohttp.ClientError, OSError) as exc:
            raise CalibrationError(f"cannot reach {self.url}: {exc}") from None

    async def load_adapter(self, name: str, path: str) -> float:
        """Load ``path`` as ``name``; the seconds the call took."""
        start = time.perf_counter()
        status, text = await self._post("/v1/load_lora_adapter",
                                        {"lora_name": name, "lora_path": path})
        took = time.perf_counter() - start
        if status != 200:
            raise CalibrationError(f"loading adapter {name!r} from {path}: {status} "
                                   f"{text.strip()[:200]}")
        return took

    async def unload_adapter(self, name: str) -> None:
        await self._post("/v1/unload_lora_adapter", {"lora_name": name})

    # -- completions -------------------------------------------------------------------------

    async def complete(self, model: str, prompt_tokens: int, max_tokens: int, *,
                       keep_token_times: bool = False,
                       sink: list[RequestTiming] | None = None) -> RequestTiming:
        """Send one streamed completion and time it; errors are recorded, not raised.

        The timing is appended to ``sink`` when the request is sent, so a call cancelled
        when the caller's window closes leaves its timing there as far as it got (closing
        the stream makes vLLM abort the request).
        """
        body = {"model": model, "prompt": self.prompt(prompt_tokens), "max_tokens": max_tokens,
                "stream": True, "ignore_eos": True, "temperature": 0.0,
                "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
        t = RequestTiming(model, prompt_tokens, max_tokens, time.perf_counter())
        if sink is not None:
            sink.append(t)
        try:
            async with self.session.post(self.url + "/v1/completions", json=body) as resp:
                if resp.status != 200:
                    t.error = f"{resp.status} {(await resp.text()).strip()[:200]}"
                    return t
                async for line in resp.content:
                    self._on_line(t, line, keep_token_times)
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            t.error = f"{type(exc).__name__}: {exc}"
        finally:
            if t.end is None and t.finished:
                t.end = time.perf_counter()
        return t

    @staticmethod
    def _on_line(t: RequestTiming, line: bytes, keep_token_times: bool) -> None:
        if not line.startswith(b"data: "):
            return
        payload = line[6:].strip()
        if payload == b"[DONE]":
            t.end = time.perf_counter()
            return
        now = time.perf_counter()
        chunk = json.loads(payload)
        usage = chunk.get("usage")
        tokens = int(usage["completion_tokens"]) if usage else t.tokens
        if tokens > t.tokens:
            if t.first is None:
                t.first = now
            if keep_token_times:
                t.token_times.extend([now] * (tokens - t.tokens))
            t.tokens = tokens
        for choice in chunk.get("choices") or ():
            if choice.get("finish_reason") is not None:
                t.finished = True
