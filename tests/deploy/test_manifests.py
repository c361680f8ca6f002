"""The deploy files hold together: Kubernetes manifests valid against the Kubernetes schemas
(``kubernetes-validate``, offline, strict), compose files with the services, volumes and
mounts they need (and ``docker compose config`` where a compose binary exists), gateway
configs the gateway accepts, emulated-worker options the emulator accepts, and a dashboard
and provisioning that agree on the data source."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from gateway.emulator.cli import register as register_worker
from gateway.emulator.cli import worker_configs
from gateway.server.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose"


def k8s_docs() -> list[dict[str, Any]]:
    return [d for f in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())
            if d is not None and d["kind"] != "Kustomization"]


def find(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


@pytest.mark.parametrize("doc", k8s_docs(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_k8s_manifest_is_valid(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_k8s_validation_rejects_a_broken_manifest() -> None:
    bad = json.loads(json.dumps(find("StatefulSet", "vllm")))
    bad["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kubernetes_validate.latest_version(), strict=True)
    bad = json.loads(json.dumps(find("Deployment", "lorafleet-gateway")))
    bad["spec"]["template"]["spec"]["containers"][0]["port"] = 8080  # strict: unknown field
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kubernetes_validate.latest_version(), strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        f.name for f in K8S.glob("*.yaml") if f.name != "kustomization.yaml")


def test_vllm_statefulset_has_gpus_lora_and_a_headless_service() -> None:
    sts, svc = find("StatefulSet", "vllm"), find("Service", "vllm")
    assert svc["spec"]["clusterIP"] == "None" and sts["spec"]["serviceName"] == "vllm"
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    pod = sts["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "True"} in container["env"]
    args = " ".join(container["args"])
    for flag in ("--enable-lora", "--max-loras=", "--max-cpu-loras=", "--max-lora-rank="):
        assert flag in args
    claim = next(v for v in pod["spec"]["volumes"] if v["name"] == "adapters")
    pvc = find("PersistentVolumeClaim", claim["persistentVolumeClaim"]["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"]
    assert any(m["mountPath"] == "/adapters" and m["readOnly"]
               for m in container["volumeMounts"])


@pytest.mark.parametrize(("kind", "name"), [("StatefulSet", "vllm"),
                                            ("Deployment", "lorafleet-gateway")])
def test_pods_carry_scrape_annotations_for_their_port(kind: str, name: str) -> None:
    pod = find(kind, name)["spec"]["template"]
    notes = pod["metadata"]["annotations"]
    ports = {p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    assert notes["prometheus.io/scrape"] == "true" and notes["prometheus.io/path"] == "/metrics"
    assert int(notes["prometheus.io/port"]) in ports
    k8s_prom = (DEPLOY / "prometheus" / "prometheus-k8s.yml").read_text()
    for key in ("scrape", "port", "path"):  # the cluster config keys on these annotations
        assert f"__meta_kubernetes_pod_annotation_prometheus_io_{key}" in k8s_prom


def test_rbac_allows_exactly_what_kube_py_does() -> None:
    role = find("Role", "lorafleet-gateway")
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): sorted(r["verbs"])
             for r in role["rules"]}
    assert rules == {(("",), ("pods",)): ["list", "watch"],
                     (("apps",), ("statefulsets/scale",)): ["get", "patch"]}
    binding = find("RoleBinding", "lorafleet-gateway")
    assert binding["roleRef"]["name"] == "lorafleet-gateway"
    deployment = find("Deployment", "lorafleet-gateway")
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == \
        binding["subjects"][0]["name"] == find("ServiceAccount", "lorafleet-gateway")[
            "metadata"]["name"]


def test_gateway_configmap_discovers_and_scales_the_statefulset(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.server.kube import KubeApi, KubernetesActuator

    def in_cluster(cls: type[KubeApi], namespace: str | None = None,
                   account_dir: Any = None) -> KubeApi:  # as a pod in the namespace sees it
        return KubeApi(server="https://10.96.0.1:443", namespace=namespace or "lorafleet")

    monkeypatch.setattr(KubeApi, "in_cluster", classmethod(in_cluster))
    sts = find("StatefulSet", "vllm")
    cfg = parse_config(yaml.safe_load(find("ConfigMap", "lorafleet-gateway")["data"][
        "gateway.yaml"]))
    assert cfg.workers == () and cfg.discovery is not None
    labels = sts["spec"]["template"]["metadata"]["labels"]
    key, value = cfg.discovery.selector.split("=")
    assert labels[key] == value and sts["spec"]["selector"]["matchLabels"][key] == value
    (worker,) = sts["spec"]["template"]["spec"]["containers"]
    assert cfg.discovery.port == worker["ports"][0]["containerPort"]
    assert isinstance(cfg.actuator, KubernetesActuator)
    assert cfg.actuator.statefulset == sts["metadata"]["name"]
    args = dict(a.removeprefix("--").split("=") for a in worker["args"] if "=" in a)
    engine = cfg.worker_engine
    assert engine is not None
    assert (engine.max_loras, engine.max_cpu_loras, engine.max_lora_rank,
            engine.max_model_len, engine.gpu_memory_utilization) == (
        int(args["max-loras"]), int(args["max-cpu-loras"]), int(args["max-lora-rank"]),
        int(args["max-model-len"]), float(args["gpu-memory-utilization"]))
    assert cfg.port == 8080 and cfg.host == "0.0.0.0"
    assert all(a.path == f"/adapters/{a.demand.name}" for a in cfg.adapters)
    (container,) = find("Deployment", "lorafleet-gateway")["spec"]["template"]["spec"][
        "containers"]
    secret = container["env"][0]["valueFrom"]["secretKeyRef"]
    assert container["env"][0]["name"] == "LORAFLEET_ADMIN_TOKEN"
    assert secret["key"] in find("Secret", secret["name"])["stringData"]


def compose(name: str) -> dict[str, Any]:
    return yaml.safe_load((COMPOSE / name).read_text())  # type: ignore[no-any-return]


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> source, from short-syntax volumes."""
    return {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}


