"""``gateway.yaml`` read and checked into a ``GatewayConfig``: ``parse_config`` (a mapping),
``load_config`` (a file).

The model checks every field (its type, its bounds, unknown fields, the sections); then the
two sections that depend on other fields are resolved: ``worker_engine`` over the options a
worker holding the adapters would get (``engine.fallback_engine``) and ``redis`` with the
replica's name and URL from ``host`` and ``port``. ``check_specs`` asks the planner whether
it knows ``gpu``, ``model`` and ``profile``. Every error is one ``ConfigError`` naming the
dotted field.

Examples
--------
>>> cfg = parse_config({"base_model": "b", "workers": [{"url": "http://127.0.0.1:8001"}],
...                     "adapters": [{"name": "sql", "rank": 8, "rate": 1, "path": "/a"}]})
>>> cfg.workers[0].name, cfg.adapters[0].demand.rank, cfg.body_limit
('w0', 8, 524288)
>>> parse_config({"base_model": "b", "workers": [{"url": "ftp://x"}], "adapters": []})
Traceback (most recent call last):
...
twin.errors.ConfigError: workers[0].url: must be an http:// or https:// URL, got 'ftp://x'
>>> parse_config({"base_model": "b", "workers": ["http://w:1"], "read_timeout": 5})
Traceback (most recent call last):
...
twin.errors.ConfigError: read_timeout: unknown field; did you mean 'read_timeout_s'?
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from gateway.config.engine import configured_engine, fallback_engine
from gateway.config.redis import parse_redis
from gateway.config.settings import GatewayConfig
from gateway.config.validation import validated
from planner import PlannerConfig, Target
from twin.errors import ConfigError

__all__ = ["RESOLVED", "check_specs", "load_config", "parse_config", "read_config"]

RESOLVED = ("worker_engine", "redis")  # checked once the fields they depend on are
RUNTIME = ("worker_engine_given",)  # the gateway's own, never in gateway.yaml


def parse_config(data: Any) -> GatewayConfig:
    """A ``GatewayConfig`` from parsed YAML; ``ConfigError`` names the first bad field."""
    if not isinstance(data, dict):
        raise ConfigError("", "the config must be a mapping")
    for key in RUNTIME:
        if key in data:
            raise ConfigError(key, "unknown field")
    if data.get("discovery") is not None and "workers" in data:
        raise ConfigError("discovery", "give either workers (static URLs) or discovery, "
                          "not both")
    if data.get("discovery") is None and "workers" not in data and "base_model" in data:
        raise ConfigError("workers", "is required (or discovery: {kind: kubernetes, ...})")
    cfg = validated(GatewayConfig, {k: v for k, v in data.items() if k not in RESOLVED})
    check_specs(cfg)
    base = fallback_engine([a.demand for a in cfg.adapters], cfg.gpu, cfg.max_model_len,
                           cfg.tensor_parallel_size)
    engine, given = configured_engine(data.get("worker_engine") or {}, base)
    redis = None if data.get("redis") is None else parse_redis(data["redis"], host=cfg.host,
                                                                 port=cfg.port)
    return dataclasses.replace(cfg, worker_engine=engine, worker_engine_given=given,
                               redis=redis)


def check_specs(cfg: GatewayConfig) -> None:
    """``gpu``, ``model`` and ``profile`` name what the planner knows (else every re-plan
    would fail later, in the planning process), and the model runs on
    ``tensor_parallel_size`` of those GPUs: ``ConfigError`` naming the field."""
    target = Target.resolve(cfg.model, cfg.gpu, cfg.profile)
    target.check_fits(PlannerConfig(max_model_len=cfg.max_model_len,
                                    tensor_parallel_size=cfg.tensor_parallel_size))


def read_config(path: str | Path) -> Any:
    """``gateway.yaml`` parsed, not yet validated; ``ConfigError`` if unreadable."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError("config", f"invalid YAML: {exc}".splitlines()[0]) from None


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate ``gateway.yaml``."""
    return parse_config(read_config(path))
