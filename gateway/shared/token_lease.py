"""A replica's lease on a key's fleet-wide tokens: a few tokens taken from the key's bucket in
Redis in one call, then handed to this replica's requests without asking Redis again
(``FleetLimits``, ``gateway/shared/limits.py``, does the asking; this is the bookkeeping).

- **Size**: a lease covers about ``horizon_s`` of the key's recent demand on this replica
  (requests per second, an exponentially decayed count with time constant ``tau_s``), at most
  ``cap`` tokens: a tenth of the key's burst, and never more than ``MAX_LEASE``. A key asked
  for less than once per ``horizon_s`` here leases nothing beyond the request's own token
  (one Redis call a request, as without leases). Redis grants at most half the tokens the
  bucket holds (at least one), so a key near its limit leases one token at a time.
- **Refill**: when a request leaves the lease at half its size or less, ``FleetLimits``
  asks Redis for more in the background; a request waits on Redis only when the lease is
  empty (the key's first request, a key at its limit, a burst past the lease). Requests
  that find it empty wait on one call; the next one asks for all of them.
- **Expiry**: a leased token not used within ``ttl_s`` of Redis's answer is dropped (never
  given back): tokens leave the bucket once, so the fleet never grants more than the bucket
  allows in all, and a lease left unused costs the key what it held: at most one and a half
  times its size (refilled at half, by a whole lease), about 0.15 s of its traffic here.
- **Known empty**: when Redis answers that the bucket has no token before ``wait`` seconds,
  no token can appear sooner (replicas only take), so until then (at most ``ttl_s``) a
  request finding the lease empty gets the remaining wait without asking Redis.

Examples
--------
>>> lease = TokenLease(rate=1000.0, burst=1000.0)
>>> lease.cap, lease.spare()  # at most 100 tokens; no demand yet
(100, 0)
>>> for i in range(200):  # 200 requests a second for 1 s
...     lease.arrive(i * 0.005)
>>> lease.spare()  # about 0.1 s of them (the estimate is still rising)
17
>>> lease.granted(18, 0.0, sent_at=1.0, now=1.0)  # the asking request's token, and 17
>>> lease.take(1.0), lease.held(1.0), lease.low(1.0), lease.held(1.5)  # gone 0.5 s later
(True, 17, False, 0)
>>> lease.granted(0, 2.0, sent_at=1.0, now=1.0)  # bucket empty: a token in 2 s
>>> lease.known_wait(1.25), lease.known_wait(1.5)  # known only for 0.5 s
(1.75, 0.0)
"""

from __future__ import annotations

import asyncio
import math
from collections import deque

__all__ = ["DEMAND_TAU_S", "HORIZON_S", "LEASE_SHARE", "LEASE_TTL_S", "MAX_LEASE", "TokenLease"]

LEASE_TTL_S = 0.5  # a leased token unused this long after Redis's answer is dropped
HORIZON_S = 0.1  # a lease covers about this long of the key's demand on this replica
DEMAND_TAU_S = 0.5  # time constant of the demand estimate
LEASE_SHARE = 0.1  # a lease holds at most this share of the key's burst...
MAX_LEASE = 100  # ... and at most this many tokens


class TokenLease:
    """One key's leased tokens on this replica, and its demand here.

    Parameters
    ----------
    rate, burst
        The key's limit (its bucket in Redis).
    ttl_s
        How long a leased token stays usable after Redis's answer.
    horizon_s
        How much of the recent demand a lease covers.
    tau_s
        Time constant of the demand estimate (requests per second, decayed).
    """

    def __init__(self, rate: float, burst: float, *, ttl_s: float = LEASE_TTL_S,
                 horizon_s: float = HORIZON_S, tau_s: float = DEMAND_TAU_S) -> None:
        self.rate = rate
        self.burst = burst
        self.ttl_s = ttl_s
        self.horizon_s = horizon_s
        self.tau_s = tau_s
        self.cap = max(1, min(MAX_LEASE, int(burst * LEASE_SHARE)))
        self.refill: asyncio.Task[float | None] | None = None  # the Redis call in flight, if any
        self.waiting = 0  # requests waiting on it
        self._batches: deque[list[float]] = deque()  # [expires at, tokens left], oldest first
        self._demand = 0.0  # decayed count of requests: about rate * tau_s
        self._seen: float | None = None  # last request
        self._open_at = 0.0  # the bucket has no token before then...
        self._known_until = 0.0  # ... as far as this replica knows until then

    def arrive(self, now: float) -> None:
        """Count a request of the key (its demand here), whatever it gets."""
        if self._seen is not None and now > self._seen:
            self._demand *= math.exp((self._seen - now) / self.tau_s)
        self._demand += 1.0
        self._seen = now

    def spare(self) -> int:
        """Tokens to lease beyond the asking request's own: ``horizon_s`` of the recent
        demand, at most ``cap`` (0: the key is asked for too rarely here to lease)."""
        return min(self.cap, int(self._demand / self.tau_s * self.horizon_s))

    def held(self, now: float) -> int:
        """Leased tokens still usable at ``now`` (the expired ones are dropped)."""
        while self._batches and self._batches[0][0] <= now:
            self._batches.popleft()
        return int(sum(batch[1] for batch in self._batches))

    def take(self, now: float) -> bool:
        """Use a leased token (the oldest batch first); False when none is left."""
        while self._batches:
            batch = self._batches[0]
            if batch[0] > now:
                batch[1] -= 1
                if batch[1] <= 0:
                    self._batches.popleft()
                return True
            self._batches.popleft()
        return False

    def low(self, now: float) -> bool:
        """Whether the lease should be refilled now: the key is leased (``spare`` > 0) and
        holds half of that or less."""
        spare = self.spare()
        return spare > 0 and self.held(now) <= spare // 2

    def granted(self, count: int, wait: float, *, sent_at: float, now: float) -> None:
        """Redis's answer to a lease asked at ``sent_at``, received at ``now``: ``count``
        tokens (usable until ``now + ttl_s``), or none and the seconds until the bucket has
        one (counted from ``sent_at``: Redis answered after it, so never too late)."""
        if count > 0:
            self._batches.append([now + self.ttl_s, float(count)])
            self._known_until = 0.0
        elif wait > 0.0:
            self._open_at = sent_at + wait
            self._known_until = sent_at + min(wait, self.ttl_s)

    def known_wait(self, now: float) -> float:
        """Seconds until the bucket has a token, when Redis said so less than ``ttl_s``
        ago; else 0.0 (unknown: Redis must be asked)."""
        if now < self._known_until:
            return self._open_at - now
        return 0.0
