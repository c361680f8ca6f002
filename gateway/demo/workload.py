"""The demo's embedded adapter set and its open-loop arrivals (pure, seeded).

The adapters are generated from a seed: ranks drawn from 8/16/32, rates Zipf-skewed (adapter
``i`` of the popularity order gets a share ``1 / (i + 1) ** zipf`` of the total). Arrivals are
one Poisson process at the total rate, each arrival naming an adapter by those shares; with
``shift_every_s`` the popularity order rotates every so many simulated seconds (the hot
adapters cool down and cold ones heat up, the total rate unchanged).

Examples
--------
>>> ads = demo_adapters(4, total_rate=10.0, seed=1)
>>> [a.name for a in ads], round(sum(a.rate for a in ads), 6)
(['demo-00', 'demo-01', 'demo-02', 'demo-03'], 10.0)
>>> ads[0].rate > ads[1].rate > ads[3].rate
True
>>> arr = Arrivals(ads, seed=0)
>>> t1, _ = arr.next(); t2, _ = arr.next()
>>> 0 < t1 < t2
True
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Sequence

from planner import AdapterDemand

__all__ = ["DEMO_RANKS", "Arrivals", "demo_adapters"]

DEMO_RANKS = (8, 16, 32)


def demo_adapters(count: int, *, total_rate: float, seed: int = 0, zipf: float = 1.0,
                  input_tokens: int = 1024, output_tokens: int = 256) -> list[AdapterDemand]:
    """``count`` adapters named ``demo-00``... in decreasing popularity.

    Parameters
    ----------
    count
        How many adapters.
    total_rate
        Their summed rate, requests per simulated second.
    seed
        Seeds the ranks.
    zipf
        The skew exponent (0: all equal).
    input_tokens, output_tokens
        Every request's prompt and completion length.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if not total_rate > 0:
        raise ValueError(f"total_rate must be > 0, got {total_rate!r}")
    rng = random.Random(seed)
    weights = [1.0 / (i + 1) ** zipf for i in range(count)]
    total = sum(weights)
    width = max(2, len(str(count - 1)))
    return [AdapterDemand(name=f"demo-{i:0{width}d}", rank=rng.choice(DEMO_RANKS),
                          rate=total_rate * w / total, input_tokens=input_tokens,
                          output_tokens=output_tokens)
            for i, w in enumerate(weights)]


class Arrivals:
    """Poisson arrivals over ``adapters`` in simulated seconds: ``next()`` gives the time and
    the adapter index of the next request.

    Parameters
    ----------
    adapters
        The adapters and their rates.
    seed
        Seeds the arrival times and the adapter draws.
    shift_every_s
        Rotate the popularity order by ``shift_by`` every so many simulated seconds (None:
        the rates stay as given).
    shift_by
        How many places a rotation moves the rates.
    """

    def __init__(self, adapters: Sequence[AdapterDemand], *, seed: int = 0,
                 shift_every_s: float | None = None, shift_by: int = 3) -> None:
        if not adapters:
            raise ValueError("adapters must not be empty")
        self.rates = [a.rate for a in adapters]
        self.total = sum(self.rates)
        if not self.total > 0:
            raise ValueError("the adapters' total rate must be > 0")
        self.shift_every_s = shift_every_s
        self.shift_by = shift_by
        self._rng = random.Random(seed)
        self._cum = list(itertools.accumulate(self.rates))
        self._now = 0.0

    def phase(self, t: float) -> int:
        """How many rotations have happened by simulated time ``t``."""
        if self.shift_every_s is None:
            return 0
        return int(t // self.shift_every_s)

    def rate_of(self, index: int, t: float) -> float:
        """Adapter ``index``'s rate at simulated time ``t``."""
        n = len(self.rates)
        return self.rates[(index + self.phase(t) * self.shift_by) % n]

    def next(self) -> tuple[float, int]:
        self._now += self._rng.expovariate(self.total)
        draw = self._rng.random() * self._cum[-1]
        rank = min(bisect.bisect_right(self._cum, draw), len(self.rates) - 1)
        # Rotation: the adapter at popularity rank r now is the one r - shift places on.
        n = len(self.rates)
        return self._now, (rank - self.phase(self._now) * self.shift_by) % n
