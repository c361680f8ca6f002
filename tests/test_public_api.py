"""Each package exports a sorted ``__all__`` of names that exist (STYLE.md: public surface)."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("package", ["twin", "planner", "gateway"])
def test_all_is_sorted_and_resolves(package: str) -> None:
    module = importlib.import_module(package)
    names = module.__all__
    assert names == sorted(names, key=lambda n: (not n.isupper(), n))
    for name in names:
        assert hasattr(module, name), name
