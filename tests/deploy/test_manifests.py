"""The deploy files hold together: Kubernetes manifests valid against the Kubernetes schemas
(``kubernetes-validate``, offline, strict; the Prometheus Operator's ServiceMonitor, which it
has no schema for, checked field by field against the Service it scrapes), gateway replicas
on a Redis StatefulSet (rolling updates that keep two serving, a disruption budget, no state
volume), a disruption budget over the workers, compose files with the services, volumes and
mounts they need, two gateways on one Redis and no default admin token (and ``docker compose
config`` where a compose binary exists), gateway configs the gateway accepts,
emulated-worker options the emulator accepts, a dashboard and provisioning that agree on the
data source, and fleet-wide figures that several replicas do not double."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from gateway.config import GatewayConfig, parse_config
from gateway.config import env as config_env
from gateway.emulator.cli import register as register_worker
from gateway.emulator.cli import worker_configs

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose"


# API groups of custom resources: kubernetes-validate has no schema for them.
CUSTOM_GROUPS = ("monitoring.coreos.com/",)


def k8s_docs() -> list[dict[str, Any]]:
    return [d for f in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())
            if d is not None and d["kind"] != "Kustomization"]


def builtin(doc: dict[str, Any]) -> bool:
    return not doc["apiVersion"].startswith(CUSTOM_GROUPS)


def find(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in k8s_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


@pytest.mark.parametrize("doc", [d for d in k8s_docs() if builtin(d)],
                         ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
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
    bad = json.loads(json.dumps(find("PodDisruptionBudget", "vllm")))
    bad["spec"]["selector"] = {"matchLabel": {"app.kubernetes.io/name": "vllm"}}  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kubernetes_validate.latest_version(), strict=True)
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):  # hence the checks below
        kubernetes_validate.validate(find("ServiceMonitor", "lorafleet-gateway"),
                                     kubernetes_validate.latest_version(), strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        f.name for f in K8S.glob("*.yaml") if f.name != "kustomization.yaml")


def test_kustomize_builds_every_manifest() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl here: the kustomization was checked with PyYAML only")
    done = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    built = sorted((d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(done.stdout))
    assert built == sorted((d["kind"], d["metadata"]["name"]) for d in k8s_docs())


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector of matchLabels only (what these manifests use) selects ``labels``."""
    assert set(selector) == {"matchLabels"}, selector
    return bool(selector["matchLabels"]) and selector["matchLabels"].items() <= labels.items()


def pod_labels() -> dict[str, dict[str, str]]:
    """Each workload's pod template labels, by ``Kind/name``."""
    return {f"{d['kind']}/{d['metadata']['name']}": d["spec"]["template"]["metadata"]["labels"]
            for d in k8s_docs() if d["kind"] in ("Deployment", "StatefulSet")}


