"""gateway.yaml's JSON Schema (``gateway/config/schema.py``): the committed file is current,
the example configs name it and pass it, and it describes what the parsers take."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import main
from gateway.config import GatewayConfig, parse_config
from gateway.config.engine import ENGINE_FIELDS
from gateway.config.schema import SCHEMA_FILE, config_schema, schema_text
from gateway.server import emulated
from planner import inputs
from tests.gateway.config.test_config_and_plan import GOOD
from twin import catalog

jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[3]
SCHEMA = ROOT / SCHEMA_FILE
# the example configs, each naming the schema on its first line
EXAMPLES = [ROOT / "deploy/compose/gateway.yaml", ROOT / "deploy/compose/gateway.cpu.yaml",
            *sorted((ROOT / "examples").glob("gateway*.yaml"))]
MODELINE = "# yaml-language-server: $schema="


def validator() -> Any:
    schema = config_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_committed_schema_is_current() -> None:
    assert SCHEMA.read_text() == schema_text(), (
        f"{SCHEMA_FILE} is stale: lorafleet serve --print-config-schema > {SCHEMA_FILE}")


def test_serve_prints_the_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--print-config-schema"]) == 0
    assert json.loads(capsys.readouterr().out) == config_schema()


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_name_the_schema_and_pass_it(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    assert first.startswith(MODELINE), path
    assert (path.parent / first.removeprefix(MODELINE)).resolve() == SCHEMA
    errors = [e.message for e in validator().iter_errors(yaml.safe_load(path.read_text()))]
    assert errors == [], path


def test_the_kubernetes_configmap_passes_the_schema() -> None:
    manifests = yaml.safe_load_all((ROOT / "deploy/k8s/gateway.yaml").read_text())
    (data,) = [m["data"]["gateway.yaml"] for m in manifests if m and m["kind"] == "ConfigMap"]
    assert list(validator().iter_errors(yaml.safe_load(data))) == []


@pytest.mark.parametrize("change", [
    {}, {"placement": "round_robin", "routing": "least-outstanding"},
    {"gpu": {"name": "b200", "memory_gib": 178}}, {"max_body_bytes": None},
    {"keys": [{"key_env": "K", "name": "a", "adapters": ["sql"], "rate_limit": 2}]},
    {"redis": "redis://r:6379/0"}, {"worker_engine": {"max_loras": 4}},
    {"actuator": {"kind": "command", "command": "scale {workers}"}},
])
def test_what_the_config_takes_the_schema_takes(change: dict[str, Any]) -> None:
    data = {**GOOD, **change}
    parse_config(data)
    assert list(validator().iter_errors(data)) == []


@pytest.mark.parametrize("change", [
    {"port": "80"}, {"port": 70000}, {"read_timeout_s": 0}, {"colour": "blue"},
    {"surge_replan": "yes"}, {"placement": "best"}, {"workers": [{"url": "http://x:1",
                                                                   "weight": 2}]},
    {"adapters": [{"name": "sql", "rank": 7, "rate": 1, "path": "/a"}]},
    {"keys": [{"name": "a"}]}, {"worker_engine": {"enable_lora": False}},
    {"worker_engine_given": []},
])
def test_what_the_config_refuses_the_schema_flags(change: dict[str, Any]) -> None:
    assert list(validator().iter_errors({**GOOD, **change})), change


def test_the_sections_are_those_the_parsers_take() -> None:
    """The schema's sections that lower layers parse by hand (the planner's adapters, the
    catalog's GPU, emulate:, keys, worker_engine) list exactly the fields they take."""
    props = config_schema()["properties"]

    def fields(node: dict[str, Any]) -> set[str]:
        return next(set(o["properties"]) for o in [node, *node.get("anyOf", [])]
                    if "properties" in o)

    assert fields(props["adapters"]["items"]) == inputs._FIELDS | {"path"}
    assert fields(props["gpu"]) == set(catalog._GPU_KEYS)
    assert fields(props["worker_engine"]) == set(ENGINE_FIELDS)
    assert fields(props["keys"]["items"]) == {"key", "key_env", "name", "adapters",
                                              "rate_limit", "burst"}
    assert fields(props["emulate"]) == {"count", "time_scale", "slowdown", "jitter", "seed"}
    assert props["emulate"]["anyOf"][0]["maximum"] == emulated.MAX_EMULATED
    taken = {f.name for f in dataclasses.fields(GatewayConfig)} - {"worker_engine_given"}
    assert set(props) == taken | {"emulate"}
