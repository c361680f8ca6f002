"""The gateway's configuration, ``GatewayConfig``: a frozen pydantic dataclass tree (its
sections: ``entries``, ``keys``, ``engine``, ``fleet``, ``redis``), read from
``gateway.yaml`` by ``loading.parse_config``; ``schema.py`` writes its JSON Schema for editors
(``deploy/gateway.schema.json``).

Every invalid value raises ``twin.errors.ConfigError`` naming its dotted field (the CLI prints
it on one line, exit status 2; ``LORAFLEET_<FIELD>`` overrides one: ``env.py``)::

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
"""

from __future__ import annotations

import enum
from functools import partial
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    InstanceOf,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
)
from pydantic.dataclasses import dataclass
from pydantic.json_schema import SkipJsonSchema, WithJsonSchema

from gateway.config.engine import ENGINE_SCHEMA
from gateway.config.entries import ADAPTER_SCHEMA, AdapterEntry, AdapterOrigin, parse_entries
from gateway.config.fleet import ActuatorSpec, DiscoverySpec
from gateway.config.keys import KEY_SCHEMA, KeySpec, parse_keys
from gateway.config.redis import RedisConfig
from gateway.config.validation import MAX_SECONDS, NonEmpty, Range, Seconds
from gateway.names import member
from planner import DEFAULT_GPU, DEFAULT_MODEL, DEFAULT_PROFILE, MAX_TOKENS
from twin.catalog import gpu_from_mapping, gpu_ref
from twin.errors import ConfigError
from twin.routing import RoutingPolicy
from twin.specs import EngineConfig

__all__ = ["BYTES_PER_TOKEN", "AdapterEntry", "AdapterOrigin", "GatewayConfig", "PlacementMode",
           "WorkerEndpoint"]

BYTES_PER_TOKEN = 64  # JSON-escaped text runs to a few bytes a token; 16x margin over ~4
_FROZEN = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


class PlacementMode(enum.StrEnum):
    """How the initial placement is made."""

    PLANNER = "planner"
    ROUND_ROBIN = "round-robin"


@dataclass(frozen=True, slots=True, config=_FROZEN)
class WorkerEndpoint:
    """A vLLM worker the gateway routes to."""

    name: NonEmpty
    url: StrictStr

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"must be an http:// or https:// URL, got {url!r}")
        return url.rstrip("/")


# -- how gateway.yaml gives the fields a lower layer parses ---------------------------------

def _workers(value: Any) -> Any:
    """URLs or ``{url, name?}`` mappings, named ``w<i>`` by default."""
    if not isinstance(value, list | tuple):
        raise ConfigError("workers", "must be a non-empty list of {url, name?}")
    out = []
    for i, item in enumerate(value):
        item = {"url": item} if isinstance(item, str) else item
        if isinstance(item, dict):
            item = {"name": f"w{i}", **item}
        elif not isinstance(item, WorkerEndpoint):
            raise ConfigError(f"workers[{i}]", "must be a URL or a mapping {url, name?}")
        out.append(item)
    return tuple(out)


def _parsed(kind: type, parse: Any, value: Any) -> Any:
    """``value`` as it is when it holds ``kind`` already, else parsed from gateway.yaml's
    shape by a section's parser (``ConfigError`` naming the field)."""
    if isinstance(value, tuple) and all(isinstance(v, kind) for v in value):
        return value
    return parse(value)


def _keys(value: Any) -> tuple[KeySpec, ...]:
    return () if value is None else parse_keys(value)  # ``keys:`` with nothing: none


def _gpu(value: Any) -> Any:
    """A bundled GPU's name, or its own spec (carried as JSON: ``twin.catalog.gpu_ref``)."""
    if isinstance(value, dict):
        gpu_from_mapping(value)
        return gpu_ref(value)
    if not isinstance(value, str):
        raise ValueError(f"must be a string or a mapping, got {value!r}")
    return value


def _choices(kind: type[enum.StrEnum], text: str) -> WithJsonSchema:
    """Either spelling of each choice, hyphens first (``gateway/names.py``)."""
    names = [str(m.value).replace("_", "-") for m in kind]
    names += [n.replace("-", "_") for n in names if "-" in n]
    return WithJsonSchema({"enum": names, "description": text})


def _optional(schema: dict[str, Any]) -> WithJsonSchema:
    return WithJsonSchema({"anyOf": [schema, {"type": "null"}], "default": None})


_URL = {"type": "string", "pattern": "^https?://", "description": "http(s)://host:port"}
_WORKERS = {"type": "array", "minItems": 1, "description": "static worker URLs (or "
            "discovery, or emulate)", "items": {"anyOf": [_URL, {
                "type": "object", "additionalProperties": False, "required": ["url"],
                "properties": {"url": _URL, "name": {"type": "string", "minLength": 1,
                                                     "description": "default: w<index>"}}}]}}
