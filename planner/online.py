"""Online re-placement: a new plan for the running fleet, whose workers' settings are fixed.

vLLM takes ``max_loras``, ``max_cpu_loras`` and ``max_lora_rank`` only at start-up, so online
the running workers' engines are constraints, not choices (a settings change is a separate
drain-restart step). ``replan`` starts from the current assignment and changes as little as
it can:

1. Adapters that disappeared are dropped; new ones, and those of down workers, are unplaced.
   An adapter held by several workers keeps its split (``shares``, else equal parts).
2. A worker still predicted feasible at the new rates with its fixed engine keeps everything.
   One predicted infeasible sheds its heaviest adapters until it is feasible: the most load
   freed per move, so the fewest moves.
3. Unplaced load goes to the running workers (its former holders first, then by index: the
   low-numbered fill up, the high-numbered empty out) where it fits the fixed engine (rank
   within ``max_lora_rank``, LoRAs within ``max_loras``, the GPU slots) with ``fill_margin``
   to spare; what fits nowhere goes onto new GPUs that
   ``planner.placer`` sets up, appended after the running workers. An adapter more than one
   GPU carries is split into equal replicas first.
4. If no GPU was added, the least loaded workers (ties: highest index first) are emptied into
   the others within ``move_budget`` moves, the receivers feasible at ``rates /
   retire_margin``. An emptied worker is retired.

Hysteresis: staying put needs feasibility at the rates, receiving needs ``fill_margin``
(5%) to spare and emptying a worker ``retire_margin`` (15%), so a rise of a few percent
neither forces moves nor undoes a consolidation.

Pure: demands, workers and a ``Predictor`` in, a ``Plan`` out; deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from planner.demand import AdapterDemand
from planner.placer import Predictor, Verdict, place_with
from planner.plan import GpuPlan, Plan, with_cpu_room
from twin.errors import ConfigError
from twin.routing import BASE_MODEL
from twin.specs import EngineConfig

__all__ = ["RunningWorker", "Stability", "replan"]

Entry = tuple[str, float]  # (adapter, rate) of unplaced load


@dataclass(frozen=True, slots=True)
class RunningWorker:
    """A worker as the gateway sees it now.

    ``adapters`` are the LoRA adapters routed to it; ``BASE_MODEL`` among them means it takes
    base-model (rank-0) load now, which then stays put (without it base-model load is placed
    afresh at each re-plan). A down (or draining) worker gets nothing."""

    name: str
    engine: EngineConfig
    adapters: frozenset[str]
    up: bool = True
    # The share of the profile's capacity this worker delivers, learned from its own windows
    # (``planner.online_latency.OnlineLatency.speeds``); None: the predictor's fleet-wide
    # ``capacity_scale``. A slow worker is judged at its speed, so it keeps (and receives)
    # less load; new GPUs start from the fleet's figure.
    speed: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Stability:
    """How much a re-plan may change, and the margins that keep it from oscillating."""

    move_budget: int = 8  # adapters moved per re-plan, beyond moves that starvation forces
    retire_margin: float = 0.85  # emptying a worker: receivers feasible at rates / this
    fill_margin: float = 0.95  # placing load: receivers feasible at rates / this
    # Placing or consolidating load also needs the starvation probability this far under the
    # threshold: the classifier's output wobbles by a few hundredths when rates do.
    proba_margin: float = 0.05
    tries: int = 8  # workers tried for emptying per re-plan, the least loaded first
    # A new GPU's settings are fixed for its life: its CPU LoRA tier gets room for this many
    # times the LoRAs placed on it (host memory only), so it can take more later.
    cpu_lora_room: float = 2.0
    # Seconds (of the profile's time) the observed rates were counted over; 0: the rates are
    # exact. A worker then stays put while feasible at its rates less ``noise_sigmas``
    # standard deviations of their Poisson counting noise (``1 / sqrt(requests counted)``,
    # at most ``max_noise``): at 7 req/s over 15 s a rate is only known to +-9%, and shedding
    # on such a wobble moved adapters, opened a GPU and later emptied it again.
    rate_window_s: float = 0.0
    noise_sigmas: float = 1.0
    max_noise: float = 0.2

    def __post_init__(self) -> None:
        if self.move_budget < 0:
            raise ConfigError("stability.move_budget", f"must be >= 0, got {self.move_budget}")
        for name in ("retire_margin", "fill_margin"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise ConfigError(f"stability.{name}", f"must be in (0, 1], got {value!r}")
        if self.tries < 0:
            raise ConfigError("stability.tries", f"must be >= 0, got {self.tries}")
        if self.cpu_lora_room < 1:
            raise ConfigError("stability.cpu_lora_room",
                              f"must be >= 1, got {self.cpu_lora_room!r}")
        for name in ("rate_window_s", "noise_sigmas"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ConfigError(f"stability.{name}", f"must be a finite number >= 0, "
                                  f"got {value!r}")
        if not 0 <= self.max_noise < 1:
            raise ConfigError("stability.max_noise",
                              f"must be in [0, 1), got {self.max_noise!r}")
        if not 0 <= self.proba_margin < 1:
            raise ConfigError("stability.proba_margin",
                              f"must be in [0, 1), got {self.proba_margin!r}")

    def strict(self, predictor: Predictor) -> Predictor:
        """``predictor`` with the starvation threshold lowered by ``proba_margin``."""
        config = predictor.config
        threshold = max(config.starvation_threshold - self.proba_margin, 0.0)
        return predictor.with_config(replace(config, starvation_threshold=threshold))


def _stay_scale(rates: Mapping[str, float], stability: Stability) -> float:
    """The factor on a worker's observed rates at which it must stay feasible to keep them.

    >>> round(_stay_scale({"a": 5.0, "b": 2.0}, Stability(rate_window_s=15.0)), 3)
    0.902
    >>> _stay_scale({"a": 5.0}, Stability()), _stay_scale({"a": 0.01}, Stability(
    ...     rate_window_s=15.0))
    (1.0, 0.8)
    """
    counted = sum(rates.values()) * stability.rate_window_s
    if counted <= 0 or stability.noise_sigmas == 0:
        return 1.0
    return 1.0 - min(stability.noise_sigmas / math.sqrt(counted), stability.max_noise)


def _tokens(a: AdapterDemand, rate: float) -> float:
    return rate * (a.input_tokens + a.output_tokens)


def _at(predictor: Predictor, speed: float | None) -> Predictor:
    """``predictor`` for a worker of ``speed`` (None: the fleet's, the predictor's own)."""
    if speed is None:
        return predictor
    return predictor.with_config(replace(predictor.config, capacity_scale=speed))


class _Board:
    """The re-plan's working state: the rate each running worker serves of each adapter."""

    def __init__(self, demand: Mapping[str, AdapterDemand], workers: Sequence[RunningWorker],
                 predictor: Predictor, strict: Predictor) -> None:
        self.demand = demand
        self.workers = workers
        self.rates: list[dict[str, float]] = [{} for _ in workers]
        # each worker's predictors, at its own speed when it has one: (``predictor``,
        # ``strict``, for load that moves: placing and consolidating)
        self.judges = [(_at(predictor, w.speed), _at(strict, w.speed)) for w in workers]
        self.origin: dict[str, set[int]] = {}  # up workers that held each adapter at the start
        self.retired: set[int] = set()

    def up(self) -> list[int]:
        return [i for i, w in enumerate(self.workers) if w.up and i not in self.retired]

    def load(self, i: int) -> float:
        return sum(_tokens(self.demand[n], r) for n, r in self.rates[i].items())

    def verdict(self, i: int, rates: Mapping[str, float], scale: float = 1.0,
                strict: bool = False) -> Verdict:
        """Worker ``i`` serving ``rates`` (times ``scale``) with its fixed engine."""
        engine = self.workers[i].engine
        loras = [n for n in rates if not self.demand[n].is_base]
        if loras and (not engine.enable_lora or len(loras) > engine.cpu_loras
                      or any(self.demand[n].rank > engine.max_lora_rank for n in loras)):
            return Verdict(False, engine, 0.0, 0.0, 1.0)
        if not rates:
            return Verdict(True, engine, 0.0, 0.0, 0.0)
        return self.judges[i][strict].check(
            [replace(self.demand[n], rate=r * scale) for n, r in sorted(rates.items())], engine)

    def start(self, workers: Sequence[RunningWorker],
              shares: Mapping[str, Mapping[str, float]] | None) -> list[Entry]:
        """The current assignment at the new rates; what no running worker holds."""
        base = [n for n, a in self.demand.items() if a.is_base]
        for i in self.up():
            for held in workers[i].adapters:
                for name in base if held == BASE_MODEL else [held]:
                    if name in self.demand:
                        self.origin.setdefault(name, set()).add(i)
        unplaced: list[Entry] = []
        for name, a in self.demand.items():
            holders = sorted(self.origin.get(name, ()))
            if not holders:
                unplaced.append((name, a.rate))
                continue
            key = BASE_MODEL if a.is_base else name
            given = [(shares or {}).get(workers[i].name, {}).get(key, 0.0) for i in holders]
            total = sum(given)
            for i, w in zip(holders, given, strict=True):
                self.rates[i][name] = a.rate * (w / total if total > 0 else 1 / len(holders))
        return unplaced

    def shed(self, stability: Stability) -> list[Entry]:
        """Workers predicted infeasible (at their rates less the counting noise, see
        ``Stability.rate_window_s``) give up their heaviest adapters until feasible."""
        out: list[Entry] = []
        for i in self.up():
            rates = self.rates[i]
            order = sorted(rates, key=lambda n: (-_tokens(self.demand[n], rates[n]), n))
            while rates and not self.verdict(i, rates, _stay_scale(rates, stability)).feasible:
                name = order.pop(0)
                out.append((name, rates.pop(name)))
        return out

    def fits(self, i: int, name: str, rate: float, scale: float) -> bool:
        """Whether worker ``i`` takes ``rate`` more of ``name``. Never a LoRA past its GPU
        slots: vLLM's scheduler skips a waiting request whose LoRA is new to the step while
        the step holds ``max_loras`` LoRAs (vllm/v1/core/sched/scheduler.py, ``schedule``),
        so while the other adapters keep requests running, one adapter too many waits
        without end; the surrogate's verdict, a throughput test, cannot see that (on the fleet
        bench a run that moved a 17th adapter onto a 16-slot worker reached a streamed TTFT
        p99 of 25 s)."""
        loras = {n for n in self.rates[i] if not self.demand[n].is_base}
        if not self.demand[name].is_base and name not in loras and (
                len(loras) >= self.workers[i].engine.max_loras):
            return False
        trial = dict(self.rates[i])
        trial[name] = trial.get(name, 0.0) + rate
        # Both: the surrogate is not monotone in the rates, and the plan must hold at them.
        return (self.verdict(i, trial, scale, strict=True).feasible
                and self.verdict(i, trial).feasible)

    def put(self, entries: Iterable[Entry], targets: Sequence[int], scale: float,
            ) -> list[Entry]:
        """Each entry onto its first former holder, else the first of ``targets``, it fits;
        the entries that fit nowhere."""
        left: list[Entry] = []
        for name, rate in entries:
            own = sorted(self.origin.get(name, set()) & set(targets))
            where = next((i for i in [*own, *(t for t in targets if t not in own)]
                          if self.fits(i, name, rate, scale)), None)
            if where is None:
                left.append((name, rate))
            else:
                self.rates[where][name] = self.rates[where].get(name, 0.0) + rate
        return left

    def consolidate(self, stability: Stability) -> None:
        """Empty the least loaded workers into the others, within the move budget. A worker
        that can be emptied but holds more adapters than the budget left gives up that many
        (the hardest to fit first); the next re-plans carry on."""
        budget = stability.move_budget
        order = sorted((i for i in self.up() if self.rates[i]),
                       key=lambda i: (self.load(i), -i))[:stability.tries]
        grown: set[int] = set()  # receivers are not emptied in the same re-plan
        for i in order:
            if budget <= 0:
                break
            if i in grown:
                continue
            saved = [dict(r) for r in self.rates]
            entries = _heaviest_first(self.demand, self.rates[i].items())
            self.rates[i] = {}
            receivers = [j for j in self.up() if j != i and self.rates[j]]
            if self.put(entries, receivers, 1 / stability.retire_margin):
                self.rates = saved
                continue
            moves = [k for k, (n, _) in enumerate(entries) if not self.demand[n].is_base]
            if len(moves) > budget:  # the same placements, for the first ``budget`` moves
                self.rates = saved
                cut = moves[budget]
                self.rates[i] = dict(entries[cut:])
                self.put(entries[:cut], receivers, 1 / stability.retire_margin)
            else:
                self.retired.add(i)
            grown.update(j for j in receivers if self.rates[j] != saved[j])
            budget -= min(len(moves), budget)


