"""The fleet's state as replicas share it: what the leader publishes
(``gateway.shared.published``) and how a follower adopts it.

The document is ``GatewayState``'s JSON (placement, registry, planned GPUs, engines: what
the state file holds) plus what a follower needs to route as the leader does: each
worker's URL, the adapters each one holds (resident), and the baselines' GPU counts.

Examples
--------
>>> from gateway.config import AdapterEntry, WorkerEndpoint
>>> from planner import AdapterDemand
>>> from twin.routing import RoutingPolicy
>>> sql = AdapterEntry(AdapterDemand(name="sql", rank=8, rate=1.0), "/ad/sql")
>>> leader = Fleet("base", [WorkerEndpoint("w0", "http://a")], {"sql": sql},
...               RoutingPolicy.PLACEMENT)
>>> leader.set_plan(Placement((WorkerPlacement(name="w0", shares={"sql": 1.0}),)))
>>> leader.set_resident(0, {"sql"})
>>> follower = Fleet("base", [WorkerEndpoint("w0", "http://a")], {}, RoutingPolicy.PLACEMENT)
>>> adopt(follower, document(leader))
>>> sorted(follower.adapters), follower.holding(), follower.workers[0].resident, follower.synced
(['sql'], {'w0': frozenset({'sql'})}, {'sql'}, True)
"""

from __future__ import annotations

import json
from typing import Any

from gateway.config import WorkerEndpoint
from gateway.control.state import GatewayState, snapshot
from gateway.fleet.registry import Fleet
from twin.routing import Placement, WorkerPlacement

__all__ = ["adopt", "document"]


def document(fleet: Fleet) -> bytes:
    """The fleet's state to publish."""
    data: dict[str, Any] = snapshot(fleet).to_json()
    data["workers"] = {w.endpoint.name: w.endpoint.url for w in fleet.workers}
    data["resident"] = {w.endpoint.name: sorted(w.resident) for w in fleet.workers}
    data["baselines"] = dict(fleet.baselines)
    return json.dumps(data, separators=(",", ":")).encode()


def adopt(fleet: Fleet, raw: bytes) -> None:
    """Route by a published state: its workers (those this replica lacks are added), its
    registry, its engines, its placement and who holds what. ``ConfigError`` (naming the
    field) or ``ValueError`` when it is not a state: the fleet is left as it was."""
    data = json.loads(raw)
    state = GatewayState.from_json(data)  # checks every field before anything changes
    urls = data.get("workers") if isinstance(data.get("workers"), dict) else {}
    resident = data.get("resident") if isinstance(data.get("resident"), dict) else {}
    names = [w.endpoint.name for w in fleet.workers]
    for name, url in urls.items():
        if name not in names and isinstance(url, str):
            fleet.add_worker(WorkerEndpoint(str(name), url), state.engines.get(name))
    names = [w.endpoint.name for w in fleet.workers]
    fleet.adapters = {a.demand.name: a for a in state.adapters if not a.demand.is_base}
    for worker in fleet.workers:
        name = worker.endpoint.name
        worker.engine = state.engines.get(name, worker.engine)
        held = resident.get(name, ())
        worker.resident = {str(a) for a in held} if isinstance(held, list) else set()
    fleet.planned_gpus = state.planned_gpus
    baselines = data.get("baselines")
    if isinstance(baselines, dict):
        fleet.baselines = {str(k): int(v) for k, v in baselines.items()
                           if isinstance(v, int) and not isinstance(v, bool)}
    fleet.set_plan(Placement(tuple(WorkerPlacement(name=n, shares=dict(state.placement.get(
        n, {}))) for n in names)))
    fleet.synced = True
