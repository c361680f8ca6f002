"""Emulated vLLM workers: the twin's engine core behind vLLM 0.32's HTTP API.

``create_app(WorkerConfig(...))`` gives the aiohttp application of one worker;
``lorafleet worker --emulate`` and ``lorafleet fleet --emulate N`` serve them.
"""

from gateway.emulator.adapters import AdapterRegistry, LoadedAdapter, scaffold_adapter
from gateway.emulator.app import create_app, serve
from gateway.emulator.config import LoraModule, WorkerConfig, build_engine
from gateway.emulator.driver import EngineDriver, MetricsSink, RequestHandle
from gateway.emulator.errors import ApiError, EmulatorError, StartupError
from gateway.emulator.metrics import EngineMetrics
from gateway.emulator.noise import PerturbedStepTime
from gateway.emulator.service import VLLM_VERSION, EmulatedWorker

__all__ = [
    "VLLM_VERSION",
    "AdapterRegistry",
    "ApiError",
    "EmulatedWorker",
    "EmulatorError",
    "EngineDriver",
    "EngineMetrics",
    "LoadedAdapter",
    "LoraModule",
    "MetricsSink",
    "PerturbedStepTime",
    "RequestHandle",
    "StartupError",
    "WorkerConfig",
    "build_engine",
    "create_app",
    "scaffold_adapter",
    "serve",
]