def test_gateway_replicas_roll_one_at_a_time_on_redis_not_a_volume(
        configmap_config: GatewayConfig) -> None:
    cfg = configmap_config
    deployment = find("Deployment", "lorafleet-gateway")
    spec = deployment["spec"]
    # several replicas; an update adds one new pod and stops an old one only once it is ready
    assert spec["replicas"] >= 2
    assert spec["strategy"] == {"type": "RollingUpdate",
                                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    (http,) = [p for p in container["ports"] if p["name"] == "http"]
    assert http["containerPort"] == cfg.port and cfg.host == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    # the listener closes at SIGTERM: the endpoints drop the pod first, then requests drain
    sleep, seconds = container["lifecycle"]["preStop"]["exec"]["command"]
    pause = int(seconds)
    assert sleep == "sleep"
    assert pause > 0 and pause + cfg.drain_timeout_s < pod["terminationGracePeriodSeconds"]
    # spread over nodes where there are several, without refusing to schedule where not
    (term,) = pod["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert matches(term["podAffinityTerm"]["labelSelector"],
                   spec["template"]["metadata"]["labels"])
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in pod["affinity"][
        "podAntiAffinity"]
    # state in Redis: no state file, no volume but the read-only config, no state PVC
    assert cfg.state_file is None and cfg.redis is not None
    assert [v["name"] for v in pod["volumes"]] == ["config"]
    assert all(m["readOnly"] for m in container["volumeMounts"])
    assert "fsGroup" not in pod["securityContext"]
    assert [d["metadata"]["name"] for d in k8s_docs()
            if d["kind"] == "PersistentVolumeClaim"] == ["lorafleet-adapters"]
    assert not (K8S / "gateway-state-pvc.yaml").exists()


def test_pod_disruption_budget_keeps_a_gateway_replica() -> None:
    pdb = find("PodDisruptionBudget", "lorafleet-gateway")
    spec = pdb["spec"]
    deployment = find("Deployment", "lorafleet-gateway")
    assert spec["minAvailable"] == 1 < deployment["spec"]["replicas"]
    assert "maxUnavailable" not in spec
    assert spec["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    selected = [k for k, labels in pod_labels().items() if matches(spec["selector"], labels)]
    assert selected == ["Deployment/lorafleet-gateway"]
    assert pdb["metadata"]["namespace"] == deployment["metadata"]["namespace"]


def test_redis_statefulset_behind_the_service_the_config_names(
        configmap_config: GatewayConfig) -> None:
    sts, svc = find("StatefulSet", "redis"), find("Service", "redis")
    namespace = find("Deployment", "lorafleet-gateway")["metadata"]["namespace"]
    assert sts["metadata"]["namespace"] == svc["metadata"]["namespace"] == namespace
    assert sts["spec"]["replicas"] == 1 and sts["spec"]["serviceName"] == "redis"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert matches(sts["spec"]["selector"], labels)
    assert matches({"matchLabels": svc["spec"]["selector"]}, labels)
    assert [k for k, pod in pod_labels().items()
            if matches({"matchLabels": svc["spec"]["selector"]}, pod)] == ["StatefulSet/redis"]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "redis:7"
    (port,) = svc["spec"]["ports"]
    (target,) = [p for p in container["ports"] if p["name"] == port["targetPort"]]
    assert port["port"] == target["containerPort"] == 6379
    # the gateway's redis.url is the Service, by name, in its own namespace
    assert configmap_config.redis is not None
    url = urlsplit(configmap_config.redis.url)
    assert url.scheme == "redis" and url.port == port["port"]
    assert url.hostname in ("redis", f"redis.{namespace}", f"redis.{namespace}.svc",
                            f"redis.{namespace}.svc.cluster.local")
    # append-only file on the pod's own volume: runtime adapters outlive a full restart
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    (mount,) = container["volumeMounts"]
    assert mount["name"] == claim["metadata"]["name"]
    assert mount["mountPath"] == args[args.index("--dir") + 1]
    # only the gateway's pods may connect
    policy = find("NetworkPolicy", "redis")
    assert matches(policy["spec"]["podSelector"], labels)
    (rule,) = policy["spec"]["ingress"]
    (source,) = rule["from"]
    assert [k for k, pod in pod_labels().items() if matches(source["podSelector"], pod)] == [
        "Deployment/lorafleet-gateway"]
    assert rule["ports"] == [{"protocol": "TCP", "port": port["port"]}]


def test_admin_token_is_a_secret_the_manifests_do_not_ship() -> None:
    (container,) = find("Deployment", "lorafleet-gateway")["spec"]["template"]["spec"][
        "containers"]
    (env,) = [e for e in container["env"] if e["name"] == "LORAFLEET_ADMIN_TOKEN"]
    ref = env["valueFrom"]["secretKeyRef"]
    assert not ref.get("optional", False)  # the pod does not start without it
    assert ref["name"] not in {d["metadata"]["name"] for d in k8s_docs() if d["kind"] == "Secret"}
    for f in K8S.glob("*.yaml"):
        assert "change-me" not in f.read_text(), f.name


# The fields of a ServiceMonitor's spec and of one endpoint (monitoring.coreos.com/v1, as in
# the Prometheus Operator 0.93's CRD), for a strict check: a misspelt field is an error here,
# as it is for kubernetes-validate.
MONITOR_SPEC = {"attachMetadata", "bodySizeLimit", "convertClassicHistogramsToNHCB",
                "endpoints", "fallbackScrapeProtocol", "jobLabel", "keepDroppedTargets",
                "labelLimit", "labelNameLengthLimit", "labelValueLengthLimit",
                "namespaceSelector", "nativeHistogramBucketLimit",
                "nativeHistogramMinBucketFactor", "podTargetLabels", "sampleLimit",
                "scrapeClass", "scrapeClassicHistograms", "scrapeNativeHistograms",
                "scrapeProtocols", "selector", "selectorMechanism", "serviceDiscoveryRole",
                "targetLabels", "targetLimit"}
MONITOR_ENDPOINT = {"authorization", "basicAuth", "bearerTokenFile", "bearerTokenSecret",
                    "enableHttp2", "filterRunning", "followRedirects", "honorLabels",
                    "honorTimestamps", "interval", "metricRelabelings", "noProxy", "oauth2",
                    "params", "path", "port", "proxyConnectHeader", "proxyFromEnvironment",
                    "proxyUrl", "relabelings", "scheme", "scrapeTimeout", "targetPort",
                    "tlsConfig", "trackTimestampsStaleness"}
# The CRD's pattern for a duration (interval, scrapeTimeout).
DURATION = re.compile(r"(0|(\d+y)?(\d+w)?(\d+d)?(\d+h)?(\d+m)?(\d+s)?(\d+ms)?)")


def test_service_monitor_scrapes_the_gateway_service(configmap_config: GatewayConfig) -> None:
    monitor = find("ServiceMonitor", "lorafleet-gateway")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    spec = monitor["spec"]
    assert set(spec) <= MONITOR_SPEC and {"selector", "endpoints"} <= set(spec)
    services = [d for d in k8s_docs() if d["kind"] == "Service"
                and d["metadata"]["namespace"] == monitor["metadata"]["namespace"]
                and matches(spec["selector"], d["metadata"].get("labels", {}))]
    assert [s["metadata"]["name"] for s in services] == ["lorafleet-gateway"]  # not vllm
    (service,) = services
    assert "namespaceSelector" not in spec  # its own namespace, the Service's
    # a target per endpoint, so every gateway replica is scraped, not one behind the Service
    assert spec.get("serviceDiscoveryRole", "Endpoints") in ("Endpoints", "EndpointSlice")
    (endpoint,) = spec["endpoints"]
    assert set(endpoint) <= MONITOR_ENDPOINT
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == endpoint["port"]]
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] and DURATION.fullmatch(endpoint["interval"])
    # the port serves the gateway's HTTP listener, where /metrics is
    cfg = configmap_config
    pod = find("Deployment", "lorafleet-gateway")["spec"]["template"]
    assert matches({"matchLabels": service["spec"]["selector"]}, pod["metadata"]["labels"])
    (container,) = pod["spec"]["containers"]
    (target,) = [p for p in container["ports"] if p["name"] == port["targetPort"]]
    assert target["containerPort"] == cfg.port
    # /metrics needs a bearer token exactly when the config sets one, from the same Secret
    if cfg.metrics_token_env is None:
        assert not {"authorization", "bearerTokenSecret", "bearerTokenFile"} & set(endpoint)
    else:
        (env,) = [e for e in container["env"] if e["name"] == cfg.metrics_token_env]
        assert endpoint["authorization"]["credentials"] == env["valueFrom"]["secretKeyRef"]


