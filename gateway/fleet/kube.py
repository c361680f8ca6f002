"""Kubernetes worker discovery and the scale actuators, over the Kubernetes REST API.

Workers run as a StatefulSet (``deploy/k8s/``): pod ``vllm-3`` is ordinal 3. Discovery lists the
set's pods by label selector and keeps the ready ones, ordered by ordinal, so the planner's
"retire the highest-numbered worker first" matches a StatefulSet scale-down (which removes the
highest ordinal first). The actuator changes the fleet size: nothing, a shell command, or a
merge patch of the StatefulSet's ``scale`` subresource. Plain aiohttp, not the kubernetes
client: three calls do not justify its weight. What to build comes from ``gateway.yaml`` as
plain specs (``gateway/config/fleet.py``): ``actuator_for`` and ``discovery_for`` build the
runtime objects, looking up the in-cluster API when the spec names no server.

The API shapes (PodList, Pod ``status.podIP`` and ``status.conditions``, the autoscaling/v1
``Scale`` object, and the ``Status`` object of a failed call) follow the Kubernetes API
reference, https://kubernetes.io/docs/reference/kubernetes-api/ (workload-resources/pod-v1,
common-definitions/status, autoscaling/v1 Scale; "list pods", "replace/patch scale of the
specified StatefulSet").

Errors::

    GatewayError
     └── ActuatorError        a scale command or API call failed (KubeError for the API)
          └── KubeError       the API answered a non-2xx status (its Status reason and message)

Examples
--------
>>> from gateway.config.fleet import parse_actuator, parse_discovery
>>> actuator_for(parse_actuator({"kind": "command", "command": "scale --replicas={workers}"}))
CommandActuator(template='scale --replicas={workers}', timeout_s=60.0)
>>> ordinal("vllm-12"), ordinal("gateway")
(12, None)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

import aiohttp

from gateway.config.fleet import ActuatorSpec, DiscoverySpec
from gateway.config.settings import WorkerEndpoint
from gateway.errors import GatewayError
from twin.errors import ConfigError

__all__ = ["SERVICE_ACCOUNT_DIR", "Actuator", "ActuatorError", "CommandActuator", "KubeApi",
           "KubeDiscovery", "KubeError", "KubernetesActuator", "NoActuator", "actuator_for",
           "check_access", "discover_workers", "discovery_for", "kube_api", "ordinal"]

logger = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MERGE_PATCH = "application/merge-patch+json"
_TIMEOUT = aiohttp.ClientTimeout(total=10)


class ActuatorError(GatewayError):
    """Scaling the fleet failed."""


class KubeError(ActuatorError):
    """A non-2xx answer of the Kubernetes API, with its ``Status`` reason and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        self.status, self.reason, self.message = status, reason, message
        super().__init__(f"kubernetes API {status} {reason}: {message}")


@dataclass(frozen=True, slots=True, kw_only=True)
class KubeApi:
    """Where the API server is and how to authenticate to it.

    The token is re-read from ``token_path`` on every call: the kubelet rotates bound
    service-account tokens in place.
    """

    server: str
    namespace: str
    token_path: Path | None = None
    ca_path: Path | None = None

    @classmethod
    def in_cluster(cls, namespace: str | None = None,
                   account_dir: Path = SERVICE_ACCOUNT_DIR) -> KubeApi:
        """The API as seen from a pod: ``KUBERNETES_SERVICE_HOST/PORT`` and the mounted
        service account (token, CA, namespace); ``ConfigError`` outside a cluster."""
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise ConfigError("kubernetes", "KUBERNETES_SERVICE_HOST is not set (not in a pod?)")
        token = account_dir / "token"
        if not token.is_file():
            raise ConfigError("kubernetes", f"no service account token at {token}")
        if namespace is None:
            try:
                namespace = (account_dir / "namespace").read_text().strip()
            except OSError:
                raise ConfigError("namespace", "not given and not mounted") from None
        host = f"[{host}]" if ":" in host else host
        return cls(server=f"https://{host}:{port}", namespace=namespace, token_path=token,
                   ca_path=account_dir / "ca.crt")

    def headers(self) -> dict[str, str]:
        if self.token_path is None:
            return {}
        return {"Authorization": f"Bearer {self.token_path.read_text().strip()}"}

    def ssl_context(self) -> ssl.SSLContext | bool:
        if self.ca_path is None:
            return True  # the system's trust store (or plain http in tests)
        return ssl.create_default_context(cafile=str(self.ca_path))


