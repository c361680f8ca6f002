"""The actuator and Kubernetes discovery wired into the gateway.

A command actuator (a shell command appending the requested count to a file) is asked for
more workers when the plan needs more GPUs than run, and for fewer when the highest-numbered
workers retire. The Kubernetes actuator and discovery run against the fake API of
``test_kube.py``: scaling the StatefulSet up starts an emulated worker and lists its pod, the
gateway discovers it, the next re-plan places adapters on it, and the openai client's requests
meanwhile all succeed.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.config import GatewayConfig, PlacementMode, WorkerEndpoint, parse_config
from gateway.config.engine import fallback_engine
from gateway.config.fleet import ActuatorSpec, DiscoverySpec
from gateway.control.planning import round_robin
from gateway.control.scaling import ScaleOutcome, Scaler, down_target
from gateway.emulator.app import create_app as create_worker_app
from gateway.emulator.app import serve as serve_worker
from gateway.fleet.kube import (
    ActuatorError,
    CommandActuator,
    NoActuator,
    actuator_for,
)
from gateway.fleet.metrics import ReplanTrigger
from gateway.fleet.registry import Fleet, WorkerStatus
from gateway.server.app import create_app
from gateway.server.emulated import EmulatedFleet, scaffold_entries, worker_configs
from gateway.server.keys import CONTROL, FLEET
from planner.demand import AdapterDemand
from tests.gateway.control.test_replan import steady_load
from tests.gateway.fleet.test_kube import SELECTOR, TOKEN, FakeKube, pod
from tests.gateway.server.factories import BASE, MAX_MODEL_LEN, Stack, demands, gateway_stack
from twin.errors import ConfigError
from twin.routing import Placement, RoutingPolicy, WorkerPlacement

HEAVY = 7.0  # req/s per adapter: six of them need three A100s (the planner says), not two


def heavy(n: int = 6) -> list[AdapterDemand]:
    return [AdapterDemand(name=f"h{i}", rank=8, rate=HEAVY) for i in range(n)]


def counts(path: Path) -> list[int]:
    return [int(x) for x in path.read_text().split()] if path.exists() else []


async def until(check: Any, timeout: float = 30.0, what: str = "") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


# -- configuration ---------------------------------------------------------------------------

DISCOVERY = {"kind": "kubernetes", "selector": SELECTOR, "server": "https://k8s:6443",
             "namespace": "llm", "interval_s": 5}
ADAPTERS = [{"name": "sql", "rank": 32, "rate": 1, "path": "/ad/sql"}]


def test_config_takes_discovery_actuator_and_worker_engine() -> None:
    cfg = parse_config({"base_model": "b", "discovery": DISCOVERY, "adapters": ADAPTERS,
                        "actuator": {"kind": "command", "command": "scale {workers}"},
                        "worker_engine": {"max_loras": 4, "max_num_seqs": 64}})
    assert cfg.workers == () and cfg.discovery is not None
    assert (cfg.discovery.selector, cfg.discovery.interval_s) == (SELECTOR, 5.0)
    assert cfg.actuator == ActuatorSpec(kind="command", command="scale {workers}")
    assert actuator_for(cfg.actuator) == CommandActuator("scale {workers}", 60.0)
    engine = cfg.worker_engine
    assert engine is not None
    # given options win; the rest come from planning.fallback_engine (rank 32 served)
    assert (engine.max_loras, engine.max_num_seqs, engine.max_lora_rank) == (4, 64, 32)
    assert engine.cpu_loras >= 4
    static = parse_config({"base_model": "b", "workers": ["http://10.0.0.1:8000"],
                           "adapters": ADAPTERS})
    assert static.actuator is None and static.discovery is None
    assert isinstance(actuator_for(static.actuator), NoActuator)
    assert static.worker_engine == fallback_engine([static.adapters[0].demand], "a100-80gb",
                                                   8192)


@pytest.mark.parametrize(("change", "field"), [
    ({}, "workers"),  # neither source
    ({"workers": ["http://x:1"], "discovery": DISCOVERY}, "discovery"),  # both
    ({"discovery": {**DISCOVERY, "port": 0}}, "discovery.port"),
    ({"discovery": {**DISCOVERY, "interval_s": 0}}, "discovery.interval_s"),
    ({"discovery": {**DISCOVERY, "selector": None}}, "discovery.selector"),
    ({"discovery": DISCOVERY, "actuator": {"kind": "ssh"}}, "actuator.kind"),
    ({"discovery": DISCOVERY, "actuator": {"kind": "kubernetes", "server": "https://k"}},
     "actuator.statefulset"),
    ({"discovery": DISCOVERY, "actuator": {"kind": "command", "command": "x {n}"}},
     "actuator.command"),
    ({"discovery": DISCOVERY, "worker_engine": {"max_loras": 0}}, "worker_engine.max_loras"),
    ({"discovery": DISCOVERY, "worker_engine": {"max_lora_rank": 7}},
     "worker_engine.max_lora_rank"),
    ({"discovery": DISCOVERY, "worker_engine": {"max_loras": "4"}}, "worker_engine.max_loras"),
    ({"discovery": DISCOVERY, "worker_engine": {"enable_lora": False}},
     "worker_engine.enable_lora"),
    ({"discovery": DISCOVERY, "worker_engine": [4]}, "worker_engine"),
])
def test_config_errors_name_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"base_model": "b", "adapters": ADAPTERS, **change})
    assert info.value.field == field, info.value


# -- the scaling decisions --------------------------------------------------------------------

def test_down_target_keeps_workers_up_to_the_highest_holder() -> None:
    assert down_target(["w0", "w1", "w2"], [True, True, True]) is None
    assert down_target(["w0", "w1", "w2"], [True, False, False]) == 1
    assert down_target(["w0", "w1", "w2"], [False, True, False]) == 2  # w0 idles, stays
    assert down_target(["w0", "w1"], [False, False]) == 1  # never to zero
    # by StatefulSet ordinal, not list position (pods may be found out of order)
    assert down_target(["vllm-0", "vllm-2", "vllm-1"], [True, False, True]) == 2
    assert down_target(["vllm-0", "vllm-2", "vllm-1"], [True, True, False]) is None


@dataclass
class Recorder:
    calls: list[int]
    fail: bool = False

    async def scale_to(self, workers: int) -> None:
        self.calls.append(workers)
        if self.fail:
            raise ActuatorError("quota exceeded")


def fleet_of(n: int, holding: list[bool]) -> Fleet:
    fleet = Fleet(BASE, [WorkerEndpoint(f"w{i}", f"http://127.0.0.1:{i + 1}") for i in range(n)],
                  {}, RoutingPolicy.PLACEMENT)
    fleet.set_plan(Placement(tuple(WorkerPlacement(name=f"w{i}", shares={"a": 1.0} if h else {})
                                   for i, h in enumerate(holding))))
    return fleet


async def test_scaler_asks_once_counts_failures_and_waits_for_a_scale_up() -> None:
    rec = Recorder([])
    scaler = Scaler(rec)
    fleet = fleet_of(2, [True, True])
    up = await scaler.after(fleet, added=2)
    assert up is not None and (up.workers, up.outcome) == (4, ScaleOutcome.OK)
    again = await scaler.after(fleet, added=2)  # same size while the pods start: not re-asked
    assert again is not None and again.outcome is ScaleOutcome.SKIPPED
    assert rec.calls == [4]
    # while the two new workers are arriving, the empty top is not scaled away
    assert await scaler.after(fleet_of(3, [True, False, False]), added=0) is None
    fresh = Scaler(rec)
    down = await fresh.after(fleet_of(4, [True, True, False, False]), added=0)
    assert down is not None and down.workers == 2 and rec.calls == [4, 2]
    gone = fleet_of(4, [True, True, True, False])
    gone.set_gone(3)  # discovery lists it no more: not counted as present
    assert await Scaler(rec).after(gone, added=0) is None
    broken = Scaler(Recorder([], fail=True))
    failed = await broken.after(fleet, added=1)
    assert failed is not None and failed.outcome is ScaleOutcome.FAILED
    assert failed.error is not None and "quota" in failed.error
    retried = await broken.after(fleet, added=1)  # a failure is asked again
    assert retried is not None and retried.outcome is ScaleOutcome.FAILED
    assert Scaler(None).actuator == NoActuator()


# -- the command actuator on a live fleet ---------------------------------------------------

async def test_command_actuator_asked_for_more_workers_then_fewer(tmp_path: Path) -> None:
    out = tmp_path / "scaled"
    actuator = ActuatorSpec(kind="command", command=f"echo {{workers}} >> {out}", timeout_s=10)
    async with gateway_stack(tmp_path / "a", heavy(), workers=2, roomy=True,
                             replan_interval_s=0, observe_window_s=600,
                             validate_replans=False, actuator=actuator) as stack:
        fleet, replanner = stack.app[FLEET], stack.app[CONTROL].replanner
        async with steady_load(stack, [d.name for d in heavy()]) as tally:
            result = await replanner.replan(ReplanTrigger.ADMIN)
        added = result["diff"]["added"]
        assert added, result["diff"]  # the plan needs more GPUs than the two that run
        assert counts(out) == [2 + len(added)]
        assert result["actuator"]["direction"] == "up"
        assert result["actuator"]["workers"] == 2 + len(added)
        assert result["actuator"]["outcome"] == "ok"
        assert not tally.failed, tally.failed[:5]
        assert tally.ok > 10
        assert fleet.gpus_active == 2  # folded onto the running workers meanwhile
        scrape = await (await stack.session.get(f"{stack.url}/metrics")).text()
        assert 'lorafleet_scale_requests_total{direction="up",outcome="ok"} 1.0' in scrape

    out.unlink()
    names = [f"a{i}" for i in range(8)]
    async with gateway_stack(tmp_path / "b", demands(*names), workers=4, roomy=True,
                             replan_interval_s=0, observe_window_s=600,
                             validate_replans=False, actuator=actuator) as stack:
        fleet = stack.app[FLEET]
        async with steady_load(stack, names) as tally:
            result = await stack.app[CONTROL].replanner.replan(ReplanTrigger.ADMIN, fresh=True)
        assert result["migration"]["outcome"] == "ok"
        retired = result["migration"]["retired"]
        assert "w3" in retired, result["migration"]  # the highest-numbered first
        assert fleet.plan is not None
        left = 1 + max(i for i, wp in enumerate(fleet.plan.workers) if wp.shares)
        assert left < 4
        assert counts(out) == [left]
        assert result["actuator"] is not None
        assert (result["actuator"]["direction"], result["actuator"]["workers"]) == ("down",
                                                                                  left)
        assert not tally.failed, tally.failed[:5]


# -- Kubernetes: the actuator scales the StatefulSet, discovery finds the new pod ------------

def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def host_of(ordinal: int) -> str:
    return f"127.0.0.{ordinal + 2}"  # one loopback address per pod, one port for all


class ScalingKube(FakeKube):
    """The fake API with a StatefulSet whose pods are emulated workers: a scale-up starts
    the new ordinals' workers and lists their pods as ready; a scale-down stops them."""

    def __init__(self, start: Any, stop: Any, replicas: int) -> None:
        super().__init__([pod(f"vllm-{i}", host_of(i)) for i in range(replicas)],
                         replicas=replicas, page=2)
        self.start, self.stop = start, stop

    async def patch_scale(self, request: web.Request) -> web.Response:
        before = self.replicas
        response = await super().patch_scale(request)
        for i in range(before, self.replicas):
            await self.start(i)
        for i in range(self.replicas, before):
            await self.stop(i)
        self.pods = [pod(f"vllm-{i}", host_of(i)) for i in range(self.replicas)]
        return response