def test_pod_disruption_budget_covers_the_workers_one_at_a_time() -> None:
    pdb = find("PodDisruptionBudget", "vllm")
    spec = pdb["spec"]
    # maxUnavailable holds at any size the actuator scales the StatefulSet to
    assert spec["maxUnavailable"] == 1 and "minAvailable" not in spec
    assert spec["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    selected = [k for k, labels in pod_labels().items() if matches(spec["selector"], labels)]
    assert selected == ["StatefulSet/vllm"]
    sts = find("StatefulSet", "vllm")
    assert pdb["metadata"]["namespace"] == sts["metadata"]["namespace"]
    assert spec["selector"] == sts["spec"]["selector"]


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
    # every replica runs under the account: whichever leads lists pods and patches the scale
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


@pytest.fixture
def configmap_config(monkeypatch: pytest.MonkeyPatch) -> GatewayConfig:
    """The ConfigMap's gateway.yaml, parsed as the gateway does in a pod of the namespace
    (where ``kube.actuator_for`` finds the in-cluster API)."""
    from gateway.fleet.kube import KubeApi

    def in_cluster(cls: type[KubeApi], namespace: str | None = None,
                   account_dir: Any = None) -> KubeApi:  # as a pod in the namespace sees it
        return KubeApi(server="https://10.96.0.1:443", namespace=namespace or "lorafleet")

    monkeypatch.setattr(KubeApi, "in_cluster", classmethod(in_cluster))
    return parse_config(yaml.safe_load(find("ConfigMap", "lorafleet-gateway")["data"][
        "gateway.yaml"]))


def test_gateway_configmap_discovers_and_scales_the_statefulset(
        configmap_config: GatewayConfig) -> None:
    from gateway.fleet.kube import KubernetesActuator, actuator_for

    sts = find("StatefulSet", "vllm")
    cfg = configmap_config
    assert cfg.workers == () and cfg.discovery is not None
    labels = sts["spec"]["template"]["metadata"]["labels"]
    key, value = cfg.discovery.selector.split("=")
    assert labels[key] == value and sts["spec"]["selector"]["matchLabels"][key] == value
    (worker,) = sts["spec"]["template"]["spec"]["containers"]
    assert cfg.discovery.port == worker["ports"][0]["containerPort"]
    actuator = actuator_for(cfg.actuator)  # in a pod of the namespace, as the fixture's
    assert isinstance(actuator, KubernetesActuator)
    assert actuator.statefulset == sts["metadata"]["name"]
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
    assert container["env"][0]["name"] == "LORAFLEET_ADMIN_TOKEN" == cfg.admin_token_env


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
    assert {"gateway", "gateway-b", "redis", "vllm-0", "vllm-1", "prometheus",
            "grafana"} <= set(services)
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
    assert targets == {f"{name}:{cfg.port}" for name in gateways(data)} | {
        "vllm-0:8000", "vllm-1:8000"}
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


# Compose's required-variable form: `docker compose` stops with the message when it is unset
# or empty (`${VAR?msg}`, without the colon, would accept an empty token).
REQUIRED = re.compile(r"\$\{(?P<name>[A-Z_][A-Z0-9_]*):\?(?P<message>[^}]+)\}")


@pytest.mark.parametrize("file", ["docker-compose.yml", "docker-compose.cpu.yml"])
def test_compose_has_no_default_admin_token(file: str) -> None:
    for name in gateways(compose(file)):
        gateway = compose(file)["services"][name]
        value = gateway["environment"]["LORAFLEET_ADMIN_TOKEN"]
        required = REQUIRED.fullmatch(value)
        assert required is not None, f"{name}: not required: {value!r}"
        assert required["name"] == "LORAFLEET_ADMIN_TOKEN"
        assert "LORAFLEET_ADMIN_TOKEN" in required["message"]  # says what to set
        cfg = parse_config(yaml.safe_load((COMPOSE / mounts(gateway)[
            "/etc/lorafleet/gateway.yaml"]).read_text()))
        assert cfg.admin_token_env == "LORAFLEET_ADMIN_TOKEN"
    assert "change-me" not in (COMPOSE / file).read_text()


def gateways(data: dict[str, Any]) -> list[str]:
    """The compose services that run the gateway (``lorafleet serve``)."""
    return sorted(name for name, service in data["services"].items()
                  if service.get("command", [None])[0] == "serve")


@pytest.mark.parametrize(("file", "config"), [("docker-compose.yml", "gateway.yaml"),
                                              ("docker-compose.cpu.yml", "gateway.cpu.yaml")])
def test_compose_runs_two_gateways_on_one_redis(file: str, config: str) -> None:
    data = compose(file)
    services = data["services"]
    names = gateways(data)
    assert names == ["gateway", "gateway-b"]
    redis = services["redis"]
    assert redis["image"] == "redis:7" and "redis-cli" in redis["healthcheck"]["test"]
    assert "ports" not in redis  # only the gateways reach it
    assert mounts(redis)["/data"] in data["volumes"]
    host_ports, hostnames = [], []
    for name in names:
        gateway = services[name]
        url = gateway["environment"]["LORAFLEET_REDIS_URL"]
        assert urlsplit(url).hostname == "redis" and urlsplit(url).port == 6379
        assert gateway["depends_on"]["redis"] == {"condition": "service_healthy"}
        assert mounts(gateway)["/etc/lorafleet/gateway.yaml"] == f"./{config}"
        # the variable turns the file's gateway into a replica on that Redis, as `serve` does
        file_data = yaml.safe_load((COMPOSE / config).read_text())
        assert "redis" not in file_data and "state_file" not in file_data
        sources: dict[str, str] = {}
        config_env.redis_url(file_data, {"LORAFLEET_REDIS_URL": url}, sources)
        cfg = parse_config(file_data)
        assert cfg.redis is not None and cfg.redis.url == url and cfg.host == "0.0.0.0"
        (published,) = gateway["ports"]
        host, container = published.split(":")
        assert int(container) == cfg.port
        host_ports.append(host)
        hostnames.append(gateway["hostname"])
    assert len(set(host_ports)) == len(set(hostnames)) == len(names)


def test_required_variable_pattern() -> None:
    assert REQUIRED.fullmatch("${LORAFLEET_ADMIN_TOKEN:?set LORAFLEET_ADMIN_TOKEN}")
    for value in ("${LORAFLEET_ADMIN_TOKEN:-change-me}", "${LORAFLEET_ADMIN_TOKEN}",
                  "${LORAFLEET_ADMIN_TOKEN?set it}", "${LORAFLEET_ADMIN_TOKEN:?}", "change-me"):
        assert REQUIRED.fullmatch(value) is None, value


def compose_command() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True).returncode == 0:
        return ["docker", "compose"]
    pytest.skip("no docker compose here: the files were checked with PyYAML only")


