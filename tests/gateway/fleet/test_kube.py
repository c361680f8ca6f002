"""Kubernetes discovery and the actuators, against a small fake of the Kubernetes API.

The fake answers with the real API's shapes, per the Kubernetes API reference
(https://kubernetes.io/docs/reference/kubernetes-api/): ``GET /api/v1/namespaces/{ns}/pods``
returns a ``PodList`` (``items``, ``metadata.continue`` when paged by ``limit``), a pod's
``status.podIP`` and ``status.conditions`` (``Ready``), ``metadata.deletionTimestamp`` when
terminating; ``GET/PATCH /apis/apps/v1/namespaces/{ns}/statefulsets/{name}/scale`` returns an
autoscaling/v1 ``Scale``; failures return a ``Status`` object (``reason``, ``message``,
``code``): 401 Unauthorized, 404 NotFound, 415 UnsupportedMediaType.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.config import WorkerEndpoint
from gateway.config.fleet import ActuatorSpec, DiscoverySpec, parse_actuator, parse_discovery
from gateway.fleet.kube import (
    ActuatorError,
    CommandActuator,
    KubeApi,
    KubeError,
    KubernetesActuator,
    NoActuator,
    actuator_for,
    check_access,
    discover_workers,
    discovery_for,
)
from twin.errors import ConfigError

TOKEN = "sa-token-1"
SELECTOR = "app.kubernetes.io/name=vllm"


def status(code: int, reason: str, message: str, **details: str) -> web.Response:
    body: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "message": message, "reason": reason,
                            "code": code}
    if details:
        body["details"] = details
    return web.json_response(body, status=code)


def pod(name: str, ip: str | None, *, ready: bool = True, terminating: bool = False,
        app: str = "vllm") -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "llm", "uid": f"uid-{name}",
                            "labels": {"app.kubernetes.io/name": app}}
    if terminating:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    conditions = [{"type": t, "status": "True" if ready or t == "PodScheduled" else "False"}
                  for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")]
    st: dict[str, Any] = {"phase": "Running" if ip else "Pending", "conditions": conditions}
    if ip:
        st["podIP"], st["podIPs"] = ip, [{"ip": ip}]
    return {"metadata": meta, "spec": {"containers": [{"name": "vllm"}]}, "status": st}


class FakeKube:
    """Pods, one StatefulSet's Scale, a bearer token, and a page size for ``limit``."""

    def __init__(self, pods: list[dict[str, Any]], replicas: int = 3, page: int = 2) -> None:
        self.pods, self.replicas, self.page = pods, replicas, page
        self.patches: list[tuple[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/api/v1/namespaces/{ns}/pods", self.list_pods)
        scale = "/apis/apps/v1/namespaces/{ns}/statefulsets/{name}/scale"
        app.router.add_get(scale, self.get_scale)
        app.router.add_patch(scale, self.patch_scale)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return status(401, "Unauthorized", "Unauthorized")
        return await handler(request)  # type: ignore[no-any-return]

    async def list_pods(self, request: web.Request) -> web.Response:
        wanted = dict(t.split("=", 1) for t in request.query["labelSelector"].split(","))
        match = [p for p in self.pods if all(
            p["metadata"]["labels"].get(k) == v for k, v in wanted.items())]
        start = int(request.query.get("continue", "0"))
        size = min(int(request.query.get("limit", "500")), self.page)
        items = match[start:start + size]
        meta: dict[str, Any] = {"resourceVersion": "4242"}
        if start + size < len(match):
            meta["continue"] = str(start + size)
        return web.json_response({"kind": "PodList", "apiVersion": "v1", "metadata": meta,
                                  "items": items})

    def _scale(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name != "vllm":
            return status(404, "NotFound", f'statefulsets.apps "{name}" not found',
                          name=name, group="apps", kind="statefulsets")
        return web.json_response({
            "kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {"name": name, "namespace": request.match_info["ns"]},
            "spec": {"replicas": self.replicas},
            "status": {"replicas": self.replicas, "selector": SELECTOR}})

    async def get_scale(self, request: web.Request) -> web.Response:
        return self._scale(request)

    async def patch_scale(self, request: web.Request) -> web.Response:
        if request.content_type != "application/merge-patch+json":
            return status(415, "UnsupportedMediaType", "the body of the request was in an "
                          "unknown format - accepted media types include: "
                          "application/json-patch+json, application/merge-patch+json, "
                          "application/apply-patch+yaml")
        body = await request.json()
        self.patches.append((request.match_info["name"], body))
        if request.match_info["name"] == "vllm":
            self.replicas = body["spec"]["replicas"]
        return self._scale(request)


@pytest.fixture
def token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


async def serve_fake(fake: FakeKube, token: Path) -> tuple[TestServer, KubeApi]:
    server = TestServer(fake.app())
    await server.start_server()
    return server, KubeApi(server=str(server.make_url("")).rstrip("/"), namespace="llm",
                           token_path=token)


PODS = [pod("vllm-10", "10.0.0.10"), pod("vllm-2", "10.0.0.2"), pod("vllm-0", "10.0.0.1"),
        pod("vllm-1", None, ready=False), pod("vllm-3", "10.0.0.3", ready=False),
        pod("vllm-4", "10.0.0.4", terminating=True), pod("vllm-5", "fd00::5"),
        pod("gateway-abc", "10.0.0.9", app="gateway")]


async def test_discovery_keeps_ready_pods_in_ordinal_order(token: Path) -> None:
    server, api = await serve_fake(FakeKube(PODS, page=2), token)
    try:
        found = await discover_workers(api, selector=SELECTOR, port=8001)
    finally:
        await server.close()
    assert found == [WorkerEndpoint("vllm-0", "http://10.0.0.1:8001"),
                     WorkerEndpoint("vllm-2", "http://10.0.0.2:8001"),
                     WorkerEndpoint("vllm-5", "http://[fd00::5]:8001"),
                     WorkerEndpoint("vllm-10", "http://10.0.0.10:8001")]


async def test_bad_token_is_a_kube_error_with_the_status_reason(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("expired")
    server, api = await serve_fake(FakeKube(PODS), wrong)
    try:
        with pytest.raises(KubeError) as info:
            await discover_workers(api, selector=SELECTOR)
    finally:
        await server.close()
    assert (info.value.status, info.value.reason) == (401, "Unauthorized")


async def test_scale_patches_the_statefulset_scale(token: Path) -> None:
    fake = FakeKube(PODS, replicas=3)
    server, api = await serve_fake(fake, token)
    actuator = KubernetesActuator(api, "vllm")
    try:
        assert await actuator.replicas() == 3
        await actuator.scale_to(1)
        assert await actuator.replicas() == 1
        with pytest.raises(KubeError, match=r'404 NotFound: statefulsets.apps "nope" not found'):
            await KubernetesActuator(api, "nope").scale_to(2)
    finally:
        await server.close()
    assert fake.patches == [("vllm", {"spec": {"replicas": 1}}),
                            ("nope", {"spec": {"replicas": 2}})]


async def test_unreachable_api_is_an_actuator_error(token: Path) -> None:
    api = KubeApi(server="http://127.0.0.1:9", namespace="llm", token_path=token)
    with pytest.raises(ActuatorError, match="kubernetes API PATCH"):
        await KubernetesActuator(api, "vllm").scale_to(2)


async def test_command_actuator_substitutes_and_reports(tmp_path: Path) -> None:
    out = tmp_path / "scaled"
    await CommandActuator(f"echo {{workers}} > {out}").scale_to(4)
    assert out.read_text().strip() == "4"
    with pytest.raises(ActuatorError, match="exited 3"):
        await CommandActuator("echo oops; exit 3").scale_to(1)


async def test_command_actuator_kills_a_command_past_its_timeout(tmp_path: Path) -> None:
    marker = tmp_path / "late"
    started = time.monotonic()
    with pytest.raises(ActuatorError, match="timed out"):
        await CommandActuator(f"sleep 1 && touch {marker}", timeout_s=0.2).scale_to(2)
    assert time.monotonic() - started < 0.8
    await asyncio.sleep(1.0)
    assert not marker.exists()  # the shell's child was killed with it


async def test_no_actuator_does_nothing() -> None:
    await NoActuator().scale_to(3)


def test_actuator_for_builds_each_kind(token: Path) -> None:
    assert isinstance(actuator_for(None), NoActuator)
    assert isinstance(actuator_for(ActuatorSpec(kind="none")), NoActuator)
    cmd = actuator_for(parse_actuator({"kind": "command", "command": "scale {workers}",
                                       "timeout_s": 5}))
    assert cmd == CommandActuator("scale {workers}", 5.0)
    kube = actuator_for(parse_actuator({
        "kind": "kubernetes", "statefulset": "vllm", "namespace": "llm",
        "server": "https://k8s:6443/", "token_path": str(token)}))
    assert isinstance(kube, KubernetesActuator)
    assert kube.path == "/apis/apps/v1/namespaces/llm/statefulsets/vllm/scale"
    assert kube.api.server == "https://k8s:6443" and kube.api.token_path == token


def test_in_cluster_reads_the_service_account(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A spec naming no API server is the pod's: outside one, building it (at start-up:
    ``check_access``) is a ``ConfigError`` naming the field."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    spec = parse_actuator({"kind": "kubernetes", "statefulset": "vllm"})  # a valid spec
    with pytest.raises(ConfigError, match=r"actuator\.kubernetes: KUBERNETES_SERVICE_HOST"):
        actuator_for(spec)
    listing = parse_discovery({"kind": "kubernetes", "selector": SELECTOR})
    with pytest.raises(ConfigError, match=r"discovery\.kubernetes: KUBERNETES_SERVICE_HOST"):
        check_access(None, listing)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    (tmp_path / "token").write_text(TOKEN)
    (tmp_path / "namespace").write_text("llm\n")
    api = KubeApi.in_cluster(account_dir=tmp_path)
    assert (api.server, api.namespace) == ("https://10.96.0.1:443", "llm")
    assert api.headers() == {"Authorization": f"Bearer {TOKEN}"}
    assert api.ca_path == tmp_path / "ca.crt"


def test_discovery_for_lists_with_the_specs_settings() -> None:
    spec = DiscoverySpec(kind="kubernetes", selector="a=b", port=9000, interval_s=2.5,
                         server="https://k8s/", namespace="llm")
    found = discovery_for(spec)
    assert (found.selector, found.port, found.interval_s) == ("a=b", 9000, 2.5)
    assert (found.api.server, found.api.namespace) == ("https://k8s", "llm")
