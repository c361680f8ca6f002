"""The gateway's configuration: one frozen dataclass tree, loaded from ``gateway.yaml``.

Every invalid value raises ``twin.errors.ConfigError`` naming its dotted field (the CLI prints
it on one line, exit status 2; ``LORAFLEET_<FIELD>`` overrides one: ``config_env.py``)::

    base_model: llama-3.1-8b          # the name clients send, as the workers serve it
    workers:                          # static worker URLs (or discovery, or emulate)
      - {url: "http://10.0.0.1:8000", name: w0}
    discovery:                        # the ready pods of a StatefulSet, listed every interval_s
      {kind: kubernetes, selector: app.kubernetes.io/name=vllm, port: 8000, interval_s: 10}
    emulate: {count: 4, time_scale: 1, slowdown: 1.0, jitter: 0.0}   # in-process emulated
                                      # workers (`lorafleet serve` only; adapters may omit path)
    actuator: {kind: kubernetes, statefulset: vllm}   # or {kind: command, command: "... {workers}"}
    worker_engine:                    # what workers the gateway did not start run with, as
      {max_loras: 8, max_cpu_loras: 32, max_lora_rank: 32}   # they do not report (else defaults)
    adapters:                         # the planner's format, plus the path workers load from
      - {name: sql, rank: 8, rate: 2.0, input_tokens: 512, output_tokens: 128, path: /ad/sql}
    placement: planner                # or round-robin
    routing: placement                # least-outstanding, round-robin or prefer-loaded
    gpu: a100-80gb                    # what the planner assumes the workers run on
    model: llama-3.1-8b               # the model the twin plans for (lorafleet's --model)
    profile: roofline-default
    host: 127.0.0.1
    port: 8080
    max_model_len: 8192               # the body limit is derived from it
    max_body_bytes: null              # or an explicit limit
    client_header_timeout_s: 10       # a request's head must arrive within it
    client_body_timeout_s: 60         # its body within it after the head
    client_max_connections: 8192      # open client connections in all (past it: 503, closed)
    client_max_connections_per_address: 1024   # from one IP (0: no limit; behind an ingress
                                      # every client shares its address)
    connect_timeout_s: 5
    read_timeout_s: 600
    load_timeout_s: 60
    health_interval_s: 2
    retry_after_s: 1
    max_outstanding_per_worker: 512   # 429 when every healthy holder has this many (0: no cap)
    prefix_affinity_chars: 256        # prompt characters hashed for prefix affinity (0: off)
    replan_interval_s: 60             # 0: re-plan only on demand (admin, drain, worker down)
    observe_window_s: 60              # rates and lengths the re-plan uses
    move_budget: 8                    # adapters one periodic re-plan may move
    surge_replan: true                # re-plan at once when an adapter's load jumps
    starvation_guard: true            # re-plan at once when a worker starves requests
    ttft_bound_s: 10                  # the TTFT the guard holds workers to (workers' time)
    retire_margin: 0.85               # hysteresis: slack needed before a worker is emptied
    validate_replans: true            # check each re-plan in the cluster twin
    headroom: 0.9                     # plan GPUs for load / headroom (lower: more latency slack)
    search_seconds: 1                 # the placer's improvement search, per plan
    time_scale: 1                     # emulated workers this much faster than real time
    tensor_parallel_size: 1           # GPUs of each worker (vLLM's): GPUs = workers x it
    train_target: true                # not the shipped surrogate's target: train its own
    keys:                             # client API keys; none: an open gateway
      - {key_env: TEAM_A_KEY, name: team-a, adapters: [sql, chat], rate_limit: 5}
      - {key: sk-literal, name: ops, adapters: "*", rate_limit: 50, burst: 100}
    worker_api_key_env: VLLM_API_KEY  # sent to the workers as Authorization: Bearer
    admin_token_env: LORAFLEET_ADMIN_TOKEN   # the admin API's bearer token (unset: 403)
    metrics_token_env: LORAFLEET_METRICS_TOKEN  # GET /metrics needs it as a bearer token
                                      # (unset in the config: /metrics is open)
    state_file: /var/lib/lorafleet/state.json  # placement + registry, restored at start-up
    drain_timeout_s: 30               # SIGTERM: how long in-flight requests may finish
    redis: {url: "redis://redis:6379/0"}   # replicas on shared state (gateway/config/redis.py)

Examples
--------
>>> cfg = parse_config({"base_model": "b", "workers": [{"url": "http://127.0.0.1:8001"}],
...                     "adapters": [{"name": "sql", "rank": 8, "rate": 1, "path": "/a"}]})
>>> cfg.workers[0].name, cfg.adapters[0].demand.rank, cfg.body_limit
('w0', 8, 524288)
>>> parse_config({"base_model": "b", "workers": [{"url": "ftp://x"}], "adapters": []})
Traceback (most recent call last):
...
twin.errors.ConfigError: workers[0].url: must be an http:// or https:// URL, got 'ftp://x'
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from gateway.config.engine import configured_engine, fallback_engine
from gateway.config.entries import AdapterEntry, AdapterOrigin, parse_entries
from gateway.config.fleet import ActuatorSpec, DiscoverySpec, parse_actuator, parse_discovery
from gateway.config.keys import KeySpec, parse_keys
from gateway.config.redis import RedisConfig, parse_redis
from gateway.config.validation import MAX_SECONDS
from gateway.names import member
from planner import (
    DEFAULT_GPU,
    DEFAULT_MODEL,
    DEFAULT_PROFILE,
    MAX_TOKENS,
    PlannerConfig,
    Target,
)
from twin.catalog import gpu_from_mapping, gpu_ref
from twin.errors import ConfigError
from twin.routing import RoutingPolicy
from twin.specs import EngineConfig

__all__ = ["AdapterEntry", "AdapterOrigin", "GatewayConfig", "PlacementMode", "WorkerEndpoint",
           "load_config", "parse_config", "read_config"]

_SECURITY = ("keys", "worker_api_key_env", "admin_token_env", "metrics_token_env", "state_file")
_FLEET = ("discovery", "actuator", "worker_engine", "redis")  # fleet.py, engine.py, redis.py
# Every number of the config, bounded (name: low, high, low excluded): no value an admin can
# give overflows a computation or asks for resources no machine has.
_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "max_model_len": (0, MAX_TOKENS, True), "connect_timeout_s": (0, MAX_SECONDS, True),
    "read_timeout_s": (0, MAX_SECONDS, True), "load_timeout_s": (0, MAX_SECONDS, True),
    "health_interval_s": (0, MAX_SECONDS, True), "retry_after_s": (0, 3600, True),
    "max_connections": (0, 1_000_000, True), "observe_window_s": (0, MAX_SECONDS, True),
    "time_scale": (0, 10_000, True), "drain_timeout_s": (0, MAX_SECONDS, True),
    "replan_interval_s": (0, MAX_SECONDS, False),
    "max_outstanding_per_worker": (0, 1_000_000, False),
    "prefix_affinity_chars": (0, 1 << 20, False), "move_budget": (0, 100_000, False),
    "headroom": (0, 1, True), "retire_margin": (0, 1, True),
    "search_seconds": (0, 600, False), "tensor_parallel_size": (1, 64, False),
    "ttft_bound_s": (0, MAX_SECONDS, True),
    "max_body_bytes": (1024, 1 << 30, False),
    "client_header_timeout_s": (0, 3600, True), "client_body_timeout_s": (0, 3600, True),
    "client_max_connections": (0, 1_000_000, True),
    "client_max_connections_per_address": (0, 1_000_000, False),
}

BYTES_PER_TOKEN = 64  # JSON-escaped text runs to a few bytes a token; 16x margin over ~4


class PlacementMode(enum.StrEnum):
    """How the initial placement is made."""

    PLANNER = "planner"
    ROUND_ROBIN = "round-robin"


@dataclass(frozen=True, slots=True)
class WorkerEndpoint:
    """A vLLM worker the gateway routes to."""

    name: str
    url: str


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayConfig:
    """Everything ``create_app`` needs."""
    base_model: str
    workers: tuple[WorkerEndpoint, ...]
    adapters: tuple[AdapterEntry, ...]
    placement: PlacementMode = PlacementMode.PLANNER
    routing: RoutingPolicy = RoutingPolicy.PLACEMENT
    gpu: str = DEFAULT_GPU
    model: str = DEFAULT_MODEL
    profile: str = DEFAULT_PROFILE
    host: str = "127.0.0.1"
    port: int = 8080
    max_model_len: int = 8192
    max_body_bytes: int | None = None
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 600.0
    load_timeout_s: float = 60.0
    health_interval_s: float = 2.0
    retry_after_s: int = 1
    max_connections: int = 1024  # connections to each worker (the upstream pool)
    # what clients may hold of the gateway's listener (gateway/server/listener.py)
    client_header_timeout_s: float = 10.0  # for a request's head (nginx's, from the connection)
    client_body_timeout_s: float = 60.0  # and its body within it after the head
    client_max_connections: int = 8192  # open client connections in all (then 503, closed)
    client_max_connections_per_address: int = 1024  # from one IP address (0: no limit)
    max_outstanding_per_worker: int = 512  # 0: unlimited; else 429 when all holders are full
    prefix_affinity_chars: int = 256  # 0: no prefix affinity
    # re-planning (gateway/server/replanner.py)
    replan_interval_s: float = 60.0  # 0: only on POST /admin/replan, a drain or a worker down
    observe_window_s: float = 60.0  # the observer's sliding window
    move_budget: int = 8  # adapters a periodic re-plan may move beyond forced moves
    # with periodic re-planning on, re-plan at once: an adapter's traffic jumps above its
    # planned rate (observer.py, ``Observer.surging``); a worker starves requests (guard.py)
    surge_replan: bool = True
    starvation_guard: bool = True
    ttft_bound_s: float = 10.0  # the guard's TTFT bound, in the workers' time
    retire_margin: float = 0.85  # slack a worker's load must leave for another to retire
    validate_replans: bool = True  # check each re-plan in the cluster twin
    headroom: float = 0.9  # plan each GPU for its offered load / headroom (latency slack)
    search_seconds: float = 1.0  # the placer's improvement search per plan (planner/improve.py)
    time_scale: float = 1.0  # emulated workers run this much faster than the profile
    tensor_parallel_size: int = 1  # GPUs of each worker (vLLM's flag): GPUs = workers x it
    train_target: bool = True  # another target: train its own (server/target_training.py)
    # keys, admin API, state, shutdown (gateway/server/auth.py, admin.py, state.py)
    keys: tuple[KeySpec, ...] = ()
    worker_api_key_env: str | None = None
    admin_token_env: str = "LORAFLEET_ADMIN_TOKEN"
    metrics_token_env: str | None = None  # set: GET /metrics needs this bearer token
    state_file: str | None = None
    drain_timeout_s: float = 30.0
    # the fleet's size and source (specs: gateway/server/kube.py builds them at start-up)
    discovery: DiscoverySpec | None = None  # set: workers come (and go) from Kubernetes
    actuator: ActuatorSpec | None = None  # None: no actuator (retired workers stay up, idle)
    redis: RedisConfig | None = None  # None: one gateway process (no replicas)
    worker_engine: EngineConfig | None = None  # None: the initial plan's (emulated workers)
    # The worker_engine options the file states (the rest are defaults): a worker that
    # reports another value is a start-up error (gateway/server/worker_settings.py).
    worker_engine_given: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        if not self.base_model:
            raise ConfigError("base_model", "must be a non-empty string")
        if not self.workers and self.discovery is None:
            raise ConfigError("workers", "must be a non-empty list")
        names = [w.name for w in self.workers]
        if len(set(names)) != len(names):
            raise ConfigError("workers", f"names must be unique, got {names}")
        seen: set[str] = set()
        for i, a in enumerate(self.adapters):
            if a.demand.name in seen:
                raise ConfigError(f"adapters[{i}].name", f"duplicate {a.demand.name!r}")
            if a.demand.name == self.base_model and not a.demand.is_base:
                raise ConfigError(f"adapters[{i}].name", "conflicts with base_model")
            seen.add(a.demand.name)
            if not a.demand.is_base and not a.path:
                raise ConfigError(f"adapters[{i}].path", "is required for a LoRA adapter")
        if not 0 <= self.port <= 65535:
            raise ConfigError("port", f"must be in 0..65535, got {self.port}")
        for name, (low, high, open_low) in _BOUNDS.items():
            value = getattr(self, name)
            if value is None and name == "max_body_bytes":
                continue
            if not (math.isfinite(value) and (low < value if open_low else low <= value)
                    and value <= high):
                shown = f"{value:g}" if isinstance(value, float) else repr(value)
                raise ConfigError(name, f"must be in {'(' if open_low else '['}{low:g}, "
                                  f"{high:g}], got {shown}")

    @property
    def body_limit(self) -> int:
        """Largest request body accepted (413 past it): from ``max_model_len`` unless set."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return max(64 * 1024, self.max_model_len * BYTES_PER_TOKEN)


