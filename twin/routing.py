"""Routing policies: which worker gets a request for an adapter (pure; the gateway and the
cluster twin use the same code, so a validated plan is routed as it was validated).

A ``Placement`` says which workers hold each adapter and what share of its rate each should
take. ``PLACEMENT`` follows those shares with a smooth weighted round-robin (nginx's: exact
proportions, no randomness), least outstanding requests breaking ties. ``LEAST_OUTSTANDING``
ignores shares. ``ROUND_ROBIN`` cycles over all workers whatever they hold, and
``PREFER_LOADED`` (the Kubernetes inference gateway's default) picks a holder if there is one,
else the least loaded worker.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["BASE_MODEL", "Placement", "Router", "RoutingPolicy", "WorkerPlacement"]

BASE_MODEL = "<base>"  # the key of base-model requests (rank-0 pseudo-adapter)


class RoutingPolicy(enum.StrEnum):
    PLACEMENT = "placement"
    LEAST_OUTSTANDING = "least_outstanding"
    ROUND_ROBIN = "round_robin"
    PREFER_LOADED = "prefer_loaded"


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerPlacement:
    """One worker of a plan: its name and the share of each adapter's rate it serves."""

    name: str
    shares: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Placement:
    """Workers in order; an adapter absent from every worker is unplaced."""

    workers: tuple[WorkerPlacement, ...]

    def holders(self, adapter: str) -> list[tuple[int, float]]:
        """(worker index, share) of the workers that hold ``adapter``."""
        return [(i, w.shares[adapter]) for i, w in enumerate(self.workers)
                if w.shares.get(adapter, 0.0) > 0.0]


class Router:
    """Picks a worker per request; keeps the outstanding count per worker.

    Examples
    --------
    >>> plan = Placement((WorkerPlacement(name="w0", shares={"a": 0.75}),
    ...                   WorkerPlacement(name="w1", shares={"a": 0.25})))
    >>> r = Router(plan, RoutingPolicy.PLACEMENT)
    >>> [r.route("a") for _ in range(8)]
    [0, 1, 0, 0, 0, 1, 0, 0]
    """

    def __init__(self, placement: Placement, policy: RoutingPolicy) -> None:
        self.placement = placement
        self.policy = policy
        n = len(placement.workers)
        self.outstanding = [0] * n
        self._current: dict[str, list[float]] = {}
        self._rr = 0

    def holders(self, adapter: str | None) -> list[tuple[int, float]]:
        """(worker, share) of the workers that serve ``adapter``; base-model requests go
        anywhere when no worker is named for them."""
        holders = self.placement.holders(BASE_MODEL if adapter is None else adapter)
        if adapter is None and not holders:
            holders = [(i, 1.0) for i in range(len(self.placement.workers))]
        return holders

    def route(self, adapter: str | None) -> int:
        """The worker for a request of ``adapter`` (None: the base model); counts it."""
        key = BASE_MODEL if adapter is None else adapter
        index = self._choose(key, self.holders(adapter))
        self.outstanding[index] += 1
        return index

    def route_among(self, candidates: Iterable[int]) -> int:
        """The least loaded of ``candidates`` (a retry, or the plan's choice is down);
        counts it."""
        index = self._least_loaded(candidates)
        self.outstanding[index] += 1
        return index

    def done(self, index: int) -> None:
        self.outstanding[index] -= 1

    def _choose(self, key: str, holders: Sequence[tuple[int, float]]) -> int:
        n = len(self.placement.workers)
        if self.policy is RoutingPolicy.ROUND_ROBIN:
            index = self._rr % n
            self._rr += 1
            return index
        if not holders:
            if self.policy is RoutingPolicy.PREFER_LOADED:
                return self._least_loaded(range(n))
            raise KeyError(f"adapter {key!r} is not placed on any worker")
        if self.policy is not RoutingPolicy.PLACEMENT:
            return self._least_loaded(i for i, _ in holders)
        # Smooth weighted round-robin over the holders' shares.
        current = self._current.setdefault(key, [0.0] * n)
        total = 0.0
        for i, share in holders:
            current[i] += share
            total += share
        best = max(holders, key=lambda h: (current[h[0]], -self.outstanding[h[0]], -h[0]))[0]
        current[best] -= total
        return best

    def _least_loaded(self, candidates: Iterable[int]) -> int:
        return min(candidates, key=lambda i: (self.outstanding[i], i))
