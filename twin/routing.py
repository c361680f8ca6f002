"""Routing policies: which worker gets a request for an adapter (pure; the gateway and the
cluster twin use the same code, so a validated plan is routed as it was validated).

A ``Placement`` says which workers hold each adapter and what share of its rate each should
take. ``PLACEMENT`` follows those shares with a smooth weighted round-robin (nginx's: exact
proportions, no randomness), least outstanding requests breaking ties. ``LEAST_OUTSTANDING``
ignores shares. ``ROUND_ROBIN`` cycles over all workers whatever they hold, and
``PREFER_LOADED`` (the Kubernetes inference gateway's default) picks a holder if there is one,
else the least loaded worker.

Prefix affinity: a request may carry a ``prefix_key`` (the gateway hashes the start of its
prompt). vLLM caches prompt prefixes per worker and adapter, so requests that share a prefix
should meet on one replica. Among an adapter's holders a weighted rendezvous hash picks the
preferred one (each holder scores ``share / -ln(u)`` with ``u`` uniform from the hash of key
and worker index): over many prefixes each holder is preferred in proportion to its share, and
when a holder is added or removed only the keys it wins or loses move. The preferred holder
takes the request unless its outstanding count exceeds the least loaded holder's by more than
``max(affinity_slack, affinity_ratio * least)``; then the policy chooses as without a key.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["BASE_MODEL", "Placement", "Router", "RoutingPolicy", "WorkerPlacement"]

BASE_MODEL = "<base>"  # the key of base-model requests (rank-0 pseudo-adapter)

AFFINITY_SLACK = 2  # requests the preferred holder may run ahead of the least loaded one
AFFINITY_RATIO = 0.25  # ... or this fraction of the least loaded one's count, if more

_MASK = (1 << 64) - 1


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


class Router:
    """Picks a worker per request; keeps the outstanding count per worker.

    Examples
    --------
    >>> plan = Placement((WorkerPlacement(name="w0", shares={"a": 0.75}),
    ...                   WorkerPlacement(name="w1", shares={"a": 0.25})))
    >>> r = Router(plan, RoutingPolicy.PLACEMENT)
    >>> [r.route("a") for _ in range(8)]
    [0, 1, 0, 0, 0, 1, 0, 0]

    With a prefix key, requests that share it stay on one holder while the load allows:

    >>> r = Router(plan, RoutingPolicy.PLACEMENT)
    >>> len({r.route("a", prefix_key="You are a SQL expert.") for _ in range(3)})
    1
    """

    def __init__(self, placement: Placement, policy: RoutingPolicy, *,
                 affinity_slack: int = AFFINITY_SLACK,
                 affinity_ratio: float = AFFINITY_RATIO) -> None:
        self.placement = placement
        self.policy = policy
        self.affinity_slack = affinity_slack
        self.affinity_ratio = affinity_ratio
        n = len(placement.workers)
        self.outstanding = [0] * n
        self._current: dict[str, list[float]] = {}
        self._rr = 0
        # (worker, share) per adapter, indexed once: routing a request does not scan workers
        index: dict[str, list[tuple[int, float]]] = {}
        for i, w in enumerate(placement.workers):
            for name, share in w.shares.items():
                if share > 0.0:
                    index.setdefault(name, []).append((i, share))
        self._holders = {name: tuple(h) for name, h in index.items()}
        self._anywhere = tuple((i, 1.0) for i in range(n))

    def holders(self, adapter: str | None) -> tuple[tuple[int, float], ...]:
        """(worker, share) of the workers that serve ``adapter``; base-model requests go
        anywhere when no worker is named for them. The router's own tuple: not copied."""
        if adapter is None:
            return self._holders.get(BASE_MODEL) or self._anywhere
        return self._holders.get(adapter, ())

    def route(self, adapter: str | None, prefix_key: str | bytes | int | None = None) -> int:
        """The worker for a request of ``adapter`` (None: the base model); counts it.

        ``prefix_key`` (any stable digest of the prompt's start) keeps requests that share
        it on the same holder while that holder is not overloaded (see the module notes).
        """
        key = BASE_MODEL if adapter is None else adapter
        holders = self.holders(adapter)
        index = None
        if prefix_key is not None and self.policy is not RoutingPolicy.ROUND_ROBIN:
            index = self._affine(holders, prefix_key)
        if index is None:
            index = self._choose(key, holders)
        self.outstanding[index] += 1
        return index

    def preferred(self, holders: Sequence[tuple[int, float]],
                  prefix_key: str | bytes | int) -> int:
        """The holder ``prefix_key`` is drawn to (weighted rendezvous hashing; stable for a
        key whatever other holders come and go)."""
        return _rendezvous(_digest(prefix_key), tuple(holders))

    def _affine(self, holders: Sequence[tuple[int, float]],
                prefix_key: str | bytes | int) -> int | None:
        """The preferred holder if its load allows, else None (the policy chooses)."""
        if len(holders) < 2:
            return None
        index = self.preferred(holders, prefix_key)
        least = min(self.outstanding[i] for i, _ in holders)
        slack = max(self.affinity_slack, self.affinity_ratio * least)
        return index if self.outstanding[index] <= least + slack else None

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


def _digest(key: str | bytes | int) -> int:
    """A 64-bit digest of a prefix key, the same in every process (not ``hash()``)."""
    if isinstance(key, int):
        return key & _MASK
    data = key.encode() if isinstance(key, str) else key
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


@functools.lru_cache(maxsize=4096)
def _rendezvous(seed: int, holders: tuple[tuple[int, float], ...]) -> int:
    """The holder with the highest weighted score for ``seed`` (cached: prompts that share a
    prefix repeat the same key against the same holders)."""
    return max(holders, key=lambda h: (_score(seed, h[0], h[1]), -h[0]))[0]


def _score(seed: int, index: int, share: float) -> float:
    """Weighted rendezvous score of worker ``index`` for key ``seed``: ``share / -ln(u)``
    with ``u`` in (0, 1) from splitmix64 of the pair."""
    z = (seed + (index + 1) * 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    z ^= z >> 31
    u = ((z >> 11) + 0.5) / float(1 << 53)
    return share / -math.log(u)
