"""A rate-limited key's token for one request: from the bucket every replica shares in Redis
when the gateway runs as replicas (``redis:`` in ``gateway.yaml``; ``gateway/shared/limits.py``:
through a lease of a few tokens, so most requests do not wait on Redis), else from this
replica's own bucket (``ApiKey.bucket``).

With shared limits and Redis down, ``redis.limits_fail_open`` chooses: this replica's bucket
decides (true), or the request is answered 503 in OpenAI's shape (false; ``Retry-After``: when
the gateway will ask Redis again).
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.errors import ApiError
from gateway.server.keys import CONTROL, GATEWAY_CONFIG, KEYRING, SHARED_LIMITS
from gateway.shared.limits import FleetLimits, LimitsUnavailable, SharedBuckets

if TYPE_CHECKING:
    from gateway.server.auth import ApiKey

__all__ = ["shared_limits", "token_wait"]


async def shared_limits(app: web.Application) -> AsyncIterator[None]:
    """``cleanup_ctx`` (after ``redis_client``): ``app[SHARED_LIMITS]``, the fleet-wide
    buckets, when the app has Redis and some key a rate limit; else None."""
    cfg = app[GATEWAY_CONFIG]
    client = app[CONTROL].redis
    limited = any(spec.rate_limit is not None for spec in cfg.keys)
    app[SHARED_LIMITS] = limits = None
    if client is not None and cfg.redis is not None and limited:
        app[SHARED_LIMITS] = limits = FleetLimits(SharedBuckets(client, cfg.redis),
                                                  fail_open=cfg.redis.limits_fail_open,
                                                  clock=app[KEYRING].clock)
    yield
    if limits is not None:
        await limits.aclose()  # its refills in flight, before the client closes


async def token_wait(request: web.Request, key: ApiKey) -> float:
    """0.0 when ``key`` (rate-limited) may send this request; else the seconds until it may.
    An ``ApiError`` (503) when its limit cannot be checked (Redis down, failing closed)."""
    bucket = key.bucket
    assert bucket is not None
    limits = request.app.get(SHARED_LIMITS)
    if limits is None:
        return bucket.take(request.app[KEYRING].clock())
    try:
        return await limits.take(key.name, bucket)
    except LimitsUnavailable as exc:
        retry = max(1, math.ceil(exc.retry_after_s))
        raise ApiError.unavailable(
            f"The rate limiter is unavailable, so requests of rate-limited keys are refused. "
            f"Please try again in {retry}s.", retry_after=retry) from None
