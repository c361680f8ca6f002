"""Raw-HTTP helpers for the contract suite (aiohttp; no lorafleet imports)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def post(base: str, path: str, body: Any) -> tuple[int, str, str]:
    """POST JSON; returns (status, content type, body text)."""
    async with aiohttp.ClientSession() as s, s.post(base + path, json=body) as r:
        return r.status, r.content_type, await r.text()


async def get(base: str, path: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(base + path) as r:
        return r.status, await r.text()


async def scrape(base: str) -> dict[str, list[Sample]]:
    """``/metrics`` as family name -> samples."""
    status, text = await get(base, "/metrics")
    assert status == 200
    return {f.name: list(f.samples) for f in text_string_to_metric_families(text)}


async def gauge(base: str, name: str) -> float:
    return sum(s.value for s in (await scrape(base))[name])


async def wait_for_gauge(base: str, name: str, value: float, timeout: float = 10.0) -> float:
    """Poll ``name`` until it equals ``value`` (or ``timeout`` s pass); return the last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    current = await gauge(base, name)
    while current != value and loop.time() < deadline:
        await asyncio.sleep(0.05)
        current = await gauge(base, name)
    return current
