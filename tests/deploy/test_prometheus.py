"""A real Prometheus scraping a running gateway answers every query the deploy files make.

``lorafleet serve --emulate 3`` runs in a subprocess and takes load through the official
``openai`` client (completions and streamed chat on several adapters, the base model, an
unknown model); Prometheus (Debian's package, installed by ``make prometheus-env``) scrapes it
every second with ``deploy/prometheus/alerts.yml`` loaded. Then every PromQL expression of
``deploy/grafana/lorafleet.json`` and every alert rule (without its final comparison: the
conditions are false on a healthy gateway, so the comparison itself would return nothing) is
evaluated through ``/api/v1/query`` and must return series. Latency quantiles must be finite
numbers; the re-plan time quantiles are NaN (0/0) until the first re-plan, and only they may be.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from openai import NotFoundError, OpenAI

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "lorafleet.json"
LORAFLEET = (sys.executable, "-m", "gateway.cli")
ADAPTERS = ("sql", "chat", "code")
BASE = "llama-3.1-8b"
WINDOW = "1m"  # stands for $__rate_interval: longer than the test, so rates cover all load


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed: run `make prometheus-env` (Debian's "
                    "prometheus package; `make test` does it first)")
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def test_promtool_accepts_the_config_and_rules() -> None:
    promtool = binary("promtool")
    for args in (("check", "config", str(PROM / "prometheus.yml")),
                 ("check", "rules", str(PROM / "alerts.yml")),
                 ("test", "rules", str(PROM / "alerts_test.yml"))):
        done = run(promtool, *args)
        assert done.returncode == 0, f"promtool {' '.join(args)}:\n{done.stdout}{done.stderr}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def start_gateway(tmp: Path) -> tuple[subprocess.Popen[str], str]:
    adapters = tmp / "adapters.yaml"
    adapters.write_text(yaml.safe_dump({"adapters": [
        {"name": n, "rank": 8, "rate": 1.0, "input_tokens": 64, "output_tokens": 16}
        for n in ADAPTERS]}))
    with (tmp / "gateway.log").open("w") as log:  # the child keeps its own copy
        proc = subprocess.Popen(
            [*LORAFLEET, "serve", "--emulate", "3", "--adapters", str(adapters), "--port",
             "0", "--time-scale", "20", "--placement", "round-robin", "--log-level", "WARNING"],
            stdout=subprocess.PIPE, stderr=log, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()  # printed once ready
    if not line.startswith("http://"):
        stop(proc)
        pytest.fail(f"the gateway did not start:\n{(tmp / 'gateway.log').read_text()[-2000:]}")
    return proc, line


def start_prometheus(tmp: Path, gateway: str) -> tuple[subprocess.Popen[bytes], str]:
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(PROM / "alerts.yml")],
        "scrape_configs": [{"job_name": "lorafleet-gateway", "static_configs": [
            {"targets": [gateway.removeprefix("http://")]}]}]}))
    port = free_port()
    with (tmp / "prometheus.log").open("w") as log:
        proc = subprocess.Popen(
            [binary("prometheus"), f"--config.file={config}",
             f"--storage.tsdb.path={tmp / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as response:
                if response.status == 200:
                    return proc, url
        except OSError:  # not listening yet, or 503 while starting
            time.sleep(0.2)
    stop(proc)
    pytest.fail(f"Prometheus did not start:\n{(tmp / 'prometheus.log').read_text()[-2000:]}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    tmp = tmp_path_factory.mktemp("h3deploy-prometheus")
    gateway, url = start_gateway(tmp)
    prometheus = None
    try:
        prometheus, prom_url = start_prometheus(tmp, url)
        yield url, prom_url
    finally:
        if prometheus is not None:
            stop(prometheus)
        stop(gateway)


def api(prom: str, path: str, **params: str) -> Any:
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{prom}{path}?{query}", timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", (path, params, body)
    return body["data"]


def drive_load(gateway: str, rounds: int = 2) -> int:
    """Completions and streamed chats on every adapter and the base model, and a request
    for an unknown model (404), in ``rounds`` rounds 2 s (two scrapes) apart; returns the
    count, the 404s included. The unknown model's series (``adapter="<unknown>"``) start at
    its first 404: the second gives them an increase to rate, so its latency quantiles are
    numbers rather than 0/0 however long the queries below wait."""
    client = OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0)
    sent = 0
    for i in range(rounds):
        if i:
            time.sleep(2)
        for model in (*ADAPTERS, BASE):
            done = client.completions.create(model=model, prompt=f"select {i} from t",
                                             max_tokens=8)
            assert done.usage is not None and done.usage.completion_tokens == 8
            chunks = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": f"hello {i}"}],
                max_tokens=8, stream=True, stream_options={"include_usage": True})
            assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 1
            sent += 2
        with pytest.raises(NotFoundError):
            client.completions.create(model="no-such-adapter", prompt="x", max_tokens=4)
        sent += 1
    return sent


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, Grafana's variables replaced
    (``$__range``: the "today" of the GPU-hours panel, the window here too)."""
    data = json.loads(DASHBOARD.read_text())
    values = {"$__rate_interval": WINDOW, "$__interval": WINDOW, "$__range": WINDOW,
              "${adapter:regex}": ".*", "$adapter": ".*"}
    out = []
    for panel in data["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in values.items():
                expr = expr.replace(var, value)
            assert "$" not in expr, f"unsubstituted Grafana variable in {expr}"
            out.append((panel["title"], expr))
    return out


_COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)\s*(bool\s+)?[-+0-9.e]+\s*$")


