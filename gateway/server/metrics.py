"""The gateway's Prometheus metrics, in a registry of its own (``gateway_`` prefix).

Labels stay bounded: per adapter (registered names only; anything else is ``UNKNOWN``) or per
worker, never both. Worker gauges are read from the fleet at scrape time.
"""

from __future__ import annotations

import enum
from functools import partial
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

from gateway.server.registry import Fleet

__all__ = ["UNKNOWN", "GatewayMetrics", "MigrationOutcome", "ReplanTrigger"]

UNKNOWN = "<unknown>"  # the adapter label of requests that name no registered model

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0,
                    80.0, 160.0)


class MigrationOutcome(enum.StrEnum):
    """``gateway_migrations_total{outcome}``: every value is exported from the start at 0."""

    OK = "ok"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


class ReplanTrigger(enum.StrEnum):
    """``gateway_replans_total{trigger}``: every value is exported from the start at 0."""

    PERIODIC = "periodic"
    ADMIN = "admin"
    DRAIN = "drain"
    WORKER_DOWN = "worker_down"
    STARTUP = "startup"
    ON_DEMAND = "on_demand"  # a request for a registered adapter that no worker holds
    DISCOVERY = "discovery"  # discovery found a worker: place adapters on it
    SURGE = "surge"  # an adapter's recent traffic is well above the rate it was planned for
    STARVATION = "starvation"  # a worker starves requests (gateway/server/guard.py)


def _up(fleet: Fleet, index: int) -> float:
    return 1.0 if fleet.workers[index].up else 0.0


class GatewayMetrics:
    """The gateway's series; ``registry`` is what ``GET /metrics`` exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # Labelled children of the per-request series, by metric and label values (labels
        # are bounded: registered adapters and UNKNOWN, HTTP statuses): ``labels()`` takes a
        # lock and builds tuples, once per child here
        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}
        self.requests = Counter("gateway_requests", "Requests answered, by HTTP status.",
                                ["adapter", "status"], registry=r)
        self.ttft = Histogram("gateway_ttft_seconds", "Time to the first streamed token.",
                              ["adapter"], buckets=_LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("gateway_e2e_seconds", "Request latency, end to end.",
                             ["adapter"], buckets=_LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("gateway_tokens", "Tokens from the workers' usage reports.",
                              ["adapter", "kind"], registry=r)
        self.worker_up = Gauge("gateway_worker_up", "1 if the worker answers health checks.",
                               ["worker"], registry=r)
        self.outstanding = Gauge("gateway_worker_outstanding",
                                 "Requests the gateway has in flight on the worker.",
                                 ["worker"], registry=r)
        self.gpus_active = Gauge("gateway_gpus_active", "GPUs of the workers with adapters "
                                 "routed to them (tensor_parallel_size each).",
                                 registry=r)
        self.gpus_baseline = Gauge("gateway_gpus_baseline",
                                   "GPUs a naive placement would use.", ["policy"], registry=r)
        self.gpus_saved = Gauge("gateway_gpus_saved",
                                "GPUs saved against one GPU per adapter.", registry=r)
        self.adapter_rate = Gauge("gateway_adapter_rate",
                                  "Observed arrival rate (requests/s) over the observer's window.",
                                  ["adapter"], registry=r)
        self.migrations = Counter("gateway_migrations", "Adapter moves, by outcome.",
                                  ["outcome"], registry=r)
        self.replans = Counter("gateway_replans", "Re-plans, by what triggered them.",
                               ["trigger"], registry=r)
        self.replan_seconds = Histogram("gateway_replan_seconds",
                                        "Time to plan and validate a new placement.",
                                        buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
                                        registry=r)
        self.scale_requests = Counter("gateway_scale_requests",
                                      "Requests to the actuator for more or fewer workers, "
                                      "by direction and outcome.", ["direction", "outcome"],
                                      registry=r)
        self.worker_speed = Gauge("gateway_worker_speed",
                                  "Share of the profile's capacity the plan assumes the worker "
                                  "delivers: learned from its own windows (the fleet's figure "
                                  "until it has enough), lowered while the starvation guard "
                                  "holds a penalty on it (1.0: the profile).", ["worker"],
                                  registry=r)
        self.starvation_findings = Counter(
            "gateway_starvation_findings", "Starvation evidence the guard acted on, by kind "
            "(lockout, ttft, queue: gateway/server/guard.py).", ["evidence"], registry=r)
        self.surrogate_error = Gauge("gateway_surrogate_error",
                                     "Relative error of the inter-token latency predicted at "
                                     "the speeds the plan assumed against the observed, over "
                                     "the last window (before learning from it).",
                                     registry=r)

    def bind(self, fleet: Fleet, adapters: int) -> None:
        """Read the fleet's gauges at scrape time (``adapters``: the registered count at
        start, kept for callers; the baseline follows the fleet's registry)."""
        for i in range(len(fleet.workers)):
            self.bind_worker(fleet, i)
        fleet.on_join(partial(self.bind_worker, fleet))  # workers discovered at run time
        self.gpus_active.set_function(lambda: fleet.gpus_active)
        # one GPU per registered LoRA adapter, following adapters added or removed at run time
        tp = fleet.tensor_parallel_size
        self.gpus_baseline.labels("one_per_adapter").set_function(
            lambda: len(fleet.adapters) * tp)
        self.gpus_saved.set_function(lambda: len(fleet.adapters) * tp - fleet.gpus_active)
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
        for evidence in ("lockout", "ttft", "queue"):  # gateway/server/guard.py
            self.starvation_findings.labels(evidence)
        for direction in ("up", "down"):  # gateway/server/scaling.py
            for result in ("ok", "failed", "skipped"):
                self.scale_requests.labels(direction, result)

    def bind_worker(self, fleet: Fleet, index: int) -> None:
        """Worker ``index``'s gauges, read from the fleet at scrape time."""
        name = fleet.workers[index].endpoint.name
        self.outstanding.labels(name).set_function(partial(fleet.outstanding, index))
        self.worker_up.labels(name).set_function(partial(_up, fleet, index))
        self.worker_speed.labels(name).set(1.0)

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