_ADAPTERS = {"type": "array", "items": ADAPTER_SCHEMA, "description": "the planner's format, "
             "plus the path the workers load each adapter from"}
_GPU = {"anyOf": [
    {"type": "string", "description": "a bundled GPU (lorafleet plan --help lists them)"},
    {"type": "object", "required": ["name", "memory_gib"], "additionalProperties": False,
     "description": "a GPU's own spec", "properties": {
         "name": {"type": "string", "minLength": 1}, "memory_gib": {"type": "number"},
         **{k: {"type": "number"} for k in ("tflops", "peak_tflops", "bandwidth_gbps",
                                           "interconnect_gbps", "kv_cache_space_gib")}}}],
    "default": DEFAULT_GPU, "description": "what the planner assumes the workers run on"}
_REDIS = {"anyOf": [{"type": "string", "pattern": "^(redis|rediss|unix)://"},
                    RedisConfig.model_json_schema(), {"type": "null"}],
          "default": None, "description": "replicas on shared state (or a redis:// URL)"}


def _f(default: Any, text: str) -> Any:
    return Field(default, description=text)


@dataclass(frozen=True, slots=True, kw_only=True, config=_FROZEN)
class GatewayConfig:
    """Everything ``create_app`` needs (the fields: this module's docstring)."""

    # Every default is a Field: pydantic would take the fields given a bare default after the
    # others (the order of the errors and of the JSON Schema).
    base_model: NonEmpty = Field(description="the name clients send, as the workers serve it")
    workers: Annotated[tuple[WorkerEndpoint, ...], BeforeValidator(_workers),
                       WithJsonSchema(_WORKERS)] = Field(default=())
    adapters: Annotated[tuple[InstanceOf[AdapterEntry], ...],
                        BeforeValidator(partial(_parsed, AdapterEntry, parse_entries)),
                        WithJsonSchema(_ADAPTERS)] = Field(default=())
    placement: Annotated[PlacementMode, BeforeValidator(partial(member, PlacementMode)),
                         _choices(PlacementMode, "how the initial placement is made")
                         ] = Field(default=PlacementMode.PLANNER)
    routing: Annotated[RoutingPolicy, BeforeValidator(partial(member, RoutingPolicy)),
                       _choices(RoutingPolicy, "how requests pick among an adapter's "
                                "workers")] = Field(default=RoutingPolicy.PLACEMENT)
    gpu: Annotated[str, BeforeValidator(_gpu), WithJsonSchema(_GPU)] = Field(default=DEFAULT_GPU)
    model: StrictStr = _f(DEFAULT_MODEL, "the model the twin plans for (lorafleet's --model)")
    profile: StrictStr = _f(DEFAULT_PROFILE, "the twin's profile of the workers' speed")
    host: StrictStr = _f("127.0.0.1", "the address to listen on")
    port: Annotated[StrictInt, Range(0, 65535, text="0..65535")] = _f(8080, "0: a free port")
    max_model_len: Annotated[StrictInt, Range(0, MAX_TOKENS, open_low=True)] = _f(
        8192, "the workers' context length (the body limit is derived from it)")
    max_body_bytes: Annotated[StrictInt, Range(1024, 1 << 30)] | None = _f(
        None, "the largest request body (default: max_model_len x 64)")
    connect_timeout_s: Seconds = _f(5.0, "connecting to a worker")
    read_timeout_s: Seconds = _f(600.0, "a worker's answer, once the request is sent")
    load_timeout_s: Seconds = _f(60.0, "a worker loading an adapter")
    health_interval_s: Seconds = _f(2.0, "between health checks of each worker")
    retry_after_s: Annotated[StrictInt, Range(0, 3600, open_low=True)] = _f(
        1, "the Retry-After of a 429 or 503")
    max_connections: Annotated[StrictInt, Range(0, 1_000_000, open_low=True)] = _f(
        1024, "connections to each worker (the upstream pool)")
    # what clients may hold of the gateway's listener (gateway/server/listener.py)
    client_header_timeout_s: Annotated[StrictFloat, Range(0, 3600, open_low=True)] = _f(
        10.0, "a request's head must arrive within it (nginx's, from the connection)")
    client_body_timeout_s: Annotated[StrictFloat, Range(0, 3600, open_low=True)] = _f(
        60.0, "its body within it after the head")
    client_max_connections: Annotated[StrictInt, Range(0, 1_000_000, open_low=True)] = _f(
        8192, "open client connections in all (past it: 503, closed)")
    client_max_connections_per_address: Annotated[StrictInt, Range(0, 1_000_000)] = _f(
        1024, "from one IP address (0: no limit; behind an ingress every client shares one)")
    max_outstanding_per_worker: Annotated[StrictInt, Range(0, 1_000_000)] = _f(
        512, "429 when every healthy holder has this many in flight (0: no cap)")
    prefix_affinity_chars: Annotated[StrictInt, Range(0, 1 << 20)] = _f(
        256, "prompt characters hashed for prefix affinity (0: off)")
    # re-planning (gateway/control/replanner.py)
    replan_interval_s: Annotated[StrictFloat, Range(0, MAX_SECONDS)] = _f(
        60.0, "0: re-plan only on demand (admin, drain, worker down)")
    observe_window_s: Seconds = _f(60.0, "the window of rates and lengths a re-plan uses")
    move_budget: Annotated[StrictInt, Range(0, 100_000)] = _f(
        8, "adapters one periodic re-plan may move beyond forced moves")
    surge_replan: StrictBool = _f(True, "re-plan at once when an adapter's load jumps above "
                                  "its planned rate")
    starvation_guard: StrictBool = _f(True, "re-plan at once when a worker starves requests")
    ttft_bound_s: Seconds = _f(10.0, "the TTFT the guard holds workers to (workers' time)")
    retire_margin: Annotated[StrictFloat, Range(0, 1, open_low=True)] = _f(
        0.85, "hysteresis: the slack a worker's load must leave for another to retire")
    validate_replans: StrictBool = _f(True, "check each re-plan in the cluster twin")
    headroom: Annotated[StrictFloat, Range(0, 1, open_low=True)] = _f(
        0.9, "plan each GPU for its offered load / headroom (lower: more latency slack)")
    search_seconds: Annotated[StrictFloat, Range(0, 600)] = _f(
        1.0, "the placer's improvement search, per plan")
    time_scale: Annotated[StrictFloat, Range(0, 10_000, open_low=True)] = _f(
        1.0, "emulated workers run this much faster than real time")
    tensor_parallel_size: Annotated[StrictInt, Range(1, 64)] = _f(
        1, "GPUs of each worker (vLLM's flag): GPUs = workers x it")
    train_target: StrictBool = _f(True, "for another target than the shipped surrogate's: "
                                  "train its own")
    # keys, admin API, state, shutdown (gateway/server/auth.py, admin.py, state.py)
    keys: Annotated[tuple[InstanceOf[KeySpec], ...],
                    BeforeValidator(partial(_parsed, KeySpec, _keys)),
                    WithJsonSchema({"type": "array", "items": KEY_SCHEMA, "description":
                                    "client API keys (none: an open gateway)"})] = Field(default=())
    worker_api_key_env: NonEmpty | None = _f(
        None, "the variable whose value is sent to the workers as Authorization: Bearer")
    admin_token_env: NonEmpty = _f("LORAFLEET_ADMIN_TOKEN",
                                   "the variable holding the admin API's token (unset: 403)")
    metrics_token_env: NonEmpty | None = _f(
        None, "the variable holding GET /metrics' bearer token (unset here: open)")
    state_file: NonEmpty | None = _f(None, "placement and registry, restored at start-up")
    drain_timeout_s: Seconds = _f(30.0, "SIGTERM: how long in-flight requests may finish")
    # the fleet's size and source (specs: gateway/fleet/kube.py builds them at start-up)
    discovery: DiscoverySpec | None = _f(None, "workers come (and go) from Kubernetes")
    actuator: ActuatorSpec | None = _f(None, "scales the fleet (none: retired workers stay "
                                       "up, idle)")
    redis: Annotated[InstanceOf[RedisConfig] | None, WithJsonSchema(_REDIS)] = Field(default=None)
    worker_engine: Annotated[InstanceOf[EngineConfig] | None,
                             _optional(ENGINE_SCHEMA)] = Field(default=None)  # None: the plan's
    # The worker_engine options the file states (the rest are defaults): a worker that
    # reports another value is a start-up error (gateway/fleet/worker_settings.py).
    worker_engine_given: SkipJsonSchema[tuple[tuple[str, float], ...]] = Field(default=())

    def __post_init__(self) -> None:
        if not self.workers and self.discovery is None:
            raise ConfigError("workers", "must be a non-empty list of {url, name?}")
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

    @property
    def body_limit(self) -> int:
        """Largest request body accepted (413 past it): from ``max_model_len`` unless set."""
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        return max(64 * 1024, self.max_model_len * BYTES_PER_TOKEN)
