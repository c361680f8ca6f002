"""Client API keys, per-key rate limits, and the key the gateway sends to its workers.

Configured under ``keys:`` (see ``gateway.config``); without it the gateway is open.
With keys, every ``/v1/*`` request needs ``Authorization: Bearer <key>``:

- no key, or a wrong one: 401 in OpenAI's shape (``type: invalid_request_error``; a wrong key
  has ``code: invalid_api_key``, a missing one ``code: null``, as OpenAI answers). vLLM's own
  ``--api-key`` middleware answers ``{"error": "Unauthorized"}``, which the ``openai`` client
  cannot read a message from, so the gateway follows OpenAI. Only ``/v1/*`` is guarded, as
  vLLM guards it (``entrypoints/serve/middleware/authenticate.py``): ``/health``, ``/ready``
  and ``/metrics`` stay open for probes and scrapers; ``/admin/*`` has its own token.
- a model the key may not use: 404 exactly as for an unknown model (the names a key cannot
  use are not revealed), and ``/v1/models`` lists only what the key may use. The base model
  is a name like any other: a key with an ``adapters`` list reaches it only if listed.
- past the key's rate: 429 with OpenAI's body (``type: requests``,
  ``code: rate_limit_exceeded``) and ``Retry-After``, the whole seconds until a request
  would pass again (rounded up). The bucket holds ``burst`` tokens (default
  ``max(1, rate_limit)``) refilled at ``rate_limit`` per second; every ``/v1/*`` request takes
  one. With ``redis:`` (replicas) the bucket is one for the whole fleet, in Redis
  (``gateway/server/key_limits.py``).

Keys are compared in constant time: the SHA-256 of the presented key against each configured
key's with ``hmac.compare_digest``, every key checked (vLLM's scheme).

``worker_api_key_env`` names an environment variable whose value is sent to the workers as
``Authorization: Bearer`` on every call (the app's client session and upstream pool carry it
as a default header), as a vLLM started with ``--api-key`` requires on its ``/v1/*`` routes: proxied
requests, ``/v1/models`` and LoRA load/unload.

Examples
--------
>>> from gateway.config.keys import parse_keys
>>> spec = parse_keys([{"key": "sk-1", "name": "team-a", "adapters": ["sql"],
...                     "rate_limit": 2}])[0]
>>> ring = KeyRing.resolve([spec], environ={})
>>> ring.authenticate("Bearer sk-1").name, ring.authenticate("Bearer nope")
('team-a', None)
>>> b = TokenBucket(rate=1.0, burst=1.0, now=0.0)
>>> b.take(0.0), b.take(0.25), b.take(1.0)
(0.0, 0.75, 0.0)
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING

from aiohttp import web

from gateway.config.keys import KeySpec
from gateway.errors import ApiError, AuthError
from gateway.server.key_limits import token_wait
from gateway.server.keys import API_KEY, KEYRING, REQUEST_MODEL
from twin.errors import ConfigError

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

__all__ = ["ApiKey", "KeyRing", "TokenBucket", "auth_middleware",
           "check_model", "rate_limited", "visible", "worker_key"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

GUARDED_PREFIX = "/v1/"
class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; one request takes one."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._at = now

    def take(self, now: float) -> float:
        """0.0 when a token was taken; else the seconds until one will be there."""
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


@dataclass(slots=True)
class ApiKey:
    """A client key in use: its name, what it may use, and its bucket."""

    name: str
    digest: bytes = field(repr=False)
    adapters: frozenset[str] | None
    bucket: TokenBucket | None

    def allows(self, model: str) -> bool:
        return self.adapters is None or model in self.adapters


class KeyRing:
    """The configured client keys, resolved from the environment at start-up."""

    def __init__(self, keys: Iterable[ApiKey],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.keys = list(keys)
        self.clock = clock

    @classmethod
    def resolve(cls, specs: Iterable[KeySpec], environ: Mapping[str, str] | None = None,
                clock: Callable[[], float] = time.monotonic) -> KeyRing:
        """Read each ``key_env``; an unset or empty variable is a ``ConfigError``."""
        env = os.environ if environ is None else environ
        keys = []
        for i, spec in enumerate(specs):
            secret = spec.key
            if spec.key_env is not None:
                secret = env.get(spec.key_env)
                if not secret:
                    raise ConfigError(f"keys[{i}].key_env",
                                      f"environment variable {spec.key_env} is not set")
            assert secret is not None
            bucket = None
            if spec.rate_limit is not None:
                assert spec.burst is not None
                bucket = TokenBucket(spec.rate_limit, spec.burst, clock())
            keys.append(ApiKey(spec.name, hashlib.sha256(secret.encode()).digest(),
                               spec.adapters, bucket))
        return cls(keys, clock)

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def authenticate(self, authorization: str | None) -> ApiKey | None:
        """The key an ``Authorization`` header presents, or None."""
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        digest = hashlib.sha256(token.strip().encode()).digest()
        found = None
        for key in self.keys:  # no early exit: every key is compared
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found


def rate_limited(key: ApiKey, wait_s: float) -> AuthError:
    """429 for ``key``, a request ``wait_s`` seconds too early."""
    assert key.bucket is not None
    retry = max(1, math.ceil(wait_s))
    return AuthError(HTTPStatus.TOO_MANY_REQUESTS, "requests",
                     f"Rate limit reached for key {key.name} on requests per second: limit "
                     f"{key.bucket.rate:g}/s, burst {key.bucket.burst:g}. Please try again "
                     f"in {retry}s.", "rate_limit_exceeded", retry_after=retry)




@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check the bearer key and take a token from its bucket on ``/v1/*``."""
    ring = request.app[KEYRING]
    if not ring.enabled or not request.path.startswith(GUARDED_PREFIX) \
            or request.method == "OPTIONS":
        return await handler(request)
    header = request.headers.get("Authorization")
    key = ring.authenticate(header)
    if key is None:
        raise AuthError.invalid() if header else AuthError.missing()
    request[API_KEY] = key
    if key.bucket is not None:
        wait = await token_wait(request, key)  # fleet-wide with redis:, else this replica's
        if wait > 0:
            raise rate_limited(key, wait)
    return await handler(request)


def check_model(request: web.Request, model: str) -> None:
    """Note the requested model; 404 (as if unknown) when the key may not use it."""
    request[REQUEST_MODEL] = model
    key = request.get(API_KEY)
    if key is not None and not key.allows(model):
        raise ApiError.model_not_found(model)


def visible(request: web.Request, model: str) -> bool:
    """Whether ``/v1/models`` shows ``model`` to this request's key."""
    key = request.get(API_KEY)
    return key is None or key.allows(model)


def worker_key(cfg: GatewayConfig, environ: Mapping[str, str] | None = None) -> str | None:
    """The workers' key from ``cfg.worker_api_key_env`` (None when not configured)."""
    if cfg.worker_api_key_env is None:
        return None
    secret = (os.environ if environ is None else environ).get(cfg.worker_api_key_env)
    if not secret:
        raise ConfigError("worker_api_key_env",
                          f"environment variable {cfg.worker_api_key_env} is not set")
    return secret
