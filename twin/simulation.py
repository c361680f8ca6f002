"""The SimPy driver: workers advance their engines while an arrival process feeds them.

``Worker.run`` is a SimPy process (schedule -> ``yield env.timeout(step_time)`` -> update):
each iteration runs one step, or a run of identical decode steps, and waits for it to end. A
run stops before the next arrival while an arrival could be admitted; when admission is
blocked (KV, ``max_num_seqs``) new requests join ``waiting`` behind the blocked head and
cannot change the batch, so the run goes on.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any

import simpy

from twin.engine import EngineCore
from twin.events import EngineEvent
from twin.memory import MemoryPlan, plan_memory
from twin.profile import CalibrationProfile
from twin.request import Request
from twin.results import SimulationResult, summarize
from twin.scenario import Scenario
from twin.specs import EngineConfig, GpuSpec, ModelSpec
from twin.workload import Arrival

__all__ = ["ArrivalSource", "Worker", "build_engine", "simulate"]


def build_engine(model: ModelSpec, gpu: GpuSpec, engine: EngineConfig,
                 profile: CalibrationProfile, adapter_ranks: dict[str, int], *,
                 fast_path: bool = True, record_steps: bool = False,
                 track_deferred: bool = False) -> tuple[EngineCore, MemoryPlan]:
    """An engine for one worker; raises ``InsufficientMemoryError`` as vLLM would."""
    plan = plan_memory(model, gpu, engine, profile.memory)
    step_model = profile.step_model(model, gpu, engine)
    core: EngineCore | None = None

    def load_ns(lora_int_id: int, tier: str) -> int:
        assert core is not None
        rank = adapter_ranks.get(core.lora_name(lora_int_id), engine.max_lora_rank)
        size = model.adapter_bytes(rank)
        seconds = profile.load.cpu_to_gpu_s(size)
        if tier == "cpu":
            seconds += profile.load.disk_s(size)
        return round(seconds * 1e9)

    core = EngineCore(engine, step_model, plan.num_blocks, lora_load_ns=load_ns,
                      fast_path=fast_path, record_steps=record_steps,
                      track_deferred=track_deferred,
                      request_stall_ns=round(profile.request_cpu_s * 1e9))
    return core, plan


class ArrivalSource:
    """Arrivals in time order, handed to ``dispatch`` at their times plus ``delay_ns``: the
    profile's per-request overhead (HTTP, tokenising) before a request reaches the engine.
    Requests keep their arrival time, so latencies include the overhead."""

    def __init__(self, env: simpy.Environment, arrivals: Sequence[Arrival],
                 dispatch: Callable[[Request], None], delay_ns: int = 0) -> None:
        self.env = env
        self._arrivals = arrivals
        self._dispatch = dispatch
        self._delay_ns = delay_ns
        self._next = 0
        self._ids: Iterator[int] = iter(range(1 << 62))

    def peek_ns(self) -> float:
        """Time of the next undelivered arrival (inf when none is left)."""
        if self._next < len(self._arrivals):
            return self._arrivals[self._next].time_ns + self._delay_ns
        return math.inf

    def run(self) -> Generator[simpy.Event, Any, None]:
        for a in self._arrivals:
            at = a.time_ns + self._delay_ns
            if at > self.env.now:
                yield self.env.timeout(at - self.env.now)
            self._next += 1
            self._dispatch(Request(f"r{next(self._ids)}", a.adapter, a.prompt_tokens,
                                   a.max_tokens, a.time_ns))


class Worker:
    """A SimPy process around one ``EngineCore``."""

    def __init__(self, env: simpy.Environment, *, engine: EngineCore,
                 next_arrival_ns: Callable[[], float], end_ns: int,
                 on_progress: Callable[[float], None] | None = None) -> None:
        self.env = env
        self._on_progress = on_progress
        self._reported_ns = 0
        self.engine = engine
        self._next_arrival_ns = next_arrival_ns
        self.end_ns = end_ns
        self.requests: list[Request] = []
        self._wake: simpy.Event | None = None

    def submit(self, request: Request) -> None:
        self.engine.add_request(request)
        self.requests.append(request)
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def handle_events(self, events: list[EngineEvent]) -> None:
        """What the engine reported in one step or run (a subclass's hook; nothing here)."""

    def run(self) -> Generator[simpy.Event, Any, None]:
        engine = self.engine
        while engine.now_ns < self.end_ns:
            if not engine.has_unfinished_requests:
                self._wake = self.env.event()
                yield self._wake | self.env.timeout(max(0, self.end_ns - self.env.now))
                self._wake = None
                engine.now_ns = max(engine.now_ns, int(self.env.now))
                continue
            engine.now_ns = max(engine.now_ns, int(self.env.now))
            engine.step_run(self.end_ns, self._next_arrival_ns())
            self.handle_events(engine.take_events())
            if self._on_progress is not None and engine.now_ns - self._reported_ns > 10**10:
                self._reported_ns = engine.now_ns
                self._on_progress(min(engine.now_ns, self.end_ns) / 1e9)
            yield self.env.timeout(max(0, engine.now_ns - self.env.now))


def simulate(scenario: Scenario, *, fast_path: bool = True, record_steps: bool = False,
             on_progress: Callable[[float], None] | None = None,
             ) -> tuple[SimulationResult, EngineCore]:
    """Run one worker under the scenario's workload for ``duration_s``; ``on_progress`` is
    called with the simulated seconds done, every 10 simulated seconds."""
    started = time.perf_counter()
    ranks = {a.name: a.rank for a in scenario.workload.adapters}
    engine, plan = build_engine(scenario.model, scenario.gpu, scenario.engine,
                                scenario.profile, ranks, fast_path=fast_path,
                                record_steps=record_steps)
    arrivals, clipped = scenario.workload.generate(scenario.engine.max_model_len)
    env = simpy.Environment()
    end_ns = round(scenario.workload.duration_s * 1e9)
    worker: Worker | None = None

    def dispatch(request: Request) -> None:
        assert worker is not None
        worker.submit(request)

    source = ArrivalSource(env, arrivals, dispatch,
                           round(scenario.profile.request_overhead_s * 1e9))
    worker = Worker(env, engine=engine, next_arrival_ns=source.peek_ns, end_ns=end_ns,
                    on_progress=on_progress)
    env.process(source.run())
    env.process(worker.run())
    env.run(until=end_ns)
    engine.settle()  # requests still decoding count the tokens they have produced
    itl, weights = engine.itl_arrays()
    result = summarize(
        worker.requests, duration_s=scenario.workload.duration_s,
        end_ns=max(end_ns, engine.now_ns), itl_ns=itl, itl_weight=weights,
        preemptions=engine.num_preemptions, lora_loads=engine.lora_cache.num_loads,
        kv_blocks=plan.num_blocks, kv_cache_tokens=plan.kv_cache_tokens, steps=engine.g,
        wall_seconds=time.perf_counter() - started, clipped_lengths=clipped)
    return result, engine
