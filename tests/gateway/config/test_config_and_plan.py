"""``gateway.yaml`` validation (each error names its field) and the initial plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import PlacementMode, load_config, parse_config
from gateway.control.planning import from_planner, round_robin
from planner import Target
from planner.demand import AdapterDemand
from twin.catalog import get_gpu
from twin.errors import ConfigError
from twin.routing import BASE_MODEL

GOOD: dict[str, Any] = {
    "base_model": "llama", "workers": [{"url": "http://10.0.0.1:8000", "name": "a"},
                                       "http://10.0.0.2:8000/"],
    "adapters": [{"name": "sql", "rank": 8, "rate": 2.0, "path": "/ad/sql"},
                 {"name": "base", "rank": 0, "rate": 1.0}],
    "placement": "round-robin", "port": 9000, "health_interval_s": 1}


def test_good_config(tmp_path: Path) -> None:
    import yaml
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    cfg = load_config(path)
    assert [w.name for w in cfg.workers] == ["a", "w1"]
    assert cfg.workers[1].url == "http://10.0.0.2:8000"
    assert cfg.placement is PlacementMode.ROUND_ROBIN and cfg.port == 9000
    assert cfg.health_interval_s == 1.0 and cfg.adapters[1].path is None
    assert cfg.search_seconds == 1.0
    assert parse_config({**GOOD, "search_seconds": 0}).search_seconds == 0.0


@pytest.mark.parametrize(("change", "field"), [
    ({"workers": []}, "workers"),
    ({"workers": [{"url": "10.0.0.1:8000"}]}, "workers[0].url"),
    ({"workers": [{"url": "http://x:1", "weight": 2}]}, "workers[0].weight"),
    ({"adapters": [{"name": "sql", "rank": 8, "rate": 1}]}, "adapters[0].path"),
    ({"adapters": [{"name": "sql", "rank": 7, "rate": 1, "path": "/a"}]}, "adapters[0].rank"),
    ({"adapters": [{"name": "sql", "rank": 8, "rate": -1, "path": "/a"}]}, "adapters[0].rate"),
    ({"placement": "best"}, "placement"),
    ({"routing": "random"}, "routing"),
    ({"port": "80"}, "port"),
    ({"port": 70000}, "port"),
    ({"read_timeout_s": 0}, "read_timeout_s"),
    ({"max_body_bytes": 10}, "max_body_bytes"),
    ({"surge_replan": "yes"}, "surge_replan"),
    ({"colour": "blue"}, "colour"),
    # Every number bounded: one absurd value must not overflow a re-plan or a timer.
    ({"adapters": [{"name": "sql", "rank": 8, "rate": 1e308, "path": "/a"}]},
     "adapters[0].rate"),
    ({"adapters": [{"name": "sql", "rank": 8, "rate": 1, "output_tokens": 1e9, "path": "/a"}]},
     "adapters[0].output_tokens"),
    ({"adapters": [{"name": "..", "rank": 8, "rate": 1, "path": "/a"}]}, "adapters[0].name"),
    ({"read_timeout_s": 1e308}, "read_timeout_s"),
    ({"replan_interval_s": float("inf")}, "replan_interval_s"),
    ({"max_model_len": 10**12}, "max_model_len"),
    ({"max_body_bytes": 1 << 40}, "max_body_bytes"),
    ({"time_scale": 1e9}, "time_scale"),
    ({"client_header_timeout_s": 0}, "client_header_timeout_s"),
    ({"client_max_connections_per_address": -1}, "client_max_connections_per_address"),
    ({"keys": [{"key": "k", "name": "a", "rate_limit": 1e308}]}, "keys[0].rate_limit"),
    ({"worker_engine": {"max_loras": 10**15}}, "worker_engine.max_loras"),
    ({"gpu": "b200"}, "gpu"),
    ({"gpu": {"name": "b200"}}, "gpu.memory_gib"),
    ({"gpu": 7}, "gpu"),
    ({"model": "gpt-5"}, "model"),
    ({"profile": "fast"}, "profile"),
    ({"search_seconds": -1}, "search_seconds"),
    ({"search_seconds": 1e9}, "search_seconds"),
])
def test_bad_field_is_named(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({**GOOD, **change})
    assert info.value.field == field


def test_missing_base_model_and_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="base_model: is required"):
        parse_config({"workers": GOOD["workers"]})
    with pytest.raises(ConfigError, match="config: cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_the_gpu_and_model_can_be_the_users_own() -> None:
    """gateway.yaml takes a GPU's own spec, as scenario files do, and a model's config.json:
    the config carries the spec as JSON, which every process it is handed to reads back."""
    models = Path(__file__).resolve().parents[2] / "data" / "models"
    spec = {"name": "b200", "memory_gib": 178, "tflops": 2250, "bandwidth_gbps": 8000}
    cfg = parse_config({**GOOD, "gpu": spec, "model": str(models / "Qwen3-8B")})
    assert get_gpu(cfg.gpu) == get_gpu(spec)
    target = Target.resolve(cfg.model, cfg.gpu, cfg.profile)
    assert (target.gpu.name, target.model.num_params) == ("b200", 8_190_735_360)


def test_body_limit_follows_max_model_len() -> None:
    cfg = parse_config({**GOOD, "max_model_len": 32768})
    assert cfg.body_limit == 32768 * 64
    assert parse_config({**GOOD, "max_body_bytes": 4096}).body_limit == 4096


def test_round_robin_spreads_loras_and_base() -> None:
    ads = [AdapterDemand(name=n, rank=r, rate=1.0) for n, r in
           (("a", 8), ("b", 16), ("c", 8), ("base", 0))]
    plan = round_robin(ads, ["w0", "w1"], max_model_len=2048)
    assert [dict(w.shares) for w in plan.placement.workers] == [
        {"a": 1.0, "c": 1.0, BASE_MODEL: 0.5}, {"b": 1.0, BASE_MODEL: 0.5}]
    assert plan.engines[1].max_lora_rank == 16 and plan.engines[0].max_loras == 2


class _Stub:
    """A surrogate that accepts at most ``per_gpu`` adapters on a GPU."""

    def __init__(self, per_gpu: int) -> None:
        self.per_gpu = per_gpu
        self.starvation = self
        self.throughput = self

    def predict_proba_one(self, x: dict[str, float]) -> float:
        return 0.0 if x["served_adapters"] <= self.per_gpu else 1.0

    def predict_one(self, x: dict[str, float]) -> float:
        return 1e9


def test_planner_plan_maps_gpus_onto_workers() -> None:
    ads = [AdapterDemand(name=n, rank=8, rate=0.5) for n in "abcd"]
    plan = from_planner(ads, ["w0", "w1", "w2"], _Stub(4))  # type: ignore[arg-type]
    assert plan.planned_gpus == 1 and plan.gpus_active == 1
    assert set(plan.placement.workers[0].shares) == set("abcd")
    folded = from_planner(ads, ["w0", "w1"], _Stub(1))  # type: ignore[arg-type]
    assert folded.planned_gpus == 4 and folded.gpus_active == 2
    assert sorted(len(w.shares) for w in folded.placement.workers) == [2, 2]
    # CPU LoRA room for twice the adapters each starts with (re-plans can move more in)
    assert [e.cpu_loras for e in plan.engines[:1]] == [8]
    assert all(e.cpu_loras >= 4 for e in folded.engines)
    tight = from_planner(ads, ["w0"], _Stub(4), cpu_lora_room=1.0)  # type: ignore[arg-type]
    assert tight.engines[0].cpu_loras == 4


def test_the_short_roofline_profile_name_is_accepted() -> None:
    assert parse_config({**GOOD, "profile": "roofline"}).profile == "roofline"
