"""The JSON Schema of ``gateway.yaml``, for editors: completion, hover text and errors as
one types. It is committed as ``deploy/gateway.schema.json`` (``lorafleet serve
--print-config-schema`` writes it; a test fails when it is stale), and each example
``gateway.yaml`` names it on its first line, which the YAML language server (VS Code's YAML
extension, and the editors built on it) reads::

    # yaml-language-server: $schema=../deploy/gateway.schema.json

The schema is ``GatewayConfig``'s (``settings.py``): the fields' types, bounds and
defaults, the sections a lower layer parses as gateway.yaml gives them, and ``emulate:``,
which ``lorafleet serve`` reads before the config is checked. The gateway's own runtime
fields (``worker_engine_given``) are left out. The config's checks stay the authority: a
few rules span fields (unique names, ``workers`` or ``discovery``) or need the catalog
(``gpu``, ``model``, ``profile``).

Examples
--------
>>> schema = config_schema()
>>> schema["properties"]["port"]["maximum"], schema["required"]
(65535, ['base_model'])
>>> "worker_engine_given" in schema["properties"]
False
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter

from gateway.config.settings import GatewayConfig
from gateway.config.validation import shown

__all__ = ["EMULATE_SCHEMA", "SCHEMA_FILE", "config_schema", "schema_text"]

SCHEMA_FILE = "deploy/gateway.schema.json"  # from the repository's root
MAX_EMULATED = 256  # gateway/server/emulated.py's (a test holds the two together)


def _number(low: float, high: float, default: float, *, open_low: bool = True,
            ) -> dict[str, Any]:
    return {"type": "number", "exclusiveMinimum" if open_low else "minimum": low,
            "maximum": high, "default": default}


# ``emulate:`` (lorafleet serve's: gateway/server/emulated.py parses it)
EMULATE_SCHEMA: dict[str, Any] = {
    "description": "in-process emulated workers instead of workers or discovery (lorafleet "
                   "serve only; adapters may then omit path): a count or {count, ...}",
    "anyOf": [
        {"type": "integer", "minimum": 1, "maximum": MAX_EMULATED},
        {"type": "object", "additionalProperties": False, "required": ["count"],
         "properties": {
             "count": {"type": "integer", "minimum": 1, "maximum": MAX_EMULATED},
             "time_scale": _number(0, 10_000, 1),
             "slowdown": _number(0, 100, 1),
             "jitter": _number(0, 10, 0, open_low=False),
             "seed": {"type": "integer", "minimum": 0, "maximum": 2**32 - 1, "default": 0}}}]}


def _plain(node: Any) -> Any:
    """``node`` without pydantic's ``title`` keys (each repeats its property's name), its
    descriptions (a class's docstring) as one line of plain text."""
    if isinstance(node, dict):
        return {k: " ".join(v.replace("``", "").split()) if k == "description" else _plain(v)
                for k, v in node.items() if not (k == "title" and isinstance(v, str))}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    return node


def config_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of ``gateway.yaml``."""
    schema: dict[str, Any] = _plain(TypeAdapter(GatewayConfig).json_schema())
    schema["properties"]["emulate"] = EMULATE_SCHEMA
    head = {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "lorafleet gateway.yaml",
            "description": "The lorafleet gateway's configuration (lorafleet serve --config). "
                           "Give workers, discovery or emulate; LORAFLEET_<FIELD> variables "
                           "override the top-level fields that hold one value."}
    return {**head, **{k: v for k, v in schema.items() if k != "description"}}


def schema_text() -> str:
    """``config_schema()`` as the committed file holds it."""
    return json.dumps(config_schema(), indent=2, default=shown) + "\n"
