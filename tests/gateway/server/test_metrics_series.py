"""The labelled series dashboards and alert rules query exist, at 0, from the first scrape."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import parse_config
from gateway.fleet.metrics import MigrationOutcome, ReplanTrigger
from gateway.server.app import create_app
from gateway.server.keys import GATEWAY_METRICS
from tests.gateway.server.factories import demands, gateway_stack


def _samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    cfg = parse_config({"base_model": "base", "workers": ["http://127.0.0.1:1"], "adapters": [
        {"name": n, "rank": 8, "rate": 1, "path": f"/ad/{n}"} for n in ("sql", "chat")]})
    text = generate_latest(create_app(cfg)[GATEWAY_METRICS].registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_labelled_series_are_precreated_at_zero() -> None:
    samples = _samples()
    for adapter in ("sql", "chat"):
        assert samples[("lorafleet_adapter_rate", (("adapter", adapter),))] == 0
    for outcome in ("ok", "failed", "rolled_back"):
        assert samples[("lorafleet_migrations_total", (("outcome", outcome),))] == 0
    for trigger in ("periodic", "admin", "drain", "worker_down", "startup"):
        assert samples[("lorafleet_replans_total", (("trigger", trigger),))] == 0
    for model in ("base", "sql", "chat"):  # histograms: rate() sees the first requests
        assert samples[("lorafleet_ttft_seconds_count", (("adapter", model),))] == 0
        assert samples[("lorafleet_e2e_seconds_count", (("adapter", model),))] == 0
    assert samples[("lorafleet_adapters_moved_total", ())] == 0
    for policy in ("one_per_adapter", "round_robin"):  # since the app was made (1 GPU saved)
        assert 0 <= samples[("lorafleet_gpu_seconds_saved_total", (("policy", policy),))] < 1
    assert samples[("lorafleet_gpus_baseline", (("policy", "one_per_adapter"),))] == 2
    for state in ("up", "draining", "retired", "down"):  # one worker, up until told otherwise
        assert samples[("lorafleet_worker_state", (("state", state), ("worker", "w0")))] == (
            state == "up")
    assert not [name for name, _ in samples if name.startswith("gateway_")]
    assert {o.value for o in MigrationOutcome} == {"ok", "failed", "rolled_back"}
    assert {t.value for t in ReplanTrigger} >= {"periodic", "admin", "drain", "worker_down",
                                                 "startup"}


async def test_a_metrics_token_guards_the_adapter_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Client keys hide adapters from each other; ``metrics_token_env`` keeps ``/metrics``
    (every adapter's name) from the clients too."""
    monkeypatch.setenv("LORAFLEET_TEST_METRICS", "scrape-secret")
    async with gateway_stack(tmp_path, demands("sql"),
                             metrics_token_env="LORAFLEET_TEST_METRICS") as s:
        async def scrape(headers: dict[str, str]) -> tuple[int, str]:
            async with s.session.get(f"{s.url}/metrics", headers=headers) as resp:
                return resp.status, await resp.text()

        status, body = await scrape({})
        assert status == 401 and "sql" not in body
        assert json.loads(body)["error"]["message"].endswith("Bearer <metrics token>.")
        status, body = await scrape({"Authorization": "Bearer nope"})
        assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key"
        status, body = await scrape({"Authorization": "Bearer scrape-secret"})
        assert status == 200 and 'adapter="sql"' in body
    monkeypatch.delenv("LORAFLEET_TEST_METRICS")
    async with gateway_stack(tmp_path / "off", demands("sql"),
                             metrics_token_env="LORAFLEET_TEST_METRICS") as s, \
            s.session.get(f"{s.url}/metrics") as resp:
        assert resp.status == 403 and "LORAFLEET_TEST_METRICS" in await resp.text()