def without_comparison(expr: str) -> str:
    """The alert expression less its final ``<op> <number>`` (outside any brackets)."""
    match = _COMPARISON.search(expr.strip())
    assert match is not None, f"alert expression does not end in a comparison: {expr}"
    left = expr.strip()[:match.start()]
    assert left.count("(") == left.count(")") and left.count("{") == left.count("}"), expr
    return left.strip()


def alert_queries() -> dict[str, str]:
    groups = yaml.safe_load((PROM / "alerts.yml").read_text())["groups"]
    return {r["alert"]: without_comparison(r["expr"]) for g in groups for r in g["rules"]}


def test_without_comparison() -> None:
    assert without_comparison('lorafleet_worker_state{state="down"} == 1') == \
        'lorafleet_worker_state{state="down"}'
    assert without_comparison('sum(rate(x{status!="5"}[5m])) > 0.05\n') == \
        'sum(rate(x{status!="5"}[5m]))'


def test_every_dashboard_and_alert_query_returns_data(stack: tuple[str, str]) -> None:
    gateway, prom = stack
    deadline = time.monotonic() + 15
    while not api(prom, "/api/v1/query", query="lorafleet_gpus_running")["result"]:
        assert time.monotonic() < deadline, "Prometheus never scraped the gateway"
        time.sleep(0.5)
    sent = drive_load(gateway)
    queries = {**{f"dashboard panel {title!r}: {q}": q for title, q in dashboard_queries()},
               **{f"alert {name}: {q}": q for name, q in alert_queries().items()}}
    assert len(queries) >= 30
    deadline = time.monotonic() + 25
    results: dict[str, list[Any]] = {}
    while True:
        total = api(prom, "/api/v1/query", query="sum(lorafleet_requests_total)")["result"]
        scraped = bool(total) and float(total[0]["value"][1]) >= sent
        results = {k: api(prom, "/api/v1/query", query=q)["result"]
                   for k, q in queries.items()}
        if (scraped and all(results.values())) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert scraped, f"Prometheus did not scrape {sent} requests in time: {total}"
    empty = [k for k, r in results.items() if not r]
    assert not empty, "queries without data:\n" + "\n".join(empty)
    for key, result in results.items():
        values = [float(s["value"][1]) for s in result]
        if "lorafleet_replan_seconds" not in key:  # NaN until the first re-plan: 0/0
            assert all(v == v for v in values), f"NaN in {key}: {result}"
    labels = api(prom, "/api/v1/label/adapter/values", **{"match[]": "lorafleet_adapter_rate"})
    assert sorted(labels) == sorted(ADAPTERS)  # the dashboard's $adapter variable
    p99 = {s["metric"]["adapter"]: float(s["value"][1]) for s in results[
        "alert LorafleetAdapterStarving: " + alert_queries()["LorafleetAdapterStarving"]]}
    assert set(p99) == {*ADAPTERS, BASE} and all(0 < v < 10 for v in p99.values())
    # kube-state-metrics style: every state of each worker present, exactly one at 1 (up:
    # round-robin placed an adapter on each of the 3 workers), and their GPUs running
    states: dict[str, dict[str, float]] = {}
    for series in api(prom, "/api/v1/query", query="lorafleet_worker_state")["result"]:
        labels = series["metric"]
        states.setdefault(labels["worker"], {})[labels["state"]] = float(series["value"][1])
    assert len(states) == 3, states
    for worker, by_state in states.items():
        assert by_state == {"up": 1, "draining": 0, "retired": 0, "down": 0}, worker
    (running,) = api(prom, "/api/v1/query", query="lorafleet_gpus_running")["result"]
    assert float(running["value"][1]) == 3


def test_alert_rules_load_and_evaluate(stack: tuple[str, str]) -> None:
    _, prom = stack
    deadline = time.monotonic() + 10
    while True:
        rules = [r for g in api(prom, "/api/v1/rules")["groups"] for r in g["rules"]]
        if (rules and all(r.get("lastEvaluation", "").startswith("20") for r in rules)) or \
                time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert sorted(r["name"] for r in rules) == sorted(alert_queries())
    assert all(r["health"] == "ok" for r in rules), rules
    firing = [r["name"] for r in rules if r["state"] != "inactive"]
    assert firing == [], f"alerts firing on a healthy gateway: {firing}"
