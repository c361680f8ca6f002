"""Package exports that load on first use (PEP 562), for ``twin`` and ``planner``: the
package names each export's module, and importing the package loads none of them."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, modules: Mapping[str, tuple[str, ...]], names: list[str]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``: a name of ``modules[m]`` is
    imported from ``package.m`` when first asked for, then kept in the package's globals (so
    the next access skips ``__getattr__``); ``__dir__`` lists ``names`` (its ``__all__``)."""
    where = {name: module for module, exported in modules.items() for name in exported}

    def getattr_(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def dir_() -> list[str]:
        return names

    return getattr_, dir_
