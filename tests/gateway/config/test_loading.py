"""``GatewayConfig`` as a pydantic dataclass: errors worded as one line naming the field,
the runtime-only field kept out of gateway.yaml, and values checked however they are made."""

from __future__ import annotations

import dataclasses

import pydantic
import pytest

from gateway.config import GatewayConfig, WorkerEndpoint, parse_config
from gateway.config.env import _TEXT
from twin.errors import ConfigError

BASE = {"base_model": "b", "workers": ["http://10.0.0.1:8000"]}


@pytest.mark.parametrize(("change", "line"), [
    ({"read_timeout": 5}, "read_timeout: unknown field; did you mean 'read_timeout_s'?"),
    ({"worker_engine_given": []}, "worker_engine_given: unknown field"),
    ({"workers": [{"url": "http://x:1", "weight": 2}]},
     "workers[0].weight: unknown field; expected ['name', 'url']"),
    ({"port": 8080.0}, "port: must be an integer, got 8080.0"),
    ({"headroom": True}, "headroom: must be a number, got True"),
    ({"host": 7}, "host: must be a string, got 7"),
    ({"state_file": ""}, "state_file: must be a non-empty string, got ''"),
    ({"replan_interval_s": float("inf")}, "replan_interval_s: must be in [0, 604800], got inf"),
    ({"placement": "best"}, "placement: must be one of ['planner', 'round-robin'], got 'best'"),
    ({"actuator": {"kind": "command", "command": "x", "statefulset": "v"}},
     "actuator.statefulset: unknown field for kind command"),
])
def test_errors_are_one_line_naming_the_field(change: dict[str, object], line: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, **change})
    assert str(info.value) == line


def test_a_config_made_in_code_is_checked_too() -> None:
    cfg = GatewayConfig(base_model="b", workers=[WorkerEndpoint("w0", "http://x:1/")])
    assert cfg.workers == (WorkerEndpoint("w0", "http://x:1"),) and cfg.keys == ()
    assert dataclasses.replace(cfg, port=9000).port == 9000
    with pytest.raises(pydantic.ValidationError, match=r"must be in 0\.\.65535"):
        dataclasses.replace(cfg, port=70000)
    with pytest.raises(pydantic.ValidationError, match="names must be unique"):
        dataclasses.replace(cfg, workers=cfg.workers * 2)


def test_text_fields_take_a_variable_as_it_is() -> None:
    assert {"host", "state_file", "gpu", "worker_api_key_env"} <= _TEXT
    assert not {"port", "placement", "max_body_bytes"} & _TEXT
