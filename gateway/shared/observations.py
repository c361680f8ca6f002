"""Every replica's traffic events through one Redis stream, so that each replica's observer
(and so the leader's re-plans and learning) sees all of the fleet's traffic, and a replica
that takes over the lead has the window already.

A replica buffers its observer's events (``record``: the observer's sink) and adds them to
the stream every ``FLUSH_S`` as one entry: its process id, its wall clock at the flush, and
each event's age at the flush. Every replica reads the entries of the others (``pull``) and
places each event on its own monotonic clock: now, less the entry's age on arrival (wall
clocks of two hosts differ by NTP's error, milliseconds; a negative age counts as 0), less
the event's age at the flush. A replica starting reads back the
last window's entries (stream ids are the Redis server's milliseconds).

Redis unreachable: events wait in the buffer (the newest ``MAX_PENDING``) and go with the
next flush that succeeds.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis

from gateway.config.redis import RedisConfig
from gateway.shared.client import UNREACHABLE

__all__ = ["FLUSH_S", "MAX_PENDING", "ObservationStream"]

logger = logging.getLogger(__name__)

FLUSH_S = 0.5
MAX_PENDING = 200_000  # events kept while Redis is unreachable
STREAM_MAXLEN = 100_000  # entries (each up to FLUSH_S of one replica's events)
READ_COUNT = 1000

Event = tuple[Any, ...]


class ObservationStream:
    """One replica's end of the stream."""

    def __init__(self, client: aioredis.Redis, cfg: RedisConfig, *, window_s: float,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.client = client
        self.key = cfg.key("observations")
        self.source = secrets.token_hex(6)  # this process (a restarted replica is another)
        self.clock, self.wall = clock, wall
        self.pending: deque[Event] = deque(maxlen=MAX_PENDING)
        # read from the last window on (ids are "<ms>-<seq>" on the Redis server's clock)
        self.last_id = f"{max(0, int((wall() - window_s) * 1000))}-0"
        self.sent = self.merged = 0

    def record(self, event: Event) -> None:
        """The observer's sink: an event of this replica's, sent at the next flush."""
        self.pending.append(event)

    async def flush(self) -> None:
        """Add the buffered events to the stream (kept for the next flush if Redis fails)."""
        if not self.pending:
            return
        now = self.clock()
        events = list(self.pending)
        body = json.dumps([[e[0], round(now - e[1], 4), *e[2:]] for e in events],
                          separators=(",", ":"))
        try:
            await self.client.xadd(self.key, {"s": self.source, "w": repr(self.wall()),
                                              "e": body}, maxlen=STREAM_MAXLEN,
                                   approximate=True)
        except UNREACHABLE:
            return  # the lease loop logs Redis outages; the events wait
        for _ in events:
            self.pending.popleft()
        self.sent += len(events)

    async def pull(self) -> list[Event]:
        """The other replicas' events added since the last pull, on this clock."""
        try:
            found: Any = await self.client.xread({self.key: self.last_id}, count=READ_COUNT)
        except UNREACHABLE:
            return []
        out: list[Event] = []
        now, wall = self.clock(), self.wall()
        for _, entries in found:
            for entry_id, fields in entries:
                self.last_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
                if fields.get(b"s", b"").decode() == self.source:
                    continue
                try:
                    delay = max(0.0, wall - float(fields[b"w"]))
                    events = json.loads(fields[b"e"])
                except (KeyError, ValueError):
                    continue
                for kind, age, *rest in events:
                    out.append((kind, now - delay - float(age), *rest))
        self.merged += len(out)
        return out
