"""The migration diff: from the adapters each worker holds now to a target plan, in steps.

``diff`` maps the target's GPUs onto the running workers: a plan from
``planner.online.replan`` already numbers them as the workers (``plan.workers``); a fresh
plan from ``planner.placer.place`` is matched to them to keep the most adapters where they
are (an assignment problem, ties to the lowest-numbered workers). Its steps, in order:

1. ``ADD`` the new workers (named by ``new_names``);
2. ``LOAD`` each adapter where it is gained;
3. ``ROUTE``: switch routing to the new shares, once (``worker=""``);
4. ``DRAIN`` each source of what it lost (in-flight requests finish);
5. ``UNLOAD`` what the sources lost (not on workers about to be retired);
6. ``RETIRE`` the workers left empty, highest-numbered first (Kubernetes StatefulSets remove
   the highest ordinal).

Holdings are LoRA adapters. The base model is always loaded: its rank-0 demand is routing
only, keyed ``twin.routing.BASE_MODEL`` in ``shares``; it is drained but never loaded or
unloaded. ``apply`` replays the steps on the current holdings.

Examples
--------
>>> from planner.placer import GpuPlan, Plan
>>> from twin.specs import EngineConfig
>>> gpu = lambda i, rates: GpuPlan(index=i, engine=EngineConfig(max_loras=2), rates=rates,
...                                predicted_tps=0, offered_tps=0, starvation_proba=0)
>>> target = Plan(gpus=[gpu(0, {"a": 1.0, "b": 1.0}), gpu(1, {})], workers=("w0", "w1"))
>>> m = diff({"w0": {"a"}, "w1": {"b"}}, target, ["w0", "w1"])
>>> [(s.kind.value, s.worker, s.adapter) for s in m.steps]
[('load', 'w0', 'b'), ('route', '', None), ('drain', 'w1', 'b'), ('retire', 'w1', None)]
>>> {w: sorted(h) for w, h in apply({"w0": {"a"}, "w1": {"b"}}, m).items()}
{'w0': ['a', 'b']}
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from planner.placer import Plan
from twin.errors import ConfigError
from twin.routing import BASE_MODEL
from twin.specs import EngineConfig

__all__ = ["Migration", "Step", "StepKind", "apply", "diff"]


class StepKind(enum.StrEnum):
    ADD = "add"
    LOAD = "load"
    ROUTE = "route"
    DRAIN = "drain"
    UNLOAD = "unload"
    RETIRE = "retire"


ORDER = tuple(StepKind)  # the order steps come in


@dataclass(frozen=True, slots=True)
class Step:
    kind: StepKind
    worker: str
    adapter: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Migration:
    """What to do to go from the current holdings to a plan.

    ``shares``: worker -> {adapter (``BASE_MODEL`` for rank 0): fraction of its rate}, for
    every worker left after the migration (new ones included). ``restarts``: kept workers
    whose plan engine differs from the one they run (given ``engines``): a settings change is
    a separate drain-restart step, not part of ``steps``. ``base``: the names ``diff``
    treated as base-model routing in the current holdings."""

    shares: dict[str, dict[str, float]]
    steps: tuple[Step, ...]
    moved: tuple[str, ...]
    retired: tuple[str, ...]
    added: tuple[str, ...]
    restarts: tuple[str, ...] = ()
    base: frozenset[str] = frozenset({BASE_MODEL})


def _assign(gains: Sequence[frozenset[str]], held: Sequence[frozenset[str]]) -> list[int | None]:
    """For each target GPU, the worker it becomes (None: a new one): the most adapters kept,
    ties to the lowest-numbered workers."""
    if not gains or not held:
        return [None] * len(gains)
    n = len(held)
    unit = n * (n + 1) // 2 + 1  # one adapter kept outweighs any tie-break sum
    benefit = np.array([[len(g & h) * unit + (n - c) for c, h in enumerate(held)]
                        for g in gains], dtype=np.int64)
    rows, cols = linear_sum_assignment(benefit, maximize=True)
    out: list[int | None] = [None] * len(gains)
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        out[r] = c
    return out


def _mapping(target: Plan, workers: Sequence[str], loras: list[frozenset[str]],
             held: list[frozenset[str]]) -> list[int | None]:
    if target.workers:
        if tuple(target.workers) != tuple(workers):
            raise ConfigError("workers", f"the plan was made for {list(target.workers)}, "
                              f"not {list(workers)}")
        return [i if i < len(workers) else None for i in range(target.num_workers)]
    return _assign(loras, held)


def diff(current: Mapping[str, Collection[str]], target: Plan, workers: Sequence[str],
         new_names: Callable[[int], str] = lambda i: f"w{i}",
         ranks: Mapping[str, int] | None = None, *,
         engines: Mapping[str, EngineConfig] | None = None) -> Migration:
    """The steps from ``current`` (worker -> adapters it holds) to ``target``.

    ``workers`` are the running workers in order (their position is their ordinal);
    ``ranks`` default to the plan's adapters'; new workers are named ``new_names(i)`` for
    ``i = len(workers), len(workers) + 1, ...``."""
    ranks = dict(ranks) if ranks is not None else {a.name: a.rank for a in target.adapters}
    base = frozenset({BASE_MODEL, *(n for n, r in ranks.items() if r == 0)})
    held = [frozenset(current.get(w, ())) - base for w in workers]
    shares = target.tables(base)
    loras = [frozenset(s) - base for s in shares]
    mapping = _mapping(target, workers, loras, held)
    names: list[str | None] = []  # what each target GPU becomes (None: an empty new one)
    added: list[str] = []
    taken = set(workers)
    for m, s in zip(mapping, shares, strict=True):
        if m is not None or not s:
            names.append(None if m is None else workers[m])
            continue
        name = new_names(len(workers) + len(added))
        if name in taken:
            raise ConfigError("new_names", f"{name!r} names a worker that exists")
        taken.add(name)
        names.append(name)
        added.append(name)
    after = {n: s for n, s in zip(names, shares, strict=True) if n is not None and s}
    gained = {n: sorted(frozenset(s) - base) for n, s in after.items()}
    lost = {w: sorted(h - frozenset(after.get(w, {}))) for w, h in zip(workers, held,
                                                                         strict=True)}
    retired = [w for w in reversed(workers) if w not in after]
    base_lost = [w for w in workers if any(n in base for n in current.get(w, ()))
                 and BASE_MODEL not in after.get(w, {})]
    was = dict(zip(workers, held, strict=True))
    steps = [Step(StepKind.ADD, n) for n in added]
    steps += [Step(StepKind.LOAD, n, a) for n in after for a in gained[n]
              if a not in was.get(n, frozenset())]
    steps.append(Step(StepKind.ROUTE, ""))
    steps += [Step(StepKind.DRAIN, w, a) for w in workers for a in lost[w]]
    steps += [Step(StepKind.DRAIN, w, BASE_MODEL) for w in base_lost]
    steps += [Step(StepKind.UNLOAD, w, a) for w in workers if w in after for a in lost[w]]
    steps += [Step(StepKind.RETIRE, w) for w in retired]
    holders_before = {(w, a) for w, h in zip(workers, held, strict=True) for a in h}
    holders_after = {(n, a) for n, g in gained.items() for a in g}
    moved = sorted({a for _, a in holders_before ^ holders_after})
    restarts = tuple(n for n, g in zip(names, target.gpus, strict=True)
                     if engines is not None and n in after and n in engines
                     and engines[n] != g.engine)
    return Migration(shares=after, steps=tuple(steps), moved=tuple(moved),
                     retired=tuple(retired), added=tuple(added), restarts=restarts, base=base)


def apply(current: Mapping[str, Collection[str]], migration: Migration,
          ) -> dict[str, frozenset[str]]:
    """Replay ``migration``'s steps on ``current``: the LoRA adapters each worker holds."""
    out = {w: set(h) - migration.base for w, h in current.items()}
    for step in migration.steps:
        if step.kind is StepKind.ADD:
            out[step.worker] = set()
        elif step.kind is StepKind.LOAD:
            out[step.worker].add(str(step.adapter))
        elif step.kind is StepKind.UNLOAD:
            out[step.worker].discard(str(step.adapter))
        elif step.kind is StepKind.RETIRE:
            del out[step.worker]
    return {w: frozenset(h) for w, h in out.items()}
