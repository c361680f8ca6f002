"""``lorafleet demo``: the gateway in front of an emulated fleet under a demo load, showing
the GPUs it uses against naive placements (``make run``).

The load (``gateway.demo.load``) needs the ``openai`` client, imported only when the demo
runs."""

from gateway.demo.fleet import (
    DemoFleet,
    FleetReading,
    FleetSpec,
    plan_demo,
    read_metrics,
    start_demo,
)
from gateway.demo.stats import DemoStats
from gateway.demo.workload import DEMO_RANKS, Arrivals, demo_adapters

__all__ = [
    "DEMO_RANKS",
    "Arrivals",
    "DemoFleet",
    "DemoStats",
    "FleetReading",
    "FleetSpec",
    "demo_adapters",
    "plan_demo",
    "read_metrics",
    "start_demo",
]
