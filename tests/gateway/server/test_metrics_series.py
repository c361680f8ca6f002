"""The labelled series dashboards and alert rules query exist, at 0, from the first scrape."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.keys import GATEWAY_METRICS
from gateway.server.app import create_app
from gateway.server.config import parse_config
from gateway.server.metrics import MigrationOutcome, ReplanTrigger


def _samples() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    cfg = parse_config({"base_model": "base", "workers": ["http://127.0.0.1:1"], "adapters": [
        {"name": n, "rank": 8, "rate": 1, "path": f"/ad/{n}"} for n in ("sql", "chat")]})
    text = generate_latest(create_app(cfg)[GATEWAY_METRICS].registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def test_labelled_series_are_precreated_at_zero() -> None:
    samples = _samples()
    for adapter in ("sql", "chat"):
        assert samples[("gateway_adapter_rate", (("adapter", adapter),))] == 0
    for outcome in ("ok", "failed", "rolled_back"):
        assert samples[("gateway_migrations_total", (("outcome", outcome),))] == 0
    for trigger in ("periodic", "admin", "drain", "worker_down", "startup"):
        assert samples[("gateway_replans_total", (("trigger", trigger),))] == 0
    for model in ("base", "sql", "chat"):  # histograms: rate() sees the first requests
        assert samples[("gateway_ttft_seconds_count", (("adapter", model),))] == 0
        assert samples[("gateway_e2e_seconds_count", (("adapter", model),))] == 0
    assert {o.value for o in MigrationOutcome} == {"ok", "failed", "rolled_back"}
    assert {t.value for t in ReplanTrigger} >= {"periodic", "admin", "drain", "worker_down",
                                                 "startup"}
