"""The planner's input file: ``adapters:`` as a list of ``{name, rank, rate, input_tokens,
output_tokens}`` (rate in requests/s, token counts as means; optional ``input_std``,
``output_std`` and ``cv``). Every invalid value names its field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from planner.demand import AdapterDemand, adapter_name_error, demand_error
from twin.errors import ConfigError

__all__ = ["load_adapters", "parse_adapters"]

_FIELDS = {"name", "rank", "rate", "input_tokens", "output_tokens", "input_std", "output_std",
           "cv"}


def _num(item: dict[str, Any], key: str, field: str, default: float | None = None) -> float:
    value = item.get(key, default)
    if value is None:
        raise ConfigError(f"{field}.{key}", "is required")
    error = demand_error(key, value)
    if error is not None:
        raise ConfigError(f"{field}.{key}", error)
    return float(value)


def parse_adapters(data: Any, max_lora_rank: int = 512) -> list[AdapterDemand]:
    if not isinstance(data, dict) or "adapters" not in data:
        raise ConfigError("adapters", "is required (a list of {name, rank, rate, ...})")
    items = data["adapters"]
    if not isinstance(items, list) or not items:
        raise ConfigError("adapters", "must be a non-empty list")
    out: list[AdapterDemand] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        field = f"adapters[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(field, "must be a mapping")
        unknown = sorted(set(item) - _FIELDS)
        if unknown:
            raise ConfigError(f"{field}.{unknown[0]}", f"unknown field; expected {sorted(_FIELDS)}")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{field}.name", "must be a non-empty string")
        if name in seen:
            raise ConfigError(f"{field}.name", f"duplicate adapter name {name!r}")
        seen.add(name)
        name_error = adapter_name_error(name)
        if name_error is not None:
            raise ConfigError(f"{field}.name", name_error)
        rank = _num(item, "rank", field)
        if rank > max_lora_rank:
            raise ConfigError(f"{field}.rank", f"must be 0 (base model) or one of vLLM's ranks "
                              f"up to {max_lora_rank}, got {item['rank']!r}")
        rate = _num(item, "rate", field)
        values = {k: _num(item, k, field, d) for k, d in
                  (("input_tokens", 512), ("output_tokens", 128), ("input_std", 0),
                   ("output_std", 0), ("cv", 1))}
        out.append(AdapterDemand(name=name, rank=int(rank), rate=rate, **values))
    return out


def load_adapters(path: str | Path, max_lora_rank: int = 512) -> list[AdapterDemand]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError("adapters", f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError("adapters", f"invalid YAML: {exc}".splitlines()[0]) from None
    return parse_adapters(data, max_lora_rank)