@contextlib.asynccontextmanager
async def _session(given: aiohttp.ClientSession | None) -> AsyncIterator[aiohttp.ClientSession]:
    if given is not None:
        yield given
        return
    async with aiohttp.ClientSession(timeout=_TIMEOUT) as session:
        yield session


async def _call(api: KubeApi, method: str, path: str, *, session: aiohttp.ClientSession | None,
                params: Mapping[str, str] | None = None, json: Any = None,
                content_type: str | None = None) -> dict[str, Any]:
    """One API call; a non-2xx answer raises ``KubeError`` from its ``Status`` object."""
    headers = api.headers()
    if content_type is not None:
        headers["Content-Type"] = content_type
    try:
        async with _session(session) as s, s.request(
                method, api.server + path, params=params, json=json, headers=headers,
                ssl=api.ssl_context(), timeout=_TIMEOUT) as resp:
            body = await resp.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        raise ActuatorError(f"kubernetes API {method} {path}: {exc!r}") from exc
    if not isinstance(body, dict):
        raise KubeError(resp.status, "Invalid", f"not a JSON object: {str(body)[:200]}")
    if resp.status >= 300:
        raise KubeError(resp.status, str(body.get("reason", "")),
                        str(body.get("message", "")))
    return body


def ordinal(pod: str) -> int | None:
    """The StatefulSet ordinal in a pod name (``vllm-3`` -> 3), None if it has none."""
    _, sep, tail = pod.rpartition("-")
    return int(tail) if sep and tail.isdigit() else None


def _ready(pod: Mapping[str, Any]) -> bool:
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False  # terminating: drain, do not route
    status = pod.get("status", {})
    conditions = status.get("conditions") or []
    return bool(status.get("podIP")) and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


async def discover_workers(api: KubeApi, *, selector: str, port: int = 8000,
                           session: aiohttp.ClientSession | None = None,
                           ) -> list[WorkerEndpoint]:
    """The ready worker pods matching ``selector``, ordered by StatefulSet ordinal.

    Each becomes ``WorkerEndpoint(name=<pod name>, url=http://<pod IP>:<port>)``. Pods not
    ready, without an IP yet, or terminating are left out. Pages through ``continue``.
    """
    path = f"/api/v1/namespaces/{quote(api.namespace)}/pods"
    pods: list[Mapping[str, Any]] = []
    params = {"labelSelector": selector, "limit": "500"}
    while True:
        body = await _call(api, "GET", path, params=params, session=session)
        pods.extend(body.get("items") or [])
        token = body.get("metadata", {}).get("continue")
        if not token:
            break
        params = {**params, "continue": token}
    found = []
    for pod in pods:
        if not _ready(pod):
            continue
        name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
        host = f"[{ip}]" if ":" in ip else ip
        found.append(WorkerEndpoint(name=name, url=f"http://{host}:{port}"))
    return sorted(found, key=lambda w: (ordinal(w.name) is None, ordinal(w.name) or 0, w.name))


class Actuator(Protocol):
    """Changes the number of workers (GPUs) the fleet runs."""

    async def scale_to(self, workers: int) -> None: ...


@dataclass(frozen=True, slots=True)
class NoActuator:
    """Scales nothing: retired workers stay up, idle (logged)."""

    async def scale_to(self, workers: int) -> None:
        logger.info("scale to %d workers requested; no actuator configured", workers)


@dataclass(frozen=True, slots=True)
class CommandActuator:
    """Runs ``template`` with ``{workers}`` replaced, through the shell, within ``timeout_s``.

    A non-zero exit status or a timeout (the command is killed) raises ``ActuatorError``.
    """

    template: str
    timeout_s: float = 60.0

    async def scale_to(self, workers: int) -> None:
        command = self.template.format(workers=int(workers))
        proc = await asyncio.create_subprocess_shell(
            command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            start_new_session=True)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)  # the shell and what it started
            await proc.wait()
            logger.warning("scale command timed out after %.0f s: %s", self.timeout_s, command)
            raise ActuatorError(f"scale command timed out after {self.timeout_s} s: "
                                f"{command}") from None
        text = out.decode(errors="replace").strip()[-500:]
        logger.info("scale command exited %d: %s%s", proc.returncode, command,
                    f" ({text})" if text else "")
        if proc.returncode != 0:
            raise ActuatorError(f"scale command exited {proc.returncode}: {command}: {text}")