def _heaviest_first(demand: Mapping[str, AdapterDemand], entries: Iterable[Entry],
                    ) -> list[Entry]:
    """Highest rank first, then the most load: the hardest to fit go first."""
    return sorted(entries, key=lambda e: (-demand[e[0]].rank, -_tokens(demand[e[0]], e[1]),
                                          e[0]))


def _split(entries: Iterable[Entry], demand: Mapping[str, AdapterDemand],
           predictor: Predictor, margin: float) -> list[Entry]:
    """Entries more than one GPU carries (with ``margin`` to spare), as equal replicas."""
    out: list[Entry] = []
    for name, rate in entries:
        a = replace(demand[name], rate=rate / margin)
        if rate <= 0 or predictor.best([a]).feasible:
            out.append((name, rate))
            continue
        cap = predictor.alone_capacity(a) * margin
        parts = math.ceil(rate / cap) if cap > 0 else 1
        out.extend([(name, rate / parts)] * parts)
    return out


def _new_gpus(entries: Sequence[Entry], demand: Mapping[str, AdapterDemand],
              predictor: Predictor, stability: Stability, first: int) -> list[GpuPlan]:
    """Fresh GPUs for ``entries``, set up by the placer with ``fill_margin`` to spare, their
    CPU LoRA tier with ``cpu_lora_room``."""
    margin = stability.fill_margin
    rates: dict[str, float] = {}
    for name, rate in entries:
        rates[name] = rates.get(name, 0.0) + rate
    items = [replace(demand[n], rate=r / margin) for n, r in sorted(rates.items())]
    for a in items:
        if not a.is_base and predictor.best([replace(a, rate=0.0)]).engine is None:
            raise ConfigError(f"demands[{list(demand).index(a.name)}].rank",
                              f"rank {a.rank} of {a.name!r} fits no running worker's "
                              f"max_lora_rank and no new GPU starts vLLM with it")
    gpus = []
    for g in place_with(items, predictor).gpus:
        real = {n: r * margin for n, r in g.rates.items()}
        engine = with_cpu_room(g.engine, sum(1 for n in real if not demand[n].is_base),
                               stability.cpu_lora_room)
        v = predictor.check([replace(demand[n], rate=r) for n, r in real.items()], engine)
        gpus.append(GpuPlan.judged(first + g.index, engine, real, v))
    return gpus


