"""A restart over a saved state: the config's registry merged with the saved one, and the
saved placement restored.

The config is the source of truth for the adapters it lists: a new entry is registered, a
changed ``path`` or ``rank`` replaces the saved one (the workers' old copies are unloaded and
loaded again from the new path), and an adapter the config listed before and lists no more
is dropped (and unloaded). Adapters added through the admin API stay until ``DELETE
/admin/adapters/{name}`` removes them or the config lists them itself. Every difference is
logged at start-up, one line each.

Examples
--------
>>> from planner import AdapterDemand
>>> def entry(name, path, origin=AdapterOrigin.CONFIG):
...     return AdapterEntry(AdapterDemand(name=name, rank=8, rate=1.0), path, origin)
>>> saved = (entry("sql", "/a/sql"), entry("old", "/a/old"),
...          entry("extra", "/a/extra", AdapterOrigin.ADMIN))
>>> adapters, stale, dropped, notes = merge((entry("sql", "/b/sql"), entry("new", "/a/new")),
...                                         saved)
>>> [a.demand.name for a in adapters], sorted(stale), sorted(dropped)
(['sql', 'new', 'extra'], ['sql'], ['old'])
>>> for note in notes: print(note)
adapter sql: the config changes path /a/sql -> /b/sql
adapter new: new in the config
adapter extra: added through the admin API, kept
adapter old: no longer in the config, dropped (unloaded from the workers that hold it)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.config import AdapterEntry, AdapterOrigin, GatewayConfig
from gateway.control.planning import InitialPlan
from gateway.control.state import GatewayState
from planner import AdapterDemand
from twin.routing import BASE_MODEL

__all__ = ["Restored", "merge", "restore"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Restored:
    """What ``restore`` made of the config and the saved state."""

    cfg: GatewayConfig  # with the merged registry
    plan: InitialPlan | None
    stale: frozenset[str] = frozenset()  # path or rank changed: the workers' copies reload
    dropped: frozenset[str] = frozenset()  # removed from the config: unloaded where held


def merge(listed: Sequence[AdapterEntry], saved: Sequence[AdapterEntry]
          ) -> tuple[tuple[AdapterEntry, ...], frozenset[str], frozenset[str], list[str]]:
    """The registry after a restart: the config is the source of truth for what it lists
    (its entry wins over the saved one); adapters added through the admin API stay unless
    the config lists them; adapters the config listed before and lists no more are dropped.
    Returns the entries, the names whose path or rank changed, those dropped, and one line
    per difference (logged at start-up)."""
    by_name = {a.demand.name: a for a in saved}
    listed_names = {a.demand.name for a in listed}
    notes: list[str] = []
    stale: set[str] = set()
    for entry in listed:
        name = entry.demand.name
        old = by_name.get(name)
        if entry.demand.is_base:
            continue  # the base model's load: never saved
        if old is None:
            notes.append(f"adapter {name}: new in the config")
            continue
        if old.origin is AdapterOrigin.ADMIN:
            notes.append(f"adapter {name}: added through the admin API, now listed in the "
                         "config: the config's entry wins")
        changes = _changes(old, entry)
        if changes:
            notes.append(f"adapter {name}: the config changes {', '.join(changes)}")
        if old.path != entry.path or old.demand.rank != entry.demand.rank:
            stale.add(name)
    kept = [a for a in saved if a.demand.name not in listed_names
            and a.origin is AdapterOrigin.ADMIN]
    dropped = {a.demand.name for a in saved if a.demand.name not in listed_names
               and a.origin is AdapterOrigin.CONFIG}
    notes += [f"adapter {a.demand.name}: added through the admin API, kept" for a in kept]
    notes += [f"adapter {n}: no longer in the config, dropped (unloaded from the workers "
              "that hold it)" for n in sorted(dropped)]
    return tuple(listed) + tuple(kept), frozenset(stale), frozenset(dropped), notes


def _changes(old: AdapterEntry, new: AdapterEntry) -> list[str]:
    out = [] if old.path == new.path else [f"path {old.path} -> {new.path}"]
    for f in dataclasses.fields(AdapterDemand):
        before, after = getattr(old.demand, f.name), getattr(new.demand, f.name)
        if before != after:
            out.append(f"{f.name} {before:g} -> {after:g}" if isinstance(after, float)
                       else f"{f.name} {before} -> {after}")
    return out


def restore(cfg: GatewayConfig, plan: InitialPlan | None, state: GatewayState | None,
            source: str = "the state file") -> Restored:
    """``cfg`` with the registry merged from the saved one (``merge``; every difference is
    logged) and the saved placement as the plan, less the adapters dropped; unchanged
    without a state. The placement is dropped, with a warning, when it names other workers
    than ``cfg``: the gateway then plans afresh over the merged registry."""
    if state is None:
        return Restored(cfg, plan)
    adapters, stale, dropped, notes = merge(cfg.adapters, state.adapters)
    for note in notes:
        logger.info("%s: %s", source, note)
    cfg = dataclasses.replace(cfg, adapters=adapters)
    registered = {a.demand.name for a in adapters} | {BASE_MODEL}
    placement = {w: {k: v for k, v in shares.items() if k in registered}
                 for w, shares in state.placement.items()}
    state = dataclasses.replace(state, placement=placement)
    names = [w.name for w in cfg.workers]
    restored = state.plan(names, None if plan is None else plan.engines)
    if restored is None:
        logger.warning("the placement in %s (workers %s) does not fit workers %s; "
                       "planning afresh", source, sorted(state.placement), names)
        return Restored(cfg, plan, stale, dropped)
    logger.info("restored %d adapters and the placement from %s",
                len(state.adapters) - len(dropped), source)
    return Restored(cfg, restored, stale, dropped)