@asynccontextmanager
async def kube_stack(folder: Path, adapters: list[AdapterDemand], token: Path,
                     replicas: int = 2) -> AsyncIterator[tuple[Any, ScalingKube]]:
    port = free_port(host_of(0))
    engine = fallback_engine(adapters, "a100-80gb", MAX_MODEL_LEN)
    plan = round_robin(adapters, ["x"], max_model_len=MAX_MODEL_LEN)
    template = worker_configs(plan, served_model_name=BASE, time_scale=200.0)[0]
    runners: dict[int, web.AppRunner] = {}

    async def start(i: int) -> None:
        app = create_worker_app(replace(template, engine=engine, seed=i))
        runners[i] = await serve_worker(app, host_of(i), port)

    async def stop(i: int) -> None:
        runner = runners.pop(i, None)
        if runner is not None:
            await runner.cleanup()

    fake = ScalingKube(start, stop, replicas)
    for i in range(replicas):
        await start(i)
    kube = TestServer(fake.app())
    await kube.start_server()
    access = {"server": str(kube.make_url("")), "namespace": "llm", "token_path": str(token)}
    cfg = GatewayConfig(
        base_model=BASE, workers=(), adapters=scaffold_entries(adapters, folder),
        placement=PlacementMode.ROUND_ROBIN, max_model_len=MAX_MODEL_LEN,
        health_interval_s=0.2, connect_timeout_s=1.0, replan_interval_s=0,
        observe_window_s=600, validate_replans=False,
        discovery=DiscoverySpec(kind="kubernetes", selector=SELECTOR, port=port, interval_s=0.2,
                                **access),
        actuator=ActuatorSpec(kind="kubernetes", statefulset="vllm", **access),
        worker_engine=engine)
    app = create_app(cfg)
    try:
        async with TestServer(app) as server, aiohttp.ClientSession() as session:
            await until(lambda: app[FLEET].ready, what="the gateway to be ready")
            url = str(server.make_url("")).rstrip("/")
            yield Stack(url, app, EmulatedFleet([], [], []), session), fake
    finally:
        await kube.close()
        for i in list(runners):
            await stop(i)


