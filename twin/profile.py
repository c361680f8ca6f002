"""Calibration profiles: where a worker's timings come from, in one JSON file.

A profile records its source (hardware, model, vLLM version, date, citations), the raw
per-step samples it was fitted on, the fitted coefficients, a per-request overhead (HTTP,
tokenising) and adapter load times by size, so it can be refitted without measuring again.
Profiles ship as package data under ``twin/profiles/``; ``load_profile`` takes a bundled
name or a path (an explicit load, the only file access of the twin). One name is built in
rather than bundled: ``instant`` (``instant_profile``), a worker whose steps, request overhead
and adapter loads take no time at all, for measuring what sits in front of a worker (a
gateway's proxy overhead). It is not among ``bundled_profiles()``: those describe hardware and
have positive step times.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from twin.errors import ConfigError
from twin.memory import MemoryOverheads
from twin.specs import EngineConfig, GpuSpec, ModelSpec
from twin.step_time import (
    LinearCoefficients,
    LinearStepTime,
    LoRACoefficients,
    RooflineCoefficients,
    RooflineStepTime,
    StepTimeModel,
)

__all__ = ["INSTANT", "PROFILE_ALIASES", "CalibrationProfile", "LoadTimes", "bundled_profiles",
           "instant_profile", "load_profile", "save_profile"]

INSTANT = "instant"


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadTimes:
    """Adapter load time: ``latency + bytes / rate`` for disk->CPU and for CPU->GPU."""

    disk_latency_s: float = 0.02
    disk_bytes_per_s: float = 1.0e9
    cpu_to_gpu_latency_s: float = 0.005
    cpu_to_gpu_bytes_per_s: float = 20.0e9

    def disk_s(self, size_bytes: int) -> float:
        return self.disk_latency_s + size_bytes / self.disk_bytes_per_s

    def cpu_to_gpu_s(self, size_bytes: int) -> float:
        return self.cpu_to_gpu_latency_s + size_bytes / self.cpu_to_gpu_bytes_per_s


@dataclass(frozen=True, slots=True, kw_only=True)
class CalibrationProfile:
    """Everything that times a worker. ``kind`` is ``roofline`` or ``linear``."""

    name: str
    kind: str
    source: dict[str, Any]
    roofline: RooflineCoefficients | None = None
    linear: LinearCoefficients | None = None
    memory: MemoryOverheads = MemoryOverheads()
    load: LoadTimes = LoadTimes()
    request_overhead_s: float = 0.0
    #: Engine time each request takes from its worker's steps (on a CPU server the API
    #: process, which handles the request, shares the engine's core).
    request_cpu_s: float = 0.0
    samples: list[dict[str, float]] = field(default_factory=list, compare=False)

    def __post_init__(self) -> None:
        if self.kind == "roofline" and self.roofline is None:
            raise ConfigError("roofline", "a roofline profile needs its coefficients")
        if self.kind == "linear" and self.linear is None:
            raise ConfigError("linear", "a linear profile needs its coefficients")
        if self.kind not in ("roofline", "linear"):
            raise ConfigError("kind", f"must be 'roofline' or 'linear', got {self.kind!r}")

    def step_model(self, model: ModelSpec, gpu: GpuSpec, engine: EngineConfig) -> StepTimeModel:
        if self.kind == "linear":
            assert self.linear is not None
            if engine.tensor_parallel_size > 1:
                raise ConfigError("engine.tensor_parallel_size", (
                    f"profile {self.name!r} was fitted on one device's measured steps; "
                    "tensor parallelism needs a roofline profile"))
            return LinearStepTime(self.linear, engine)
        assert self.roofline is not None
        return RooflineStepTime(model, gpu, engine, self.roofline)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CalibrationProfile:
        try:
            d = dict(data)
            if d.get("roofline") is not None:
                r = dict(d["roofline"])
                r["lora"] = LoRACoefficients(**r.get("lora", {}))
                d["roofline"] = RooflineCoefficients(**r)
            if d.get("linear") is not None:
                lin = dict(d["linear"])
                lin["lora"] = LoRACoefficients(**lin.get("lora", {}))
                d["linear"] = LinearCoefficients(**lin)
            d["memory"] = MemoryOverheads(**d.get("memory", {}))
            d["load"] = LoadTimes(**d.get("load", {}))
            return cls(**d)
        except TypeError as exc:  # unknown or missing keys
            raise ConfigError("profile", str(exc)) from None


def bundled_profiles() -> list[str]:
    """Names of the profiles shipped with lorafleet."""
    files = resources.files("twin") / "profiles"
    return sorted(p.name.removesuffix(".json") for p in files.iterdir()
                  if p.name.endswith(".json"))


def instant_profile() -> CalibrationProfile:
    """A zero-latency worker: every step, the per-request overhead and adapter loads take 0 s.

    Examples
    --------
    >>> from twin.catalog import get_gpu, get_model
    >>> from twin.specs import EngineConfig
    >>> p = instant_profile()
    >>> m = p.step_model(get_model("llama-3.1-8b"), get_gpu("a100-80gb"), EngineConfig())
    >>> m.predict(2048.0, 256.0, 1e6, 8.0), p.request_overhead_s, p.load.disk_s(10**9)
    (0.0, 0.0, 0.0)
    """
    return CalibrationProfile(
        name=INSTANT, kind="linear",
        source={"note": "zero-latency worker for proxy-overhead benchmarks (not hardware)"},
        linear=LinearCoefficients(base_s=0.0, per_token_s=0.0),
        load=LoadTimes(disk_latency_s=0.0, disk_bytes_per_s=math.inf, cpu_to_gpu_latency_s=0.0,
                       cpu_to_gpu_bytes_per_s=math.inf),
        request_overhead_s=0.0)


# Short names of bundled profiles (the issues and scenario examples write ``roofline``).
PROFILE_ALIASES = {"roofline": "roofline-default"}


def load_profile(name_or_path: str | Path) -> CalibrationProfile:
    """Load a bundled profile by name (or a ``PROFILE_ALIASES`` short name), ``instant``
    (``instant_profile``), or a profile JSON file by path.

    Examples
    --------
    >>> load_profile("roofline") == load_profile("roofline-default")
    True
    """
    if name_or_path == INSTANT:
        return instant_profile()
    path = Path(name_or_path)
    if path.suffix == ".json" or path.exists():
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError("profile", f"cannot read {path}: {exc.strerror}") from None
    else:
        name = PROFILE_ALIASES.get(str(name_or_path), str(name_or_path))
        res = resources.files("twin") / "profiles" / f"{name}.json"
        if not res.is_file():
            raise ConfigError("profile", f"unknown profile {str(name_or_path)!r}; bundled: "
                              f"{bundled_profiles()} or {INSTANT!r}")
        text = res.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError("profile", f"invalid JSON: {exc}") from None
    return CalibrationProfile.from_dict(data)


def save_profile(profile: CalibrationProfile, path: str | Path) -> None:
    Path(path).write_text(json.dumps(profile.to_dict(), indent=1) + "\n")