@dataclass(frozen=True, slots=True)
class KubernetesActuator:
    """Patches ``statefulsets/<statefulset>/scale`` (needs get/patch on that subresource)."""

    api: KubeApi
    statefulset: str

    @property
    def path(self) -> str:
        return (f"/apis/apps/v1/namespaces/{quote(self.api.namespace)}/statefulsets/"
                f"{quote(self.statefulset)}/scale")

    async def replicas(self, session: aiohttp.ClientSession | None = None) -> int:
        """The StatefulSet's desired replica count (its Scale's ``spec.replicas``)."""
        scale = await _call(self.api, "GET", self.path, session=session)
        return int(scale.get("spec", {}).get("replicas", 0))

    async def scale_to(self, workers: int,
                       session: aiohttp.ClientSession | None = None) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        scale = await _call(self.api, "PATCH", self.path, session=session,
                            json={"spec": {"replicas": workers}}, content_type=MERGE_PATCH)
        got = scale.get("spec", {}).get("replicas")
        if got != workers:
            raise ActuatorError(f"statefulset {self.statefulset}: asked for {workers} "
                                f"replicas, the API answered {got!r}")
        logger.info("statefulset %s/%s scaled to %d", self.api.namespace, self.statefulset,
                    workers)


def kube_api(spec: ActuatorSpec | DiscoverySpec, field: str) -> KubeApi:
    """The API ``spec`` names (``server``, ``token_path``, ``ca_path``), else the in-cluster
    one: ``ConfigError`` naming ``field`` outside a pod."""
    if spec.server is None:
        try:
            return KubeApi.in_cluster(spec.namespace)
        except ConfigError as exc:
            raise exc.nested(field) from None
    return KubeApi(server=spec.server, namespace=spec.namespace or "default",
                   token_path=None if spec.token_path is None else Path(spec.token_path),
                   ca_path=None if spec.ca_path is None else Path(spec.ca_path))


def actuator_for(spec: ActuatorSpec | None, field: str = "actuator") -> Actuator:
    """The actuator ``spec`` describes (``None``: no actuator); ``ConfigError`` naming
    ``field`` when its API is the in-cluster one and this is no pod."""
    if spec is None or spec.kind == "none":
        return NoActuator()
    if spec.kind == "command":
        assert spec.command is not None  # the spec requires it
        return CommandActuator(spec.command, spec.timeout_s)
    assert spec.statefulset is not None
    return KubernetesActuator(kube_api(spec, field), spec.statefulset)


@dataclass(frozen=True, slots=True)
class KubeDiscovery:
    """Discovery settings: ``await d.workers()`` lists the ready worker pods; the gateway
    lists them again every ``interval_s`` seconds."""

    api: KubeApi
    selector: str
    port: int = 8000
    interval_s: float = 10.0

    async def workers(self, session: aiohttp.ClientSession | None = None,
                      ) -> list[WorkerEndpoint]:
        return await discover_workers(self.api, selector=self.selector, port=self.port,
                                      session=session)


def discovery_for(spec: DiscoverySpec, field: str = "discovery") -> KubeDiscovery:
    """The discovery ``spec`` describes; ``ConfigError`` naming ``field`` when its API is
    the in-cluster one and this is no pod.

    Examples
    --------
    >>> from gateway.config.fleet import parse_discovery
    >>> d = discovery_for(parse_discovery({"kind": "kubernetes", "selector": "app=vllm",
    ...                                    "server": "https://k8s:6443", "namespace": "llm"}))
    >>> d.selector, d.port, d.api.namespace
    ('app=vllm', 8000, 'llm')
    """
    return KubeDiscovery(kube_api(spec, field), spec.selector, spec.port, spec.interval_s)


def check_access(actuator: ActuatorSpec | None, discovery: DiscoverySpec | None) -> None:
    """Build what the config's specs describe once, at start-up: a Kubernetes API the config
    does not name must be the pod's (``ConfigError`` naming the field, not a failure at the
    first scale or listing)."""
    actuator_for(actuator)
    if discovery is not None:
        discovery_for(discovery)