_SCALARS = {f.name for f in fields(GatewayConfig)} - {"workers", "adapters", *_SECURITY,
                                                       *_FLEET, "worker_engine_given"}


def _worker(item: Any, i: int) -> WorkerEndpoint:
    field = f"workers[{i}]"
    if isinstance(item, str):
        item = {"url": item}
    if not isinstance(item, dict):
        raise ConfigError(field, "must be a URL or a mapping {url, name?}")
    unknown = sorted(set(item) - {"url", "name"})
    if unknown:
        raise ConfigError(f"{field}.{unknown[0]}", "unknown field; expected url, name")
    url = item.get("url")
    parts = urlsplit(url) if isinstance(url, str) else None
    if (not isinstance(url, str) or parts is None or parts.scheme not in ("http", "https")
            or not parts.netloc):
        raise ConfigError(f"{field}.url", f"must be an http:// or https:// URL, got {url!r}")
    name = item.get("name", f"w{i}")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{field}.name", "must be a non-empty string")
    return WorkerEndpoint(name, url.rstrip("/"))


_STRINGS = frozenset({"base_model", "gpu", "model", "profile", "host"})
_INTS = frozenset({"port", "max_model_len", "max_body_bytes", "retry_after_s",
                   "max_connections", "move_budget", "max_outstanding_per_worker",
                   "prefix_affinity_chars", "client_max_connections",
                   "client_max_connections_per_address", "tensor_parallel_size"})