@pytest.mark.parametrize(("file", "config"), [("docker-compose.yml", "gateway.yaml"),
                                              ("docker-compose.cpu.yml", "gateway.cpu.yaml")])
def test_compose_services_volumes_and_gateway_config(file: str, config: str) -> None:
    data = compose(file)
    services = data["services"]
    assert {"gateway", "vllm-0", "vllm-1", "prometheus", "grafana"} <= set(services)
    assert "adapters" in data["volumes"]
    gateway = services["gateway"]
    assert mounts(gateway)["/etc/lorafleet/gateway.yaml"] == f"./{config}"
    cfg = parse_config(yaml.safe_load((COMPOSE / config).read_text()))
    assert [w.url for w in cfg.workers] == ["http://vllm-0:8000", "http://vllm-1:8000"]
    for name in ("vllm-0", "vllm-1"):
        assert mounts(services[name])["/adapters"] == "adapters"
        assert services[name]["healthcheck"]["test"][-1].count("8000/health") == 1
        assert gateway["depends_on"][name] == {"condition": "service_healthy"}
    assert any(s.get("build", {}).get("dockerfile") == "Dockerfile" for s in services.values())
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in prom["scrape_configs"] for c in job["static_configs"]
               for t in c["targets"]}
    assert targets == {f"gateway:{cfg.port}", "vllm-0:8000", "vllm-1:8000"}
    assert mounts(services["prometheus"])["/etc/prometheus"] == "../prometheus"
    grafana = mounts(services["grafana"])
    assert (COMPOSE / grafana["/etc/grafana/provisioning"]).is_dir()
    assert (COMPOSE / grafana["/var/lib/grafana/dashboards/lorafleet.json"]).is_file()