def _oversized(board: _Board, strict: Predictor, stability: Stability) -> bool:
    """Whether a fresh packing of the whole load at ``rates / retire_margin`` needs fewer GPUs
    than hold load now: the fleet-wide test that gates consolidation, so that a worker near
    the edge of being emptiable is not emptied by a small dip of a few adapters' rates."""
    active = sum(1 for i in board.up() if board.rates[i])
    if active <= 1:
        return False
    items = [replace(a, rate=a.rate / stability.retire_margin) for a in board.demand.values()]
    return place_with(items, strict).num_workers < active


def _validated(demands: Sequence[AdapterDemand], workers: Sequence[RunningWorker],
               ) -> dict[str, AdapterDemand]:
    demand: dict[str, AdapterDemand] = {}
    for k, a in enumerate(demands):
        if a.name in demand or a.name == BASE_MODEL:
            raise ConfigError(f"demands[{k}].name", f"{a.name!r} is repeated or reserved")
        demand[a.name] = a
    names = [w.name for w in workers]
    for k, name in enumerate(names):
        if not name or name in names[:k]:
            raise ConfigError(f"workers[{k}].name", f"{name!r} is empty or repeated")
        speed = workers[k].speed
        if speed is not None and not (math.isfinite(speed) and speed > 0):
            raise ConfigError(f"workers[{k}].speed", f"must be a number > 0, got {speed!r}")
    return demand


