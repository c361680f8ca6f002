"""The improvement search after the greedy placer: empty GPUs by moving their adapters.

The greedy fill (``planner.placer``) closes a GPU at the first adapter that does not fit, so
GPUs end part full: a hot adapter's replica beside one small adapter, the tail of a rank
group. The search takes each GPU in turn, least full first, and tries to move everything it
serves to the others: each adapter whole to the fullest GPU that stays feasible with it (best
fit), else split over the GPUs with room (a new replica of it on each, the rate shared; the
gateway routes by those shares). A GPU is dropped only when all it held has moved; then the
search starts again from the new least full GPU, until one pass empties none or the deadline
passes (anytime: the plan so far is always feasible).

Feasibility is the placer's own check (``Predictor.best``: memory, the surrogate, the engine
time ceiling). The ceiling doubles as a cheap filter: a GPU whose engine load plus the
adapter's cost at its current engine passes the ceiling cannot take it (adding an adapter
never makes a step cheaper, ``planner.engine_time``), so only promising moves reach the
surrogate.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

from planner.demand import AdapterDemand
from planner.engine_time import CEILING, engine_load
from planner.plan import GpuPlan, merged
from planner.predictor import Predictor
from twin.specs import EngineConfig

__all__ = ["improve"]

_SPLIT_STEPS = 6  # bisection steps for the share of a split adapter one GPU takes
_TRIES = 12  # GPUs past the filter asked to take one adapter whole, fullest first
_MAX_SPLITS = 3  # GPUs one adapter's share may be split over when no GPU takes it whole


class _Costs:
    """Engine loads, each adapter's least cost on an engine, and the placer's answers, kept
    for the search."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self._extra: dict[tuple[EngineConfig, str, float], float] = {}
        self.tried: dict[tuple[object, ...], GpuPlan | None] = {}

    def extra(self, adapter: AdapterDemand, engine: EngineConfig) -> float:
        """The engine load ``adapter`` adds at least to a worker on ``engine``: its own, its
        steps carrying it alone (more adapters, slots or a higher rank cost more)."""
        key = (engine, adapter.name, adapter.rate)
        hit = self._extra.get(key)
        if hit is None:
            hit = self._extra[key] = self.load([adapter], engine)
        return hit

    def load(self, adapters: Sequence[AdapterDemand], engine: EngineConfig) -> float:
        """The engine load of ``adapters`` (rates at the planning margin) on ``engine``."""
        if not adapters:
            return 0.0
        step, kv = self.predictor.engine_model(engine)
        return self.predictor.rate_scale * engine_load(adapters, engine, step, kv)


def _members(g: GpuPlan, by_name: dict[str, AdapterDemand]) -> list[AdapterDemand]:
    return [replace(by_name[n], rate=r) for n, r in g.rates.items()]


def improve(gpus: list[GpuPlan], by_name: dict[str, AdapterDemand], predictor: Predictor,
            deadline: float) -> list[GpuPlan]:
    """``gpus`` with as many emptied as the search finds before ``deadline``
    (``time.perf_counter()``), renumbered from 0."""
    costs = _Costs(predictor)
    gpus = list(gpus)
    loads = {g.index: costs.load(_members(g, by_name), g.engine) for g in gpus}
    failed: set[int] = set()  # GPUs that could not be emptied since the last move
    while len(gpus) > 1 and time.perf_counter() < deadline:
        for victim in sorted(gpus, key=lambda g: (loads[g.index], g.index)):
            if victim.index in failed:
                continue
            moved = _empty(victim, [g for g in gpus if g is not victim], by_name, predictor,
                           costs, loads, deadline)
            if moved is None:
                failed.add(victim.index)
                if time.perf_counter() >= deadline:
                    break
                continue
            failed.clear()  # the others changed: a GPU that could not be emptied may be now
            for g in moved:
                loads[g.index] = costs.load(_members(g, by_name), g.engine)
            changed = {g.index: g for g in moved}
            gpus = [changed.get(g.index, g) for g in gpus if g is not victim]
            break
        else:
            break  # a whole pass emptied nothing
    return [replace(g, index=i) for i, g in enumerate(sorted(gpus, key=lambda g: g.index))]


