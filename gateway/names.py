"""Choice values spelt one way on the command line and in ``gateway.yaml``: with hyphens
(``round-robin``, ``least-outstanding``), as vLLM spells its own. The underscore spelling
some enums carry as their value (``RoutingPolicy.ROUND_ROBIN`` is ``round_robin``, the label
its metrics keep) is accepted everywhere as an alias, so no older command line or config
breaks.

Examples
--------
>>> from twin.routing import RoutingPolicy
>>> shown(RoutingPolicy)
['placement', 'least-outstanding', 'round-robin', 'prefer-loaded']
>>> member(RoutingPolicy, "round-robin"), member(RoutingPolicy, "round_robin")
(<RoutingPolicy.ROUND_ROBIN: 'round_robin'>, <RoutingPolicy.ROUND_ROBIN: 'round_robin'>)
>>> choice_type(["round-robin"])("round_robin")
'round-robin'
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import TypeVar

__all__ = ["choice_type", "member", "shown"]

E = TypeVar("E", bound=enum.Enum)


def _spelling(text: str) -> str:
    return text.replace("_", "-")


def shown(kind: type[E]) -> list[str]:
    """The values of ``kind`` as the CLI shows them (hyphens)."""
    return [_spelling(str(m.value)) for m in kind]


def member(kind: type[E], text: object) -> E:
    """The member of ``kind`` that ``text`` names in either spelling; ``ValueError`` if
    none does."""
    if isinstance(text, str):
        for m in kind:
            if _spelling(str(m.value)) == _spelling(text):
                return m
    raise ValueError(f"must be one of {shown(kind)}, got {text!r}")


def choice_type(values: Iterable[str]) -> Callable[[str], str]:
    """An argparse ``type`` for ``choices=values``: a value spelt with underscores becomes
    the hyphenated one ``values`` holds (anything else is left for ``choices`` to refuse)."""
    known = {_spelling(v): v for v in values}

    def convert(text: str) -> str:
        return known.get(_spelling(text), text)

    return convert
