"""Client API keys as configured (``keys:`` in ``gateway.yaml``): a literal key or the
environment variable holding it, the models it may use, and its rate limit. The gateway
resolves and checks them in ``gateway/server/auth.py``.

Examples
--------
>>> spec = parse_keys([{"key": "sk-1", "name": "team-a", "adapters": ["sql"],
...                     "rate_limit": 2}])[0]
>>> spec.name, spec.adapters, spec.burst
('team-a', frozenset({'sql'}), 2.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from twin.errors import ConfigError

__all__ = ["KEY_SCHEMA", "MAX_KEY_RATE", "KeySpec", "parse_keys"]

MAX_KEY_RATE = 1e6  # requests/s (and burst) one key may be given
_KEY_FIELDS = frozenset({"key", "key_env", "name", "adapters", "rate_limit", "burst"})
_TEXT = {"type": "string", "minLength": 1}
_RATE = {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_KEY_RATE}
# An item of ``keys:`` as gateway.yaml gives it, for the JSON Schema (``parse_keys`` checks it)
KEY_SCHEMA: dict[str, Any] = {
    "type": "object", "additionalProperties": False, "required": ["name"],
    "oneOf": [{"required": ["key"]}, {"required": ["key_env"]}],
    "properties": {
        "name": {**_TEXT, "description": "the key's name (in the access log and metrics)"},
        "key": {**_TEXT, "description": "the key itself (or key_env)"},
        "key_env": {**_TEXT, "description": "the environment variable holding the key"},
        "adapters": {"anyOf": [{"const": "*"}, {"type": "array", "items": _TEXT}],
                     "default": "*", "description": 'the models it may use ("*": all)'},
        "rate_limit": {**_RATE, "description": "requests per second (default: no limit)"},
        "burst": {**_RATE, "description": "requests at once (default: rate_limit, at "
                                          "least 1)"}}}


@dataclass(frozen=True, slots=True, kw_only=True)
class KeySpec:
    """A client key as configured: its literal value or the variable holding it."""

    name: str
    key: str | None = field(default=None, repr=False)
    key_env: str | None = None
    adapters: frozenset[str] | None = None  # None: every model ("*")
    rate_limit: float | None = None  # requests per second; None: unlimited
    burst: float | None = None

    def __post_init__(self) -> None:
        if (self.key is None) == (self.key_env is None):
            raise ConfigError("key", "give exactly one of key and key_env")
        if self.rate_limit is not None and self.burst is None:
            object.__setattr__(self, "burst", max(1.0, self.rate_limit))


def _positive(item: Mapping[str, Any], key: str, where: str) -> float | None:
    value = item.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            math.isfinite(value) and 0 < value <= MAX_KEY_RATE):
        raise ConfigError(f"{where}.{key}", f"must be a number in (0, {MAX_KEY_RATE:g}], "
                          f"got {value!r}")
    return float(value)


def _text(item: Mapping[str, Any], key: str, where: str) -> str | None:
    value = item.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"{where}.{key}", "must be a non-empty string")
    return value


def _key_spec(item: Any, where: str) -> KeySpec:
    if not isinstance(item, dict):
        raise ConfigError(where, "must be a mapping {key_env | key, name, adapters, rate_limit}")
    unknown = sorted(set(item) - _KEY_FIELDS)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}", f"unknown field; expected {sorted(_KEY_FIELDS)}")
    name = _text(item, "name", where)
    if name is None:
        raise ConfigError(f"{where}.name", "is required")
    adapters = item.get("adapters", "*")
    allowed: frozenset[str] | None = None
    if adapters != "*":
        if not isinstance(adapters, list) or not all(isinstance(a, str) and a for a in adapters):
            raise ConfigError(f"{where}.adapters", 'must be "*" or a list of model names')
        allowed = frozenset(adapters)
    key, key_env = _text(item, "key", where), _text(item, "key_env", where)
    rate, burst = _positive(item, "rate_limit", where), _positive(item, "burst", where)
    try:
        return KeySpec(name=name, key=key, key_env=key_env, adapters=allowed, rate_limit=rate,
                       burst=burst)
    except ConfigError as exc:
        raise exc.nested(where) from None


def parse_keys(items: Any) -> tuple[KeySpec, ...]:
    """The ``keys:`` list; ``ConfigError`` names the first bad field (``keys[i].field``)."""
    if not isinstance(items, list):
        raise ConfigError("keys", "must be a list of {key_env | key, name, adapters, rate_limit}")
    specs = tuple(_key_spec(item, f"keys[{i}]") for i, item in enumerate(items))
    names = [s.name for s in specs]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"keys[{i}].name", f"duplicate {name!r}")
    return specs
