"""``actuator:`` and ``discovery:`` in gateway.yaml: plain specs, each error naming its field
(``gateway/fleet/kube.py`` builds the actuator and the discovery from them)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config.fleet import ActuatorSpec, DiscoverySpec, parse_actuator, parse_discovery
from twin.errors import ConfigError


def test_specs_take_each_kind_with_its_defaults() -> None:
    assert parse_actuator({"kind": "none"}) == ActuatorSpec(kind="none")
    cmd = parse_actuator({"kind": "command", "command": "scale {workers}", "timeout_s": 5})
    assert (cmd.command, cmd.timeout_s) == ("scale {workers}", 5.0)
    kube = parse_actuator({"kind": "kubernetes", "statefulset": "vllm", "namespace": "llm",
                           "server": "https://k8s:6443/", "token_path": "/t"})
    assert (kube.statefulset, kube.server, kube.ca_path) == ("vllm", "https://k8s:6443", None)
    found = parse_discovery({"kind": "kubernetes", "selector": "a=b"})
    assert found == DiscoverySpec(kind="kubernetes", selector="a=b", port=8000, interval_s=10)


@pytest.mark.parametrize(("data", "field", "words"), [
    ({"kind": "docker"}, "actuator.kind", "must be one of 'none', 'command' or 'kubernetes'"),
    ({}, "actuator.kind", "is required"),
    ({"kind": "command"}, "actuator.command", "is required for kind command"),
    ({"kind": "command", "command": "x {gpus}"}, "actuator.command",
     "only {workers} may be substituted"),
    ({"kind": "command", "command": "x", "timeout_s": 0}, "actuator.timeout_s",
     "must be in (0, 604800], got 0"),
    ({"kind": "command", "command": "x", "timeout_s": "5"}, "actuator.timeout_s",
     "must be a number, got '5'"),
    ({"kind": "none", "command": "x"}, "actuator.command", "unknown field for kind none"),
    ({"kind": "kubernetes", "statefulset": "v", "selector": "a"}, "actuator.selector",
     "unknown field; expected"),
    ({"kind": "kubernetes", "statefulset": ""}, "actuator.statefulset",
     "must be a non-empty string, got ''"),
    ({"kind": "kubernetes", "statefulset": "v", "namespace": 3}, "actuator.namespace",
     "must be a string, got 3"),
    ("kubernetes", "actuator", "must be a mapping"),
])
def test_actuator_errors_name_the_field(data: Any, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_actuator(data)
    assert info.value.field == field and words in info.value.message, info.value


@pytest.mark.parametrize(("data", "field", "words"), [
    ({"kind": "kubernetes", "server": "https://k8s"}, "discovery.selector", "is required"),
    ({"kind": "kubernetes", "selector": "a=b", "port": 0}, "discovery.port",
     "must be in 1..65535, got 0"),
    ({"kind": "kubernetes", "selector": "a=b", "interval_s": float("inf")},
     "discovery.interval_s", "got inf"),
    ({"kind": "static"}, "discovery.kind", "must be kubernetes"),
    ({"kind": "kubernetes", "selector": "a=b", "statefulset": "v"}, "discovery.statefulset",
     "unknown field"),
])
def test_discovery_errors_name_the_field(data: Any, field: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_discovery(data)
    assert info.value.field == field and words in info.value.message, info.value