def replan(demands: Sequence[AdapterDemand], workers: Sequence[RunningWorker],
           predictor: Predictor, stability: Stability = Stability(), *,
           shares: Mapping[str, Mapping[str, float]] | None = None) -> Plan:
    """A plan for ``demands`` that keeps the running ``workers`` and their engines.

    ``plan.gpus[i]`` is ``workers[i]`` for ``i < len(workers)`` (``plan.workers`` names them;
    an empty one, down or emptied, is to be retired), then the new GPUs the gateway must add.
    ``shares`` (worker -> adapter, ``BASE_MODEL`` for rank 0 -> fraction, as in
    ``planner.migration.Migration.shares``) keeps the current split of replicated adapters.

    Examples
    --------
    >>> Stability(move_budget=4).fill_margin  # the stricter the margins, the more stable
    0.95
    """
    demand = _validated(demands, workers)
    strict = stability.strict(predictor)
    board = _Board(demand, workers, predictor, strict)
    unplaced = board.start(workers, shares)
    unplaced += board.shed(stability)
    entries = _heaviest_first(demand, _split(unplaced, demand, strict, stability.fill_margin))
    left = board.put(entries, board.up(), 1 / stability.fill_margin)
    new = (_new_gpus(left, demand, strict, stability, len(workers))
           if left else [])
    if not new and _oversized(board, strict, stability):
        board.consolidate(stability)
    gpus = []
    for i, w in enumerate(workers):
        rates = board.rates[i]
        v = board.verdict(i, rates) if rates else Verdict(True, w.engine, 0.0, 0.0, 0.0)
        gpus.append(GpuPlan.judged(i, w.engine, dict(sorted(rates.items())), v))
    return Plan(gpus=[*gpus, *new], adapters=list(demands),
                workers=tuple(w.name for w in workers))