def test_gpu_compose_workers_reserve_a_gpu_each_with_runtime_lora() -> None:
    services = compose("docker-compose.yml")["services"]
    gpus = []
    for name in ("vllm-0", "vllm-1"):
        worker = services[name]
        assert worker["image"].startswith("vllm/vllm-openai:")
        assert worker["environment"]["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
        assert "--enable-lora" in worker["command"]
        (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
        gpus += device["device_ids"]
    assert len(set(gpus)) == 2


def test_cpu_compose_workers_start_with_their_options() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    register_worker(parser.add_subparsers())
    data = compose("docker-compose.cpu.yml")
    scaffolded = set(re.findall(r"--name (\S+)", data["services"]["adapters"]["command"][0]))
    cfg = parse_config(yaml.safe_load((COMPOSE / "gateway.cpu.yaml").read_text()))
    assert scaffolded == {a.demand.name for a in cfg.adapters}
    for name in ("vllm-0", "vllm-1"):
        args = parser.parse_args(data["services"][name]["command"])
        assert args.emulate and args.port == 8000 and args.host == "0.0.0.0"
        (worker,) = worker_configs(args, 1)  # raises StartupError where vLLM would refuse
        assert worker.served_model_name == cfg.base_model
        assert worker.engine.max_lora_rank >= max(a.demand.rank for a in cfg.adapters)


@pytest.mark.parametrize("file", ["docker-compose.yml", "docker-compose.cpu.yml"])
def test_compose_config_accepts_the_file(file: str) -> None:
    if shutil.which("docker-compose"):
        cmd = ["docker-compose", "-f", str(COMPOSE / file), "config", "-q"]
    elif shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                   capture_output=True).returncode == 0:
        cmd = ["docker", "compose", "-f", str(COMPOSE / file), "config", "-q"]
    else:
        pytest.skip("no docker compose here: the files were checked with PyYAML only")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_dashboard_reads_a_prometheus_data_source_variable() -> None:
    dash = json.loads((DEPLOY / "grafana" / "lorafleet.json").read_text())
    assert dash["uid"] == "lorafleet" and dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    source = {"type": "prometheus", "uid": "${datasource}"}
    assert variables["adapter"]["datasource"] == source
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for p in panels:
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] == "row":
            continue
        assert p["datasource"] == source, p["title"]
        assert p["targets"] and all(t["expr"] and t["refId"] and t["datasource"] == source
                                    for t in p["targets"])
    assert "gateway_" not in json.dumps(dash)
    # savings first, then latency, adapters (top 10 by rate), re-planning
    rows = [p["title"] for p in sorted(panels, key=lambda p: p["gridPos"]["y"])
            if p["type"] == "row"]
    assert rows[:4] == ["GPU savings", "Latency", "Adapters", "Re-planning"]
    exprs = " ".join(t["expr"] for p in panels for t in p.get("targets", []))
    for series in ("lorafleet_gpus_running", "lorafleet_gpus_planned", "lorafleet_gpus_baseline",
                   "lorafleet_gpu_seconds_saved_total", "lorafleet_scale_requests_total",
                   "lorafleet_adapter_rate", "lorafleet_ttft_seconds_bucket",
                   "lorafleet_e2e_seconds_bucket", "lorafleet_worker_outstanding",
                   "lorafleet_worker_state", "lorafleet_migrations_total",
                   "lorafleet_adapters_moved_total", "lorafleet_replans_total",
                   "lorafleet_replan_seconds_bucket", "lorafleet_surrogate_error"):
        assert series in exprs, series
    assert "topk(10, sum by (adapter) (rate(lorafleet_requests_total" in exprs
    provisioning = DEPLOY / "grafana" / "provisioning"
    (provisioned,) = yaml.safe_load(
        (provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert provisioned["url"] == "http://prometheus:9090"
    assert provisioned["type"] == "prometheus" and provisioned["isDefault"]  # the variable's
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "lorafleet.yml").read_text())[
        "providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dockerfile_runs_the_gateway_as_a_non_root_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.splitlines()[3] == "FROM python:3.11-slim"
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    assert 'ENTRYPOINT ["lorafleet"]' in text
    assert 'CMD ["serve", "--config", "/etc/lorafleet/gateway.yaml"]' in text
    assert "EXPOSE 8080" in text and "8080/health" in text and "pip install ." in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv*", ".git", "**/__pycache__", ".pytest_cache"} <= set(ignored)