def _empty(victim: GpuPlan, others: list[GpuPlan], by_name: dict[str, AdapterDemand],
           predictor: Predictor, costs: _Costs, loads: dict[int, float],
           deadline: float) -> list[GpuPlan] | None:
    """The GPUs of ``others`` that changed once everything ``victim`` serves has moved to
    them, or None if something fits nowhere."""
    trial = {g.index: g for g in others}
    trial_load = {g.index: loads[g.index] for g in others}
    for name, rate in sorted(victim.rates.items(), key=lambda kv: (-kv[1], kv[0])):
        if time.perf_counter() >= deadline:
            return None
        adapter = replace(by_name[name], rate=rate)
        if not _place(adapter, trial, trial_load, by_name, predictor, costs):
            return None
    before = {g.index: g for g in others}
    return [g for i, g in trial.items() if g is not before[i]]


def _try(g: GpuPlan, adapter: AdapterDemand, by_name: dict[str, AdapterDemand],
         predictor: Predictor, costs: _Costs) -> GpuPlan | None:
    """``g`` serving ``adapter`` too, or None if the placer's check refuses it (remembered:
    a search that starts again asks about the same GPUs and adapters)."""
    key = (tuple(sorted(g.rates.items())), adapter.name, adapter.rate)
    if key in costs.tried:
        hit = costs.tried[key]
        return None if hit is None else replace(hit, index=g.index)
    v = predictor.best(merged([*_members(g, by_name), adapter]))
    out = None
    if v.feasible and v.engine is not None:
        rates = dict(g.rates)
        rates[adapter.name] = rates.get(adapter.name, 0.0) + adapter.rate
        out = GpuPlan.judged(g.index, v.engine, rates, v)
    costs.tried[key] = out
    return out


def _place(adapter: AdapterDemand, trial: dict[int, GpuPlan], trial_load: dict[int, float],
           by_name: dict[str, AdapterDemand], predictor: Predictor, costs: _Costs) -> bool:
    """Put ``adapter`` on the GPUs of ``trial`` (updated in place): whole on the fullest one
    that takes it, else split over up to ``_MAX_SPLITS`` with room, the emptiest first."""
    order = sorted((i for i in trial if trial_load[i] < CEILING),
                   key=lambda i: (-trial_load[i], i))
    tries = 0
    for i in order:
        extra = costs.extra(adapter, trial[i].engine)
        if trial_load[i] + extra > CEILING:
            continue
        fits = _try(trial[i], adapter, by_name, predictor, costs)
        if fits is not None:
            trial[i] = fits
            trial_load[i] += extra
            return True
        tries += 1
        if tries >= _TRIES:
            break
    left = adapter.rate
    for i in order[::-1][:_MAX_SPLITS]:
        g = trial[i]
        per_rate = costs.extra(adapter, g.engine) / adapter.rate  # load per req/s of it
        top = min(1.0, (CEILING - trial_load[i]) / (per_rate * left))
        taken, best = 0.0, _try(g, replace(adapter, rate=left * top), by_name, predictor,
                                costs)
        if best is not None:
            taken = top
        else:
            lo, hi = 0.0, top
            for _ in range(_SPLIT_STEPS):
                mid = (lo + hi) / 2
                fits = _try(g, replace(adapter, rate=left * mid), by_name, predictor, costs)
                if fits is not None:
                    lo, best = mid, fits
                else:
                    hi = mid
            taken = lo
        if best is None:
            continue
        trial[i] = best
        trial_load[i] += per_rate * left * taken
        left -= left * taken
        if left <= adapter.rate * 1e-9:
            return True
    return False
