"""``redis:`` in gateway.yaml and ``LORAFLEET_REDIS_URL``."""

from __future__ import annotations

import pytest

from gateway.config import env as config_env
from gateway.config import parse_config
from twin.errors import ConfigError

BASE = {"base_model": "b", "workers": ["http://127.0.0.1:8001"], "port": 9000}


def test_redis_section_resolves_replica_name_and_url() -> None:
    cfg = parse_config({**BASE, "redis": {"url": "redis://r:6379/0", "lease_ttl_s": 3}})
    assert cfg.redis is not None
    assert cfg.redis.url == "redis://r:6379/0" and cfg.redis.lease_ttl_s == 3.0
    assert cfg.redis.replica.endswith(":9000")
    assert cfg.redis.advertise_url == "http://127.0.0.1:9000"  # the host it listens on
    assert parse_config(BASE).redis is None  # the embedded default: one process


@pytest.mark.parametrize(("section", "field", "words"), [
    ({"url": "http://r"}, "redis.url", "redis://"),
    ({}, "redis.url", "required"),
    ({"url": "redis://r", "ttl": 3}, "redis.ttl", "unknown field"),
    ({"url": "redis://r", "lease_ttl_s": 0.1}, "redis.lease_ttl_s",
     "must be in [0.5, 300], got 0.1"),
    ({"url": "redis://r", "lease_ttl_s": "5"}, "redis.lease_ttl_s", "must be a number, got '5'"),
    ({"url": "redis://r", "limits_fail_open": "yes"}, "redis.limits_fail_open",
     "must be true or false, got 'yes'"),
    ({"url": "redis://r", "prefix": "a b"}, "redis.prefix", "pattern"),
    ({"url": "redis://r", "advertise_url": "gw:8080"}, "redis.advertise_url", "http://"),
    (["redis://r"], "redis", "mapping"),
])
def test_bad_redis_field_is_named(section: object, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({**BASE, "redis": section})
    assert err.value.field == field and words in err.value.message, err.value


def test_env_url_over_the_file_and_named_when_bad() -> None:
    data, sources = {**BASE, "redis": {"url": "redis://file:6379", "prefix": "lf"}}, {}
    config_env.redis_url(data, {"LORAFLEET_REDIS_URL": "redis://env:6379/1"}, sources)
    cfg = parse_config(data)
    assert cfg.redis is not None and (cfg.redis.url, cfg.redis.prefix) == (
        "redis://env:6379/1", "lf")
    data = dict(BASE)
    config_env.redis_url(data, {"LORAFLEET_REDIS_URL": "localhost:6379"}, sources)
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert str(config_env.named(err.value, sources)).startswith("LORAFLEET_REDIS_URL: must be")
