"""A registered adapter: its expected load, the path the workers load it from, and where it
was registered (the config or the admin API). ``gateway.config`` re-exports both
classes."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from planner import MAX_CV, MAX_NAME, MAX_RATE, MAX_TOKENS, AdapterDemand, parse_adapters
from twin.errors import ConfigError
from twin.specs import ALLOWED_LORA_RANKS

__all__ = ["ADAPTER_SCHEMA", "AdapterEntry", "AdapterOrigin", "parse_entries"]


def _number(low: float, high: float, text: str, default: float | None = None,
            ) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "number", "minimum": low, "maximum": high,
                           "description": text}
    return out if default is None else {**out, "default": default}


# An item of ``adapters:`` as gateway.yaml gives it, for the JSON Schema (the planner's
# ``parse_adapters`` checks it; tests/gateway/config/test_schema.py holds the two together).
ADAPTER_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["name", "rank", "rate"],
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": MAX_NAME,
                 "description": "the model name clients send (the base model's entry: rank 0)"},
        "rank": {"enum": [0, *ALLOWED_LORA_RANKS],
                 "description": "the LoRA rank (0: the base model itself)"},
        "rate": _number(0, MAX_RATE, "expected requests per second"),
        "input_tokens": _number(1, MAX_TOKENS, "mean prompt length", 512),
        "output_tokens": _number(1, MAX_TOKENS, "mean output length", 128),
        "input_std": _number(0, MAX_TOKENS, "prompt length's standard deviation", 0),
        "output_std": _number(0, MAX_TOKENS, "output length's standard deviation", 0),
        "cv": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_CV, "default": 1,
               "description": "inter-arrival coefficient of variation (1: Poisson)"},
        "path": {"type": "string", "minLength": 1,
                 "description": "where the workers load the adapter from (required for a "
                                "LoRA adapter)"}}}


class AdapterOrigin(enum.StrEnum):
    """Where a registered adapter came from: the config is the source of truth for what it
    lists; an adapter added through the admin API stays (in the state file) until removed."""

    CONFIG = "config"  # listed in gateway.yaml (or --adapters)
    ADMIN = "admin"  # added by POST /admin/adapters


@dataclass(frozen=True, slots=True)
class AdapterEntry:
    """A registered adapter: its expected load (for the planner), the path workers load it
    from (``None`` only for the base model's rank-0 entry) and where it was registered."""

    demand: AdapterDemand
    path: str | None
    origin: AdapterOrigin = AdapterOrigin.CONFIG



def parse_entries(items: Any) -> tuple[AdapterEntry, ...]:
    """``adapters:`` of ``gateway.yaml``: the planner's format (``planner.inputs``) plus each
    adapter's ``path``; ``ConfigError`` names the field."""
    if not isinstance(items, list):
        raise ConfigError("adapters", "must be a list of {name, rank, rate, path, ...}")
    if not items:
        return ()
    paths: list[str | None] = []
    plain: list[Any] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ConfigError(f"adapters[{i}]", "must be a mapping")
        path = item.get("path")
        if path is not None and (not isinstance(path, str) or not path):
            raise ConfigError(f"adapters[{i}].path", "must be a non-empty string")
        paths.append(path)
        plain.append({k: v for k, v in item.items() if k != "path"})
    demands = parse_adapters({"adapters": plain})
    return tuple(AdapterEntry(d, p) for d, p in zip(demands, paths, strict=True))
