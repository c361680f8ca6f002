"""Typed application state keys (``web.AppKey``), declared once for the whole gateway."""

from __future__ import annotations

from aiohttp import web

from gateway.emulator.service import EmulatedWorker

__all__ = ["EMULATED_WORKER"]

EMULATED_WORKER = web.AppKey("emulated_worker", EmulatedWorker)
