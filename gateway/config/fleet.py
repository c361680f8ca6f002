"""``actuator:`` and ``discovery:`` in ``gateway.yaml``: how the fleet changes size and where
its workers come from, as plain specs. ``gateway/fleet/kube.py`` builds the runtime objects
from them (``actuator_for``, ``discovery_for``); an API server not given is the in-cluster
one, looked up there at start-up::

    actuator:                        # none (the default), command or kubernetes
      kind: command
      command: kubectl scale sts/vllm --replicas={workers}   # {workers}: the size wanted
      timeout_s: 60
    actuator: {kind: kubernetes, statefulset: vllm}   # patches statefulsets/vllm/scale
    discovery:                       # the ready pods matching selector, every interval_s
      {kind: kubernetes, selector: app.kubernetes.io/name=vllm, port: 8000, interval_s: 10}

``kind: kubernetes`` (both) also takes ``namespace`` (default: the pod's), ``server``,
``token_path`` and ``ca_path`` (default: the in-cluster API and service account).

Examples
--------
>>> parse_actuator({"kind": "command", "command": "scale --replicas={workers}"}).timeout_s
60.0
>>> parse_actuator({"kind": "kubernetes"})
Traceback (most recent call last):
...
twin.errors.ConfigError: actuator.statefulset: is required for kind kubernetes
>>> parse_discovery({"kind": "kubernetes", "selector": "app=vllm", "port": 0})
Traceback (most recent call last):
...
twin.errors.ConfigError: discovery.port: must be in 1..65535, got 0
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    StrictInt,
    field_validator,
    model_validator,
)

from gateway.config.validation import NonEmpty, Range, Seconds, validated
from twin.errors import ConfigError

__all__ = ["ActuatorSpec", "DiscoverySpec", "parse_actuator", "parse_discovery"]

_ACCESS = ("namespace", "server", "token_path", "ca_path")
_KIND_FIELDS = {"none": {"kind"}, "command": {"kind", "command", "timeout_s"},
                "kubernetes": {"kind", "statefulset", *_ACCESS}}


# an API server's URL, kept without a trailing slash
Server = Annotated[NonEmpty, AfterValidator(lambda url: url.rstrip("/"))]


class ActuatorSpec(BaseModel):
    """How the fleet is scaled: ``none`` (retired workers stay up, idle), a shell
    ``command`` run with ``{workers}`` replaced (within ``timeout_s``), or ``kubernetes``
    (a merge patch of ``statefulset``'s ``scale`` subresource)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["none", "command", "kubernetes"]
    command: NonEmpty | None = None
    timeout_s: Seconds = 60.0
    statefulset: NonEmpty | None = None
    namespace: NonEmpty | None = None
    server: Server | None = None
    token_path: NonEmpty | None = None
    ca_path: NonEmpty | None = None

    @model_validator(mode="before")
    @classmethod
    def _kind_fields(cls, data: Any) -> Any:
        kind = data.get("kind") if isinstance(data, dict) else None
        if isinstance(kind, str) and kind in _KIND_FIELDS:
            known = set(cls.model_fields)
            unknown = sorted(k for k in data if k in known and k not in _KIND_FIELDS[kind])
            if unknown:
                raise ConfigError(unknown[0], f"unknown field for kind {kind}")
        return data

    @field_validator("command")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        try:
            None if value is None else value.format(workers=1)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"only {{workers}} may be substituted: {exc!r}") from None
        return value


    @model_validator(mode="after")
    def _required(self) -> ActuatorSpec:
        needed = {"command": "command", "kubernetes": "statefulset"}.get(self.kind)
        if needed is not None and getattr(self, needed) is None:
            raise ConfigError(needed, f"is required for kind {self.kind}")
        return self


class DiscoverySpec(BaseModel):
    """Where the workers come from: the ready pods matching ``selector`` (their ``port``),
    listed every ``interval_s`` seconds."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["kubernetes"]
    selector: NonEmpty
    port: Annotated[StrictInt, Range(1, 65535, text="1..65535")] = 8000
    interval_s: Seconds = 10.0
    namespace: NonEmpty | None = None
    server: Server | None = None
    token_path: NonEmpty | None = None
    ca_path: NonEmpty | None = None

    @field_validator("kind", mode="before")
    @classmethod
    def _kind(cls, value: Any) -> Any:
        if value != "kubernetes":
            raise ValueError(f"must be kubernetes (static workers need no discovery), got "
                             f"{value!r}")
        return value



def parse_actuator(data: Any, where: str = "actuator") -> ActuatorSpec:
    """``{kind: none|command|kubernetes, ...}`` checked; ``ConfigError`` names the field."""
    return validated(ActuatorSpec, data, where)


def parse_discovery(data: Any, where: str = "discovery") -> DiscoverySpec:
    """``{kind: kubernetes, selector, ...}`` checked; ``ConfigError`` names the field."""
    return validated(DiscoverySpec, data, where)