_BOOLS = frozenset({"validate_replans", "surge_replan", "starvation_guard", "train_target"})


def _scalar(key: str, value: Any) -> Any:
    if key in ("placement", "routing"):  # round-robin or round_robin (gateway/names.py)
        try:
            return member(PlacementMode if key == "placement" else RoutingPolicy, value)
        except ValueError as exc:
            raise ConfigError(key, str(exc)) from None
    if key == "max_body_bytes" and value is None:
        return None
    if key == "gpu" and isinstance(value, dict):  # the GPU's own spec: carried as its JSON
        gpu_from_mapping(value)
        return gpu_ref(value)
    if key in _STRINGS:
        if not isinstance(value, str):
            raise ConfigError(key, f"must be a string{' or a mapping' if key == 'gpu' else ''}"
                              f", got {value!r}")
        return value
    if key in _BOOLS:
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return value
    if key in _INTS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(key, f"must be a number, got {value!r}")
    return float(value)


def _security(data: dict[str, Any]) -> dict[str, Any]:
    """``keys`` and the ``_SECURITY`` strings (``create_app`` reads the secrets they name)."""
    out: dict[str, Any] = {}
    if data.get("keys") is not None:
        out["keys"] = parse_keys(data["keys"])
    for key in _SECURITY[1:]:
        value = data.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise ConfigError(key, f"must be a non-empty string, got {value!r}")
        out[key] = value
    return out


