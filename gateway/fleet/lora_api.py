"""vLLM's runtime LoRA API, as the gateway calls it (``VLLM_ALLOW_RUNTIME_LORA_UPDATING``).

``POST /v1/load_lora_adapter {"lora_name", "lora_path"}`` answers 200 (text) when loaded and
400 "... has already been loaded" when it was; ``POST /v1/unload_lora_adapter {"lora_name"}``
answers 200, or 404 when the worker does not hold it (vLLM's
``entrypoints/openai/models/serving.py``, ``load_lora_adapter``/``unload_lora_adapter``).
Both count as done here: the gateway wants the state, not the transition.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import aiohttp

__all__ = ["LoraCallError", "list_adapters", "load_adapter", "unload_adapter"]

logger = logging.getLogger(__name__)


class LoraCallError(Exception):
    """A load or unload the worker refused or that did not complete."""


async def _post(session: aiohttp.ClientSession, url: str, body: dict[str, str], timeout: float,
                headers: Mapping[str, str] | None) -> tuple[int, str]:
    try:
        async with session.post(url, json=body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            return resp.status, await resp.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise LoraCallError(f"{url}: {exc!r}") from None


async def load_adapter(session: aiohttp.ClientSession, base_url: str, name: str, path: str, *,
                       timeout: float, headers: Mapping[str, str] | None = None) -> None:
    """Load ``name`` from ``path`` on the worker at ``base_url`` (done if already loaded)."""
    status, text = await _post(session, f"{base_url}/v1/load_lora_adapter",
                               {"lora_name": name, "lora_path": path}, timeout, headers)
    if status == 200 or (status == 400 and "already been loaded" in text):
        return
    raise LoraCallError(f"loading {name} on {base_url} failed ({status}): {text[:300]}")


async def unload_adapter(session: aiohttp.ClientSession, base_url: str, name: str, *,
                         timeout: float, headers: Mapping[str, str] | None = None) -> None:
    """Unload ``name`` from the worker at ``base_url`` (done if it does not hold it)."""
    status, text = await _post(session, f"{base_url}/v1/unload_lora_adapter",
                               {"lora_name": name}, timeout, headers)
    if status in (200, 404):
        return
    raise LoraCallError(f"unloading {name} on {base_url} failed ({status}): {text[:300]}")


async def list_adapters(session: aiohttp.ClientSession, base_url: str, *, timeout: float,
                        headers: Mapping[str, str] | None = None) -> set[str]:
    """The LoRA adapters the worker serves (``/v1/models`` cards with a ``parent``)."""
    async with session.get(f"{base_url}/v1/models", headers=headers,
                           timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
        resp.raise_for_status()
        cards = (await resp.json()).get("data", [])
    return {c["id"] for c in cards if isinstance(c, dict) and c.get("parent") is not None}
