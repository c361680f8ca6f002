"""Scenario files (YAML): one worker's model, GPU, profile, engine options and workload.

Every invalid value raises ``ConfigError`` naming the field by its dotted path, e.g.
``engine.max_loras: must be an integer in [1, 16777216], got 0``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from twin.catalog import get_gpu, get_model, gpu_from_mapping
from twin.errors import ConfigError
from twin.profile import CalibrationProfile, load_profile
from twin.specs import EngineConfig, GpuSpec, ModelSpec, default_engine_for
from twin.workload import AdapterLoad, Arrival, ArrivalSpec, LengthDist, Workload, load_trace

__all__ = ["Scenario", "load_scenario", "parse_scenario"]

_TOP = {"model", "gpu", "profile", "engine", "adapters", "arrivals", "lengths", "duration_s",
        "seed", "name"}


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    name: str
    model: ModelSpec
    gpu: GpuSpec
    profile: CalibrationProfile
    engine: EngineConfig
    workload: Workload


def _mapping(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(field, f"must be a mapping, got {type(value).__name__}")
    return value


def _build(cls: Any, data: dict[str, Any], field: str, **extra: Any) -> Any:
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{field}.{unknown[0]}", f"unknown field; expected one of "
                          f"{sorted(names)}")
    try:
        return cls(**data, **extra)
    except ConfigError as exc:
        raise exc.nested(field) from None
    except TypeError as exc:
        raise ConfigError(field, str(exc)) from None


def _number(data: dict[str, Any], key: str, field: str, default: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{field}.{key}" if field else key, f"must be a number, got {value!r}")
    return float(value)


def _lengths(data: Any, field: str) -> LengthDist:
    d = dict(_mapping(data, field))
    if "values" in d:
        d["values"] = tuple(d["values"])
    return _build(LengthDist, d, field)  # type: ignore[no-any-return]


def _model(value: Any) -> ModelSpec:
    if isinstance(value, str):
        return get_model(value)
    return _build(ModelSpec, _mapping(value, "model"), "model")  # type: ignore[no-any-return]


def _gpu(value: Any) -> GpuSpec:
    if isinstance(value, str):
        return get_gpu(value)
    return gpu_from_mapping(_mapping(value, "gpu"))


def _adapters(value: Any) -> tuple[AdapterLoad, ...]:
    if isinstance(value, dict):  # generator: {count, ranks, rate_total, zipf?}
        count = int(_number(value, "count", "adapters", 0))
        ranks = value.get("ranks", [8])
        total = _number(value, "rate_total", "adapters", 1.0)
        skew = _number(value, "zipf", "adapters", 0.0)
        if count < 1:
            raise ConfigError("adapters.count", f"must be >= 1, got {count}")
        if not isinstance(ranks, list) or not ranks:
            raise ConfigError("adapters.ranks", "must be a non-empty list")
        weights = [1.0 / (i + 1) ** skew for i in range(count)]
        scale = total / sum(weights)
        return tuple(AdapterLoad(name=f"adapter-{i:03d}", rank=int(ranks[i % len(ranks)]),
                                 rate=w * scale) for i, w in enumerate(weights))
    if not isinstance(value, list) or not value:
        raise ConfigError("adapters", "must be a non-empty list or a generator mapping")
    out = []
    for i, item in enumerate(value):
        field = f"adapters[{i}]"
        d = dict(_mapping(item, field))
        lengths = d.pop("lengths", {})
        for key in ("input", "output"):
            if key in _mapping(lengths, f"{field}.lengths"):
                d[key] = _lengths(lengths[key], f"{field}.lengths.{key}")
        out.append(_build(AdapterLoad, d, field))
    return tuple(out)


def parse_scenario(data: Any, *, base_dir: Path | None = None) -> Scenario:
    """Validate a scenario mapping (as loaded from YAML)."""
    data = _mapping(data, "scenario")
    unknown = sorted(set(data) - _TOP)
    if unknown:
        raise ConfigError(unknown[0], f"unknown field; expected one of {sorted(_TOP)}")
    for key in ("model", "gpu", "adapters", "duration_s"):
        if key not in data:
            raise ConfigError(key, "is required")
    model = _model(data["model"])
    gpu = _gpu(data["gpu"])
    profile = load_profile(data.get("profile", "roofline-default"))
    engine_data = dict(_mapping(data.get("engine", {}), "engine"))
    engine_names = {f.name for f in fields(EngineConfig)}
    unknown = sorted(set(engine_data) - engine_names)
    if unknown:
        raise ConfigError(f"engine.{unknown[0]}", "unknown engine option")
    try:
        engine = default_engine_for(gpu, **engine_data)
    except ConfigError as exc:
        raise exc.nested("engine") from None
    arrivals = dict(_mapping(data.get("arrivals", {}), "arrivals"))
    trace: tuple[Arrival, ...] = ()
    if "trace" in arrivals:
        path = Path(arrivals.pop("trace"))
        trace = load_trace(path if path.is_absolute() or base_dir is None else base_dir / path)
    if "piecewise" in arrivals:
        arrivals["piecewise"] = tuple((float(p["at"]), float(p["scale"]))
                                      for p in arrivals["piecewise"])
    lengths = _mapping(data.get("lengths", {}), "lengths")
    duration = _number(data, "duration_s", "", 0)
    if duration <= 0:
        raise ConfigError("duration_s", f"must be > 0, got {duration}")
    workload = Workload(
        adapters=_adapters(data["adapters"]), duration_s=duration,
        seed=int(_number(data, "seed", "", 0)),
        arrivals=_build(ArrivalSpec, arrivals, "arrivals"),
        input=_lengths(lengths.get("input", {"dist": "fixed", "value": 512}), "lengths.input"),
        output=_lengths(lengths.get("output", {"dist": "fixed", "value": 128}),
                        "lengths.output"),
        trace=trace)
    for i, a in enumerate(workload.adapters):
        if a.rank > engine.max_lora_rank:
            raise ConfigError(f"adapters[{i}].rank", f"{a.rank} is above engine.max_lora_rank "
                              f"{engine.max_lora_rank}")
    return Scenario(name=str(data.get("name", "scenario")), model=model, gpu=gpu,
                    profile=profile, engine=engine, workload=workload)


def load_scenario(path: str | Path) -> Scenario:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError("scenario", f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError("scenario", f"invalid YAML: {exc}".splitlines()[0]) from None
    return parse_scenario(data, base_dir=path.parent)