@pytest.mark.parametrize("file", ["docker-compose.yml", "docker-compose.cpu.yml"])
def test_compose_config_accepts_the_file_and_refuses_without_a_token(file: str) -> None:
    cmd = [*compose_command(), "-f", str(COMPOSE / file), "config", "-q"]
    env = {k: v for k, v in os.environ.items() if k != "LORAFLEET_ADMIN_TOKEN"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                          env={**env, "LORAFLEET_ADMIN_TOKEN": "a-token"})
    assert done.returncode == 0, done.stderr
    for unset in (env, {**env, "LORAFLEET_ADMIN_TOKEN": ""}):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=unset)
        assert done.returncode != 0 and "set LORAFLEET_ADMIN_TOKEN" in done.stderr


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


# Every gateway replica exports the same figures for the fleet: read with max(), never summed
# (a sum doubles them with two replicas) nor raw (one alert, one line per replica).
FLEET_FIGURES = ("lorafleet_gpus_running", "lorafleet_gpus_planned", "lorafleet_gpus_baseline",
                 "lorafleet_worker_state", "lorafleet_gpu_seconds_saved_total")
AGGREGATION = re.compile(r"\b(sum|max|min|avg|count)\s*(?:(?:by|without)\s*\([^)]*\)\s*)?$")


