"""The gateway's Prometheus metrics, in a registry of its own (``lorafleet_`` prefix).

Labels stay bounded: per adapter (registered names only; anything else is ``UNKNOWN``) or per
worker, never both. The fleet's series (worker states, GPUs running, planned and of the
baselines, GPU-seconds saved) are read from the fleet at scrape time
(``gateway.fleet.fleet_metrics``).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from gateway.fleet.fleet_metrics import FleetCollector
from gateway.fleet.registry import Fleet

__all__ = ["LATENCY_BUCKETS", "UNKNOWN", "GatewayMetrics", "MigrationOutcome", "ReplanTrigger"]

UNKNOWN = "<unknown>"  # the adapter label of requests that name no registered model

# Time to first token and end-to-end latency: 50 ms to 60 s, finely enough that p50 and p99
# come out within a bucket's width of the truth in the range LLM serving lives in (a 10 s
# starvation bound among them).
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0,
                   30.0, 45.0, 60.0)


class MigrationOutcome(enum.StrEnum):
    """``lorafleet_migrations_total{outcome}``: every value is exported from the start at 0.
    A migration that moves no adapter is not counted."""

    OK = "ok"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


class ReplanTrigger(enum.StrEnum):
    """``lorafleet_replans_total{trigger}``: every value is exported from the start at 0."""

    PERIODIC = "periodic"
    ADMIN = "admin"
    DRAIN = "drain"
    WORKER_DOWN = "worker_down"
    STARTUP = "startup"
    ON_DEMAND = "on_demand"  # a request for a registered adapter that no worker holds
    DISCOVERY = "discovery"  # discovery found a worker: place adapters on it
    SURGE = "surge"  # an adapter's recent traffic is well above the rate it was planned for
    STARVATION = "starvation"  # a worker starves requests (gateway/fleet/guard.py)


class GatewayMetrics:
    """The gateway's series; ``registry`` is what ``GET /metrics`` exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # Labelled children of the per-request series, by metric and label values (labels
        # are bounded: registered adapters and UNKNOWN, HTTP statuses): ``labels()`` takes a
        # lock and builds tuples, once per child here
        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}
        self.fleet_series: FleetCollector | None = None  # ``bind``
        self.requests = Counter("lorafleet_requests", "Requests answered, by HTTP status.",
                                ["adapter", "status"], registry=r)
        self.ttft = Histogram("lorafleet_ttft_seconds", "Time to the first streamed token.",
                              ["adapter"], buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("lorafleet_e2e_seconds", "Request latency, end to end.",
                             ["adapter"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("lorafleet_tokens", "Tokens from the workers' usage reports.",
                              ["adapter", "kind"], registry=r)
        self.adapter_rate = Gauge("lorafleet_adapter_rate",
                                  "Observed arrival rate (requests/s) over the observer's window.",
                                  ["adapter"], registry=r)
        self.migrations = Counter("lorafleet_migrations", "Migrations that moved adapters "
                                  "(ok), or whose loads failed and were undone (rolled_back), "
                                  "by outcome; a re-plan that moves nothing counts none.",
                                  ["outcome"], registry=r)
        self.adapters_moved = Counter("lorafleet_adapters_moved", "Adapters the migrations "
                                      "moved: loaded on a worker that did not serve them, or "
                                      "taken off one that did.", registry=r)
        self.replans = Counter("lorafleet_replans", "Re-plans, by what triggered them.",
                               ["trigger"], registry=r)
        self.replan_seconds = Histogram("lorafleet_replan_seconds",
                                        "Time to plan and validate a new placement.",
                                        buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
                                        registry=r)
        self.scale_requests = Counter("lorafleet_scale_requests",
                                      "Requests to the actuator for more or fewer workers, "
                                      "by direction and outcome.", ["direction", "outcome"],
                                      registry=r)
        self.worker_speed = Gauge("lorafleet_worker_speed",
                                  "Share of the profile's capacity the plan assumes the worker "
                                  "delivers: learned from its own windows (the fleet's figure "
                                  "until it has enough), lowered while the starvation guard "
                                  "holds a penalty on it (1.0: the profile).", ["worker"],
                                  registry=r)
        self.starvation_findings = Counter(
            "lorafleet_starvation_findings", "Starvation evidence the guard acted on, by kind "
            "(lockout, ttft, queue: gateway/fleet/guard.py).", ["evidence"], registry=r)
        self.surrogate_error = Gauge("lorafleet_surrogate_error",
                                     "Relative error of the inter-token latency predicted at "
                                     "the speeds the plan assumed against the observed, over "
                                     "the last window (before learning from it).",
                                     registry=r)

    def bind(self, fleet: Fleet, adapters: int) -> None:
        """Export the fleet's series, read at scrape time (``adapters``: the registered
        count at start, kept for callers; the baseline follows the fleet's registry)."""
        self.fleet_series = FleetCollector(fleet)
        self.registry.register(self.fleet_series)
        # Labelled series exist from the first scrape (at 0), so dashboards and alert rules
        # have data before the first request, migration or re-plan.
        for adapter in sorted(fleet.adapters):
            self.adapter_rate.labels(adapter).set(0)
        for model in (fleet.base_model, *sorted(fleet.adapters)):
            self.ttft.labels(model)  # so rate() counts a model's first requests too
            self.e2e.labels(model)
        for outcome in MigrationOutcome:
            self.migrations.labels(outcome.value)
        for trigger in ReplanTrigger:
            self.replans.labels(trigger.value)
        for evidence in ("lockout", "ttft", "queue"):  # gateway/fleet/guard.py
            self.starvation_findings.labels(evidence)
        for direction in ("up", "down"):  # gateway/control/scaling.py
            for result in ("ok", "failed", "skipped"):
                self.scale_requests.labels(direction, result)

    def tick(self, fleet: Fleet, speed: Callable[[str], float]) -> None:
        """The replanner's loop, each second: sample the fleet's GPUs for the GPU-seconds
        saved, and export the speed each worker is planned at (``speed(worker)``); workers
        that left the fleet lose their series."""
        if self.fleet_series is not None:
            self.fleet_series.tick()
        for i, worker in enumerate(fleet.workers):
            name = worker.endpoint.name
            if fleet.phase(i) is None:
                self.worker_speed.remove(name)  # a no-op when it has none
            else:
                self.worker_speed.labels(name).set(speed(name))

    def _child(self, metric: MetricWrapperBase, *labels: str) -> Any:
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe(self, adapter: str, status: int, e2e_s: float) -> None:
        self._child(self.requests, adapter, str(status)).inc()
        self._child(self.e2e, adapter).observe(e2e_s)

    def first_token(self, adapter: str, ttft_s: float) -> None:
        self._child(self.ttft, adapter).observe(ttft_s)

    def usage(self, adapter: str, prompt: int, completion: int) -> None:
        self._child(self.tokens, adapter, "prompt").inc(prompt)
        self._child(self.tokens, adapter, "completion").inc(completion)