def parse_config(data: Any) -> GatewayConfig:
    """A ``GatewayConfig`` from parsed YAML; ``ConfigError`` names the first bad field."""
    if not isinstance(data, dict):
        raise ConfigError("", "the config must be a mapping")
    unknown = sorted(set(data) - _SCALARS - {"workers", "adapters", *_SECURITY, *_FLEET})
    if unknown:
        raise ConfigError(unknown[0], "unknown field")
    if "base_model" not in data:
        raise ConfigError("base_model", "is required")
    if data.get("discovery") is not None and "workers" in data:
        raise ConfigError("discovery", "give either workers (static URLs) or discovery, "
                          "not both")
    workers: Any = []
    if data.get("discovery") is None:
        if "workers" not in data:
            raise ConfigError("workers", "is required (or discovery: {kind: kubernetes, ...})")
        workers = data["workers"]
        if not isinstance(workers, list) or not workers:
            raise ConfigError("workers", "must be a non-empty list of {url, name?}")
    values = {k: _scalar(k, v) for k, v in data.items() if k in _SCALARS}
    check_specs(values)
    values.update(_security(data))
    adapters = parse_entries(data.get("adapters", []))
    values.update(_fleet(data, adapters, values))
    return GatewayConfig(workers=tuple(_worker(w, i) for i, w in enumerate(workers)),
                         adapters=adapters, **values)