@pytest.fixture
def token(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


async def test_kubernetes_scale_up_is_discovered_and_placed_on(tmp_path: Path,
                                                               token: Path) -> None:
    adapters = heavy()
    async with kube_stack(tmp_path, adapters, token) as (stack, fake):
        fleet, replanner = stack.app[FLEET], stack.app[CONTROL].replanner
        assert [w.endpoint.name for w in fleet.workers] == ["vllm-0", "vllm-1"]
        port = fleet.workers[0].endpoint.url.rsplit(":", 1)[1]
        assert [w.endpoint.url for w in fleet.workers] == [
            f"http://{host_of(i)}:{port}" for i in range(2)]
        async with steady_load(stack, [d.name for d in adapters]) as tally:
            result = await replanner.replan(ReplanTrigger.ADMIN)
            want = 2 + len(result["diff"]["added"])
            assert want > 2 and fake.replicas == want, result
            assert result["actuator"]["outcome"] == "ok"
            # discovery finds the new pods; the re-plan it triggers places adapters there
            await until(lambda: len(fleet.workers) == want, what="the new pods")
            await until(lambda: any(fleet.router is not None
                                    and fleet.router.placement.workers[i].shares
                                    for i in range(2, want)), timeout=60,
                        what="adapters placed on a discovered worker")
            served_before = tally.ok
            await until(lambda: tally.ok > served_before + 20, what="more requests")
        assert not tally.failed, tally.failed[:5]
        triggers = [h["trigger"] for h in replanner.history]
        assert "discovery" in triggers
        new = [i for i in range(2, want) if fleet.workers[i].resident]
        assert new and all(fleet.workers[i].up for i in new)
        assert (await stack.worker_states())[f"vllm-{new[0]}"] == "up"

        # scaled away from outside: the vanished pod is gone, its adapters re-planned
        top = len(fleet.workers) - 1
        fake.pods = fake.pods[:-1]
        await until(lambda: fleet.workers[top].status is WorkerStatus.GONE,
                    what="the vanished pod marked gone")
        await until(lambda: fleet.plan is not None and not fleet.plan.workers[top].shares,
                    timeout=60, what="its adapters re-planned away")
        assert fleet.router is not None and not fleet.router.placement.workers[top].shares
        # it left the fleet: no series to page on
        assert f"vllm-{top}" not in await stack.worker_states()


async def test_first_plan_wanting_more_workers_asks_the_actuator(tmp_path: Path) -> None:
    out = tmp_path / "scaled"
    actuator = ActuatorSpec(kind="command", command=f"echo {{workers}} >> {out}", timeout_s=10)
    async with gateway_stack(tmp_path / "a", demands("x", "y"), workers=2, roomy=True,
                             planned_gpus=3, replan_interval_s=0, actuator=actuator) as stack:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while not out.exists() and loop.time() < deadline:
            await asyncio.sleep(0.1)
        assert counts(out) == [3]
        assert stack.app[CONTROL].replanner.scaler.last is not None
