"""The config's pydantic validation, reported as the rest of lorafleet reports bad input: one
``twin.errors.ConfigError`` naming the dotted field (``workers[0].url: must be ...``), worded
as the hand-written checks are (``must be an integer, got '80'``), with the value given.

``Range`` bounds a number with that wording (``must be in (0, 604800], got 0``) and puts
the bounds in the JSON Schema. A ``ConfigError`` raised inside a validator names its field
from where the validator runs (``command`` in ``actuator``: ``actuator.command``), unless it
already names that place (a lower layer's parser, ``adapters[0].rank``).

Examples
--------
>>> from pydantic import BaseModel, ConfigDict
>>> class Section(BaseModel):
...     model_config = ConfigDict(extra="forbid")
...     timeout_s: Annotated[StrictFloat, Range(0, 60, open_low=True)] = 1.0
>>> validated(Section, {"timeout_s": 0}, "section")
Traceback (most recent call last):
...
twin.errors.ConfigError: section.timeout_s: must be in (0, 60], got 0
>>> validated(Section, {"timeout": 1}, "section")
Traceback (most recent call last):
...
twin.errors.ConfigError: section.timeout: unknown field; expected ['timeout_s']
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, cast

from pydantic import (
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    StrictFloat,
    StrictStr,
    TypeAdapter,
    ValidationError,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, ErrorDetails, core_schema

from twin.errors import ConfigError

__all__ = ["MAX_SECONDS", "NonEmpty", "Range", "Seconds", "config_error", "dotted", "shown",
           "validated"]

T = TypeVar("T")

MAX_SECONDS = 7 * 24 * 3600.0  # a week: no timeout or interval longer
NonEmpty = Annotated[StrictStr, Field(min_length=1)]
MAX_LISTED = 12  # an unknown field's message lists the expected ones up to this many


def shown(value: Any) -> str:
    """A value as a message shows it: a float as ``%g`` (``inf``, ``1e+308``), else repr."""
    return f"{value:g}" if isinstance(value, float) else repr(value)


@dataclass(frozen=True, slots=True)
class Range:
    """A number within ``[low, high]`` (``(low, high]`` when ``open_low``), finite; its
    message shows the interval (or ``text``, e.g. ``0..65535``)."""

    low: float
    high: float
    open_low: bool = False
    text: str | None = None

    def check(self, value: Any) -> Any:
        if not (math.isfinite(value) and (self.low < value if self.open_low
                                          else self.low <= value) and value <= self.high):
            interval = self.text or (f"{'(' if self.open_low else '['}{self.low:g}, "
                                     f"{self.high:g}]")
            raise ValueError(f"must be in {interval}, got {shown(value)}")
        return value

    def __get_pydantic_core_schema__(self, source: Any,
                                     handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self.check, handler(source))

    def __get_pydantic_json_schema__(self, schema: CoreSchema,
                                     handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        out = handler(schema)
        low = int(self.low) if float(self.low).is_integer() else self.low
        high = int(self.high) if float(self.high).is_integer() else self.high
        out["exclusiveMinimum" if self.open_low else "minimum"] = low
        out["maximum"] = high
        return out


Seconds = Annotated[StrictFloat, Range(0, MAX_SECONDS, open_low=True)]


def dotted(loc: tuple[int | str, ...] | list[int | str], where: str = "") -> str:
    """``("workers", 0, "url")`` as ``workers[0].url``, under ``where``."""
    out = where
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


_TYPES = {"int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
          "float_type": "a number", "float_parsing": "a number", "finite_number": "finite",
          "bool_type": "true or false", "bool_parsing": "true or false",
          "string_type": "a string", "list_type": "a list", "tuple_type": "a list",
          "dict_type": "a mapping", "model_type": "a mapping", "dataclass_type": "a mapping",
          "model_attributes_type": "a mapping"}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
           "less_than_equal": "<="}


def _message(error: ErrorDetails, fields: Callable[[], list[str]]) -> str:
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind in ("missing", "missing_argument", "missing_keyword_only_argument"):
        return "is required"
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        names = fields()
        if len(names) <= MAX_LISTED:
            return f"unknown field; expected {names}" if names else "unknown field"
        close = difflib.get_close_matches(str(error["loc"][-1]), names, 1)
        return f"unknown field; did you mean {close[0]!r}?" if close else "unknown field"
    if kind in _TYPES:
        return f"must be {_TYPES[kind]}, got {value!r}"
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return f"must be a non-empty string, got {value!r}"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters long"
    if kind == "string_pattern_mismatch":
        return f"must match the pattern {ctx.get('pattern')!r}, got {value!r}"
    if kind in ("enum", "literal_error"):
        return f"must be one of {ctx.get('expected')}, got {shown(value)}"
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()), "")
        return f"must be {_BOUNDS[kind]} {shown(bound)}, got {shown(value)}"
    return str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")


def _fields_at(kind: Any, loc: tuple[int | str, ...]) -> list[str]:
    """The fields a mapping at ``loc`` (the unknown field's parent) of ``kind`` may hold."""
    schema: Any = TypeAdapter(kind).json_schema()
    defs = schema.get("$defs", {})
    for part in loc:
        while "$ref" in schema:
            schema = defs[schema["$ref"].rsplit("/", 1)[1]]
        if isinstance(part, int):
            schema = schema.get("items", {})
        else:
            options = [schema, *schema.get("anyOf", [])]
            schema = next((o["properties"][part] for o in options
                           if part in o.get("properties", {})), {})
    while "$ref" in schema:
        schema = defs[schema["$ref"].rsplit("/", 1)[1]]
    options = [schema, *schema.get("anyOf", [])]
    return next((sorted(o["properties"]) for o in options if "properties" in o), [])


def config_error(exc: ValidationError, kind: Any = None, where: str = "") -> ConfigError:
    """The first of ``exc``'s errors as a ``ConfigError`` naming its field under
    ``where``; an unknown field's message lists those ``kind`` takes there."""
    error = exc.errors(include_url=False)[0]
    loc = tuple(error["loc"])
    field = dotted(loc, where)
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, ConfigError):
        if not field or cause.field == field or cause.field.startswith((f"{field}.",
                                                                        f"{field}[")):
            return ConfigError(cause.field, cause.message)
        return cause.nested(field)
    if kind is not None and loc and isinstance(loc[-1], str):
        return ConfigError(field, _message(error, lambda: _fields_at(kind, loc[:-1])))
    return ConfigError(field, _message(error, list))


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def validated(kind: type[T], data: Any, where: str = "") -> T:
    """``data`` validated as ``kind`` (a pydantic model or dataclass); ``ConfigError``
    naming the first bad field under ``where``."""
    adapter = _ADAPTERS.get(kind)
    if adapter is None:
        adapter = _ADAPTERS[kind] = TypeAdapter(kind)
    try:
        return cast(T, adapter.validate_python(data))
    except ValidationError as exc:
        raise config_error(exc, kind, where) from None