def enclosing_aggregation(expr: str, at: int) -> str | None:
    """The innermost aggregation operator around position ``at`` of a PromQL expression."""
    depth = 0
    for j in range(at - 1, -1, -1):
        if expr[j] == ")":
            depth += 1
        elif expr[j] == "(":
            if depth:
                depth -= 1
            elif found := AGGREGATION.search(expr[:j]):
                return found[1]
    return None


def test_enclosing_aggregation() -> None:
    expr = "sum by (state) (max by (worker, state) (a_1)) + rate(b_2[5m]) + c_3"
    assert enclosing_aggregation(expr, expr.index("a_1")) == "max"
    assert enclosing_aggregation(expr, expr.index("b_2")) is None
    assert enclosing_aggregation(expr, expr.index("c_3")) is None
    assert enclosing_aggregation("sum(rate(b_2[1m]))", 9) == "sum"


def test_fleet_figures_are_not_doubled_by_replicas() -> None:
    dash = json.loads((DEPLOY / "grafana" / "lorafleet.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [r["expr"] for g in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())[
        "groups"] for r in g["rules"]]
    seen = set()
    for expr in exprs:
        for name in FLEET_FIGURES:
            for hit in re.finditer(rf"\b{name}\b", expr):
                assert enclosing_aggregation(expr, hit.start()) == "max", (name, expr)
                seen.add(name)
    assert seen == set(FLEET_FIGURES)


def test_dockerfile_runs_the_gateway_as_a_non_root_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.splitlines()[3] == "FROM python:3.11-slim"
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    assert 'ENTRYPOINT ["lorafleet"]' in text
    assert 'CMD ["serve", "--config", "/etc/lorafleet/gateway.yaml"]' in text
    assert "EXPOSE 8080" in text and "8080/health" in text and "pip install ." in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv*", ".git", "**/__pycache__", ".pytest_cache"} <= set(ignored)