def check_specs(values: dict[str, Any]) -> None:
    """``gpu``, ``model`` and ``profile`` name what the planner knows (else every re-plan
    would fail later, in the planning process), and the model runs on
    ``tensor_parallel_size`` of those GPUs: ``ConfigError`` naming the field."""
    target = Target.resolve(values.get("model", DEFAULT_MODEL),
                            values.get("gpu", DEFAULT_GPU),
                            values.get("profile", DEFAULT_PROFILE))
    tp = values.get("tensor_parallel_size", 1)
    if not 1 <= tp <= 64:
        raise ConfigError("tensor_parallel_size", f"must be in [1, 64], got {tp}")
    target.check_fits(PlannerConfig(max_model_len=values.get("max_model_len", 8192),
                                    tensor_parallel_size=tp))


def _fleet(data: dict[str, Any], adapters: tuple[AdapterEntry, ...],
           values: dict[str, Any]) -> dict[str, Any]:
    """``discovery``, ``actuator``, ``redis`` and ``worker_engine`` (workers' fixed
    options: as given, else ``engine.fallback_engine``'s)."""
    out: dict[str, Any] = {}
    if data.get("actuator") is not None:
        out["actuator"] = parse_actuator(data["actuator"])
    if data.get("redis") is not None:
        out["redis"] = parse_redis(data["redis"], host=values.get("host", "127.0.0.1"),
                                   port=values.get("port", 8080))
    if data.get("discovery") is not None:
        out["discovery"] = parse_discovery(data["discovery"])
    base = fallback_engine([a.demand for a in adapters], values.get("gpu", DEFAULT_GPU),
                           values.get("max_model_len", 8192),
                           values.get("tensor_parallel_size", 1))
    out["worker_engine"], out["worker_engine_given"] = configured_engine(
        data.get("worker_engine") or {}, base)
    return out


def read_config(path: str | Path) -> Any:
    """``gateway.yaml`` parsed, not yet validated; ``ConfigError`` if unreadable."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError("config", f"invalid YAML: {exc}".splitlines()[0]) from None


def load_config(path: str | Path) -> GatewayConfig:
    """Read and validate ``gateway.yaml``."""
    return parse_config(read_config(path))
