"""``LORAFLEET_<FIELD>`` environment variables over ``gateway.yaml`` (as LiteLLM reads its
settings from the environment), for ``lorafleet serve``.

The rule: a variable applies when its name is ``LORAFLEET_`` and, in upper case, a top-level
field of ``gateway.yaml`` that holds one value (``FIELDS``: a number, a string, true or
false): ``LORAFLEET_PORT=9000``, ``LORAFLEET_REPLAN_INTERVAL_S=30``,
``LORAFLEET_VALIDATE_REPLANS=false``, ``LORAFLEET_STATE_FILE=/var/lib/lorafleet/state.json``.
Every other ``LORAFLEET_*`` variable is not a setting and is left alone: the secrets a
config names (``LORAFLEET_ADMIN_TOKEN``, ``LORAFLEET_METRICS_TOKEN``), ``lorafleet admin``'s
``LORAFLEET_URL``, the test suite's switches (``LORAFLEET_REAL_VLLM``, ...). The lists and
mappings (``workers``, ``adapters``, ``keys``, ``discovery``, ``actuator``,
``worker_engine``, ``emulate``) come from the file or the flags only.

A value is read as YAML reads it (``9000`` a number, ``false`` a switch, ``null`` nothing;
a string field takes the text as it is, and ``gpu`` a JSON mapping too), then checked
exactly as the file's value is: a bad one is one line naming the variable. Precedence: a
flag over a variable over the file over the default.

Examples
--------
>>> values({"LORAFLEET_PORT": "9000", "LORAFLEET_VALIDATE_REPLANS": "false",
...         "LORAFLEET_HOST": "0.0.0.0", "LORAFLEET_ADMIN_TOKEN": "secret"})
{'host': '0.0.0.0', 'port': 9000, 'validate_replans': False}
>>> named(ConfigError("port", "must be in 0..65535, got 70000"), {"port": "LORAFLEET_PORT"})
ConfigError('LORAFLEET_PORT: must be in 0..65535, got 70000')
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import fields
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin, get_type_hints

import yaml

from gateway.config import GatewayConfig
from twin.errors import ConfigError

__all__ = ["FIELDS", "PREFIX", "REDIS_URL", "named", "redis_url", "values", "variable"]

PREFIX = "LORAFLEET_"
REDIS_URL = "LORAFLEET_REDIS_URL"  # sets redis.url (a section of its own: gateway/shared/)
# GatewayConfig's fields that gateway.yaml gives as a list or a mapping (or not at all)
_STRUCTURED = frozenset({"workers", "adapters", "keys", "discovery", "actuator",
                         "worker_engine", "worker_engine_given", "redis"})
FIELDS: tuple[str, ...] = tuple(f.name for f in fields(GatewayConfig)
                                if f.name not in _STRUCTURED)


def _text(kind: Any) -> bool:
    """Whether a field of type ``kind`` holds text (``str``, ``str | None``, annotated)."""
    if get_origin(kind) is Annotated:
        return _text(get_args(kind)[0])
    if get_origin(kind) in (Union, UnionType):
        return all(_text(k) for k in get_args(kind) if k is not type(None))
    return kind is str


# taken as the text given (``str`` or ``str | None`` fields); ``gpu`` may be a JSON mapping
_TEXT = frozenset(name for name, kind in get_type_hints(GatewayConfig, include_extras=True).items()
                  if name in FIELDS and _text(kind))


def variable(field: str) -> str:
    """The variable that sets ``field``: ``LORAFLEET_`` and its name in upper case."""
    return PREFIX + field.upper()


def values(environ: Mapping[str, str]) -> dict[str, Any]:
    """Each field a ``LORAFLEET_<FIELD>`` variable of ``environ`` sets, with its value as
    the YAML file would give it (not yet checked: ``parse_config`` does that)."""
    out: dict[str, Any] = {}
    for field in FIELDS:
        name = variable(field)
        if name not in environ:
            continue
        text = environ[name]
        if field in _TEXT and not text.lstrip().startswith("{"):
            out[field] = text
            continue
        try:
            out[field] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(name, f"not a YAML value: {text!r}") from None
        if out[field] is None and not text.strip():
            raise ConfigError(name, "is set but empty")
    return out


def named(exc: ConfigError, sources: Mapping[str, str]) -> ConfigError:
    """``exc`` naming what gave its field (``sources``: field, or dotted field, to a
    variable or a flag), or ``exc`` itself when the file gave it."""
    field = exc.field
    ends = [len(field)] + [m.start() for m in reversed(list(re.finditer(r"[.\[]", field)))]
    for end in ends:  # the longest part of the dotted path that a source gave
        if field[:end] in sources:
            return ConfigError(sources[field[:end]] + field[end:], exc.message)
    return exc


def redis_url(data: dict[str, Any], environ: Mapping[str, str],
              sources: dict[str, str]) -> None:
    """``LORAFLEET_REDIS_URL`` over ``redis.url`` in ``data`` (a ``redis:`` section made
    when the file has none), its source noted in ``sources``.

    >>> data, sources = {"redis": {"prefix": "lf"}}, {}
    >>> redis_url(data, {REDIS_URL: "redis://r:6379/0"}, sources); data, sources
    ({'redis': {'prefix': 'lf', 'url': 'redis://r:6379/0'}}, {'redis.url': 'LORAFLEET_REDIS_URL'})
    """
    if REDIS_URL not in environ:
        return
    section = data.get("redis")
    section = {"url": section} if isinstance(section, str) else \
        dict(section) if isinstance(section, dict) else {}
    data["redis"] = {**section, "url": environ[REDIS_URL]}
    sources["redis.url"] = REDIS_URL
