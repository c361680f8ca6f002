"""``redis:`` in ``gateway.yaml``: several gateway replicas on one Redis.

::

    redis:
      url: redis://redis:6379/0      # LORAFLEET_REDIS_URL sets it (and turns replicas on)
      prefix: lorafleet              # every key is <prefix>:<name>
      replica: null                  # this replica's name (default: <host name>:<port>)
      advertise_url: null            # where the others reach its admin API (default:
                                     # http://<the host's address>:<port>)
      connect_timeout_s: 1.0
      op_timeout_s: 0.5              # one Redis command
      lease_ttl_s: 5.0               # the leader's lease; renewed every third of it
      limits_fail_open: true         # Redis unreachable: each replica limits keys on its
                                     # own (true) or answers 503 (false)
      admin_fail_open: false         # Redis unreachable: admin calls 503 (false) or act on
                                     # this replica's own state (true)

Without ``redis:`` the gateway is one process, as before (the embedded default).

Examples
--------
>>> cfg = parse_redis({"url": "redis://127.0.0.1:6379/0"}, host="0.0.0.0", port=8080,
...                   hostname="gw-0")
>>> cfg.prefix, cfg.replica, cfg.advertise_url, cfg.key("lease")
('lorafleet', 'gw-0:8080', 'http://gw-0:8080', 'lorafleet:lease')
>>> parse_redis({"url": "http://x"}, host="h", port=1)
Traceback (most recent call last):
...
twin.errors.ConfigError: redis.url: must be a redis://, rediss:// or unix:// URL, got 'http://x'
"""

from __future__ import annotations

import socket
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, field_validator

from gateway.config.validation import Range, validated
from twin.errors import ConfigError

__all__ = ["RedisConfig", "parse_redis"]

SCHEMES = ("redis", "rediss", "unix")


class RedisConfig(BaseModel):
    """The ``redis:`` section, resolved (``replica`` and ``advertise_url`` filled in)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    url: str
    prefix: str = Field(default="lorafleet", min_length=1, max_length=64,
                        pattern=r"^[A-Za-z0-9_.:-]+$")
    replica: str = Field(default="", max_length=128)
    advertise_url: str = ""
    connect_timeout_s: Annotated[StrictFloat, Range(0, 60, open_low=True)] = 1.0
    op_timeout_s: Annotated[StrictFloat, Range(0, 60, open_low=True)] = 0.5
    lease_ttl_s: Annotated[StrictFloat, Range(0.5, 300)] = 5.0
    limits_fail_open: StrictBool = True
    admin_fail_open: StrictBool = False

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if urlsplit(value).scheme not in SCHEMES:
            raise ValueError(f"must be a redis://, rediss:// or unix:// URL, got {value!r}")
        return value

    @field_validator("advertise_url")
    @classmethod
    def _advertise(cls, value: str) -> str:
        if value and (urlsplit(value).scheme not in ("http", "https")
                      or not urlsplit(value).netloc):
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
        return value.rstrip("/")

    def key(self, name: str) -> str:
        """The Redis key ``name`` under this deployment's prefix."""
        return f"{self.prefix}:{name}"


def _address(hostname: str) -> str:
    """The host's own address (a pod's IP: Kubernetes and Docker map the host name to it in
    /etc/hosts), else the name itself."""
    try:
        return socket.gethostbyname(hostname)
    except OSError:
        return hostname


def parse_redis(data: Any, *, host: str, port: int, hostname: str | None = None
                ) -> RedisConfig:
    """The ``redis:`` mapping checked, with the replica's name and URL defaulted from the
    host name and ``port`` (``host`` when it is a specific address); ``ConfigError`` names
    the first bad field (``redis.<field>``)."""
    if isinstance(data, str):
        data = {"url": data}
    if not isinstance(data, dict):
        raise ConfigError("redis", "must be a mapping {url, prefix, ...} or a redis:// URL")
    cfg = validated(RedisConfig, data, "redis")
    name = hostname or socket.gethostname()
    here = host if host not in ("0.0.0.0", "::", "", "localhost") else _address(name)
    updates = {"replica": cfg.replica or f"{name}:{port}",
               "advertise_url": cfg.advertise_url or f"http://{here}:{port}"}
    return cfg.model_copy(update=updates)
