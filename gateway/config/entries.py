"""A registered adapter: its expected load, the path the workers load it from, and where it
was registered (the config or the admin API). ``gateway.config`` re-exports both
classes."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from planner import AdapterDemand, parse_adapters
from twin.errors import ConfigError

__all__ = ["AdapterEntry", "AdapterOrigin", "parse_entries"]


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
