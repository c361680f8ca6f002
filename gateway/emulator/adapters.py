"""LoRA adapters at the API layer: vLLM's ``OpenAIServingModels`` load and unload rules.

An adapter is a folder with an ``adapter_config.json`` in PEFT's format; the emulator reads
only that file (the rank decides the load time and the ``max_lora_rank`` check), so
``scaffold`` writes folders holding that file alone. Messages, statuses and error types are
vLLM 0.32's (``entrypoints/openai/models/serving.py`` L179-298, ``lora/peft_helper.py``
L166-202, ``exceptions.py`` L78-84, ``v1/engine/core.py`` L1749-1751).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.emulator.errors import ApiError
from planner import DEFAULT_MODEL

__all__ = ["AdapterRegistry", "LoadedAdapter", "read_adapter_rank", "scaffold_adapter"]

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_REQUIRED = ("r", "lora_alpha", "target_modules")


@dataclass(frozen=True, slots=True)
class LoadedAdapter:
    """An adapter the API knows by name (a ``/v1/models`` card)."""

    name: str
    path: str
    rank: int


def scaffold_adapter(folder: str | Path, *, rank: int, base_model: str = DEFAULT_MODEL,
                     alpha: int | None = None) -> Path:
    """Write ``folder/adapter_config.json`` (PEFT LoRA format) and return the folder.

    Examples
    --------
    >>> import tempfile
    >>> d = scaffold_adapter(tempfile.mkdtemp() + "/sql", rank=8)
    >>> read_adapter_rank("sql", str(d), max_lora_rank=16)
    8
    """
    if not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    config = {"base_model_name_or_path": base_model, "peft_type": "LORA",
              "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha or 2 * rank,
              "lora_dropout": 0.0, "bias": "none", "target_modules": list(TARGET_MODULES)}
    (path / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return path


def _engine_failure(message: str) -> ApiError:
    # vLLM wraps engine-side failures: "Call to add_lora method failed: <message>" -> 500.
    return ApiError.internal(f"Call to add_lora method failed: {message}")


def read_adapter_rank(name: str, path: str, *, max_lora_rank: int) -> int:
    """The adapter's rank from ``path/adapter_config.json``, checked as vLLM's loader does.

    Raises
    ------
    ApiError
        404 ``NotFoundError`` when the folder or its config is missing; 500
        ``InternalServerError`` for an invalid config or a rank above ``max_lora_rank``.
    """
    config_file = Path(path) / "adapter_config.json"
    try:
        text = config_file.read_text()
    except OSError:
        raise ApiError.not_found(
            f"Loading lora {name} failed: No adapter found for {path}") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _engine_failure(f"invalid adapter_config.json: {exc}") from None
    if not isinstance(config, dict):
        raise _engine_failure("invalid adapter_config.json: not an object")
    missing = [k for k in _REQUIRED if k not in config]
    if missing:
        raise _engine_failure(f"Missing required configuration fields: {missing}")
    rank = config["r"]
    if not isinstance(rank, int) or rank <= 0:
        raise _engine_failure(f"LoRA rank `r` must be a positive integer, got {rank}.")
    pattern = config.get("rank_pattern") or {}
    max_rank = max([rank, *(int(v) for v in pattern.values())])
    errors = []
    if max_rank > max_lora_rank:
        errors.append(f"LoRA rank {max_rank} is greater than max_lora_rank {max_lora_rank}.")
    if config.get("bias", "none") != "none":
        errors.append("Adapter bias is not supported.")
    if errors:
        raise _engine_failure(" ".join(errors))
    return max_rank


class AdapterRegistry:
    """Names the API serves, in load order, and vLLM's checks around the engine's load.

    ``ranks`` (name -> rank) is shared with the engine's load-time function.
    """

    def __init__(self, *, base_model: str, max_lora_rank: int,
                 engine_load: Callable[[str], Awaitable[None]],
                 ranks: dict[str, int]) -> None:
        self.base_model = base_model
        self.max_lora_rank = max_lora_rank
        self._engine_load = engine_load
        self.ranks = ranks
        self.loaded: dict[str, LoadedAdapter] = {}

    def __contains__(self, name: object) -> bool:
        return name in self.loaded

    async def load(self, name: str, path: str, *, load_inplace: bool = False) -> str:
        """Load (vLLM's ``load_lora_adapter``); returns the plain-text success body."""
        if not name or not path:
            raise ApiError.invalid_input("Both 'lora_name' and 'lora_path' must be provided.")
        if name == self.base_model:
            raise ApiError.invalid_input(
                f"The lora adapter '{name}' conflicts with a served base model.")
        if name in self.loaded and not load_inplace:
            raise ApiError.invalid_input(
                f"The lora adapter '{name}' has already been loaded. If you want to load the "
                "adapter in place, set 'load_inplace' to True.")
        rank = read_adapter_rank(name, path, max_lora_rank=self.max_lora_rank)
        self.ranks[name] = rank
        await self._engine_load(name)
        self.loaded[name] = LoadedAdapter(name, path, rank)
        return f"Success: LoRA adapter '{name}' added successfully."

    def unload(self, name: str) -> str:
        """Unload (vLLM's ``unload_lora_adapter``): forgets the name; the engine's caches keep
        the adapter until LRU eviction."""
        if not name:
            raise ApiError.invalid_input(
                "'lora_name' needs to be provided to unload a LoRA adapter.")
        if name not in self.loaded:
            raise ApiError.not_found(f"The lora adapter '{name}' cannot be found.")
        del self.loaded[name]
        return f"Success: LoRA adapter '{name}' removed successfully."
