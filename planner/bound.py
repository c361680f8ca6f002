"""A lower bound on the GPUs any placement needs, true of the placer's model.

The placer (``planner.placer``) accepts a worker only if vLLM starts with its engine (the
memory arithmetic of ``twin.memory``) and its engine load stays under the ceiling
(``planner.engine_time``): ``sum_i rate_i * seconds_i(engine, distinct) <= CEILING``, rates at
the planning margin; the surrogate may refuse more, never less. Its engine is one of a few
configurations ``(max_loras, max_lora_rank)``: ``max_lora_rank`` the adapters' top rank
rounded up to vLLM's, ``max_loras`` the smallest slot candidate holding every LoRA when that
fits in memory (so it holds more than the candidate below), else the largest that fits.

The bound is a mixed-integer program over those configurations (``configurations``): ``n_c``
GPUs of configuration ``c`` (integers), ``y_ic`` the share of adapter ``i``'s load on them
(continuous), minimising ``sum_c n_c`` subject to

- every adapter's load placed: ``sum_c y_ic = 1``, ``y_ic = 0`` where its rank exceeds the
  configuration's;
- engine time: ``sum_i y_ic * rate_i * seconds_i(c) <= CEILING * n_c``, ``seconds_i(c)`` at the
  fewest distinct adapters a worker of ``c`` can hold (the candidate below plus one, at most
  the batch) — costs nondecreasing in distinct adapters (``planner.engine_time``), so no
  worker of ``c`` pays less;
- slots: ``sum_{i LoRA} y_ic <= max_loras_c * n_c`` where ``c`` holds a slot per LoRA (an
  adapter split over GPUs takes a slot on each, at least its share here);
- ``y_ic <= n_c``: no GPU carries more than all of one adapter.

Any placement the placer accepts, read GPU by GPU, is a solution of it with its own GPU count
(each worker's configuration is one of ``c``, its adapters' shares satisfy each row), so the
program's optimum, and HiGHS's dual bound on it when stopped early, is at most the placer's
count, and at most the exact optimum of ``planner.optimum``. ``lower_bound_simple`` (each
adapter's rate over what one GPU serves of it alone, summed) omits the slots, ranks and memory
a shared GPU pays for.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

from planner.demand import AdapterDemand
from planner.engine_time import CEILING, request_seconds
from planner.predictor import SLOT_CANDIDATES, Predictor
from twin.errors import InsufficientMemoryError
from twin.specs import ALLOWED_LORA_RANKS

__all__ = ["Bound", "Configuration", "configurations", "lower_bound", "lower_bound_simple"]


@dataclass(frozen=True, slots=True)
class Configuration:
    """One engine a worker may run: its slots and rank, KV cache, whether every LoRA it
    holds has a slot (``slot_per_lora``), and the fewest distinct adapters its steps carry."""

    max_loras: int
    max_lora_rank: int
    kv_tokens: int
    slot_per_lora: bool
    min_distinct: int


@dataclass(frozen=True, slots=True)
class Bound:
    """The bound (GPUs: workers times ``tensor_parallel_size``), the program's relaxed value
    (in workers), and whether HiGHS proved it optimal (else ``gpus`` is its dual bound,
    still a bound)."""

    gpus: int
    relaxed: float
    optimal: bool
    seconds: float


def _rank_of(adapter: AdapterDemand) -> int:
    return 0 if adapter.is_base else next(r for r in ALLOWED_LORA_RANKS if r >= adapter.rank)


def configurations(adapters: Sequence[AdapterDemand], predictor: Predictor
                   ) -> list[Configuration]:
    """Every engine the placer may give a worker of ``adapters`` (``Predictor.engine_for``,
    ``Predictor.best``)."""
    ranks = sorted({_rank_of(a) for a in adapters if not a.is_base})
    if any(a.is_base for a in adapters) and 8 not in ranks:
        ranks.append(8)  # a worker of base-model traffic only runs at rank 8
    out: list[Configuration] = []
    for rank in sorted(ranks):
        probe = [AdapterDemand(name="probe", rank=rank, rate=0.0)]
        fitting: list[tuple[int, int]] = []
        for slots in SLOT_CANDIDATES:
            try:
                _, kv = predictor.engine_model(predictor.engine_for(probe, slots))
            except InsufficientMemoryError:
                break
            fitting.append((slots, kv))
        for k, (slots, kv) in enumerate(fitting):
            below = fitting[k - 1][0] if k else 0
            last = k == len(fitting) - 1
            out.append(Configuration(slots, rank, kv, slot_per_lora=not last,
                                     min_distinct=below + 1))
    return out


# Above this many adapters the bound is the linear relaxation's (HiGHS's branch and bound
# rarely lifts it past the relaxation's ceiling there, at many times the time), without the
# ``y_ic <= n_c`` rows (a hundred thousand of them; they matter when GPUs hold few adapters).
EXACT_UP_TO = 200


def lower_bound(adapters: Sequence[AdapterDemand], predictor: Predictor,
                time_limit_s: float = 10.0) -> Bound:
    """The fewest GPUs any placement of ``adapters`` the placer accepts can use (see the
    module's docstring). Up to ``EXACT_UP_TO`` adapters the mixed-integer program, HiGHS
    stopping after ``time_limit_s`` with its dual bound; above, its linear relaxation."""
    started = time.perf_counter()
    items = [a for a in adapters if a.rate > 0]
    if not items:
        return Bound(min(1, len(adapters)) * predictor.config.tensor_parallel_size, 0.0, True,
                     0.0)
    configs = configurations(items, predictor)
    rates = np.array([a.rate * predictor.rate_scale for a in items])
    ranks = np.array([_rank_of(a) for a in items])
    lora = ranks > 0
    n, m = len(items), len(configs)
    rows_i, cols, load = [], [], []  # the y variables: (adapter, configuration) pairs
    for j, cfg in enumerate(configs):
        fits = np.flatnonzero(ranks <= cfg.max_lora_rank)
        if not len(fits):
            continue
        engine = predictor.engine_for(
            [AdapterDemand(name="probe", rank=cfg.max_lora_rank, rate=0.0)], cfg.max_loras)
        step, _ = predictor.engine_model(engine)
        seconds = request_seconds([items[i] for i in fits], engine, step, cfg.kv_tokens,
                                  float(cfg.min_distinct))
        rows_i.extend(fits.tolist())
        cols.extend([j] * len(fits))
        load.extend((rates[fits] * seconds).tolist())
    k = len(cols)
    y = np.arange(k)
    cols_a, rows_a, load_a = np.array(cols), np.array(rows_i), np.array(load)
    # Variables: the k y's, then the m n's.
    cover = sparse.csr_matrix((np.ones(k), (rows_a, y)), shape=(n, k + m))
    time_ = sparse.csr_matrix(
        (np.concatenate([load_a, np.full(m, -CEILING)]),
         (np.concatenate([cols_a, np.arange(m)]), np.concatenate([y, k + np.arange(m)]))),
        shape=(m, k + m))
    limited = [j for j, cfg in enumerate(configs) if cfg.slot_per_lora]
    sel = np.isin(cols_a, limited) & lora[rows_a]
    slot_rows = {j: r for r, j in enumerate(limited)}
    slots = sparse.csr_matrix(
        (np.concatenate([np.ones(int(sel.sum())),
                         [-float(configs[j].max_loras) for j in limited]]),
         (np.concatenate([[slot_rows[j] for j in cols_a[sel]], np.arange(len(limited))]),
          np.concatenate([y[sel], [k + j for j in limited]]))),
        shape=(len(limited), k + m))
    exact = n <= EXACT_UP_TO
    constraints = [LinearConstraint(cover, 1.0, 1.0),
                   LinearConstraint(time_, -np.inf, 0.0),
                   LinearConstraint(slots, -np.inf, 0.0)]
    if exact:
        constraints.append(LinearConstraint(_share_rows(cols_a, k, m), -np.inf, 0.0))
    cost = np.concatenate([np.zeros(k), np.ones(m)])
    bounds = Bounds(np.zeros(k + m), np.concatenate([np.ones(k), np.full(m, np.inf)]))
    relaxed = milp(cost, constraints=constraints, bounds=bounds)
    if relaxed.status != 0:
        raise RuntimeError(f"lower bound: HiGHS failed on the relaxation: {relaxed.message}")
    value, optimal = float(relaxed.fun), False
    if exact:
        result = milp(cost, constraints=constraints, bounds=bounds,
                      integrality=np.concatenate([np.zeros(k), np.ones(m)]),
                      options={"time_limit": time_limit_s})
        optimal = result.status == 0
        dual = result.fun if optimal else getattr(result, "mip_dual_bound", None)
        if dual is not None and math.isfinite(dual):
            value = max(value, float(dual))
    tp = predictor.config.tensor_parallel_size
    return Bound(max(1, math.ceil(value - 1e-6)) * tp, float(relaxed.fun), optimal,
                 time.perf_counter() - started)


def _share_rows(cols: np.ndarray, k: int, m: int) -> sparse.csr_matrix:
    """``y_ic - n_c <= 0`` for each of the ``k`` pairs: no GPU carries more than all of one
    adapter."""
    y = np.arange(k)
    return sparse.csr_matrix((np.concatenate([np.ones(k), -np.ones(k)]),
                              (np.concatenate([y, y]), np.concatenate([y, k + cols]))),
                             shape=(k, k + m))


def lower_bound_simple(adapters: Sequence[AdapterDemand], predictor: Predictor) -> int:
    """``ceil(sum_i rate_i / cap_i)``, ``cap_i`` what one GPU serves of adapter ``i`` alone at
    its best settings (the bound before ``lower_bound``), in GPUs: workers times
    ``tensor_parallel_size``. ``cap_i`` is the high end of its bracket, a rate the check
    refuses (``Predictor.alone_capacity_bracket``, 7 halvings: within 1%, in two thirds of
    the calls of 12), so no term is larger than at the true capacity."""
    total = 0.0
    for a in adapters:
        cap = predictor.alone_capacity_bracket(a, steps=7)[1]
        total += a.rate / cap if cap > 0 else 1.0
    return max(1, math.ceil(total - 1e-9)) * predictor.config.tensor_parallel_size
