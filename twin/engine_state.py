"""The state of one vLLM worker's engine and what changes it from outside a step.

``EngineState`` holds the scheduler's queues (``waiting``, ``running``, the aggregate
``DecodeSet``), the KV block count, the LoRA caches, the counters, and the request and adapter
API the drivers call (``add_request``, ``abort_request``, ``add_lora``), with the bookkeeping
that takes a request out of ``running`` (finish, preemption). ``twin.engine.EngineCore`` adds
the scheduling rules and the clock on top.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np

from twin.decode_set import DecodeSet
from twin.events import EngineEvent, EngineStats, EventKind, StepLog
from twin.lora_cache import LoRACache
from twin.request import FinishReason, Request, RequestStatus
from twin.specs import EngineConfig
from twin.step_time import StepTimeModel
from twin.waiting import WaitingQueue

__all__ = ["EngineState"]


class EngineState:
    """One worker's engine state on an integer nanosecond clock.

    Parameters
    ----------
    engine
        vLLM's engine options.
    step_model
        Step time in seconds for a batch.
    num_blocks
        KV blocks from the memory model (one is vLLM's null block).
    lora_load_ns
        ``(lora_int_id, tier) -> ns``: disk->CPU (``"cpu"``) or CPU->GPU (``"gpu"``) load time.
    request_stall_ns
        Engine time each added request takes from the next step (a CPU server's API process
        shares the engine's core); decode runs then stop at every arrival.
    """

    def __init__(self, engine: EngineConfig, step_model: StepTimeModel, num_blocks: int, *,
                 lora_load_ns: Callable[[int, str], int] | None = None,
                 fast_path: bool = True, record_steps: bool = False,
                 track_deferred: bool = False, request_stall_ns: int = 0) -> None:
        if num_blocks - 1 < math.ceil(engine.max_model_len / engine.block_size):
            # vLLM refuses to start then (see twin.memory), so no request can be stranded.
            raise ValueError(f"{num_blocks} KV blocks cannot hold one max_model_len "
                             f"({engine.max_model_len}) sequence")
        self.config, self.step_model, self.num_blocks = engine, step_model, num_blocks
        self.free_blocks = num_blocks - 1  # the null block
        self.fast_path, self.track_deferred = fast_path, track_deferred
        self.request_stall_ns = request_stall_ns
        load = lora_load_ns or (lambda _id, _tier: 0)
        self.lora_cache = LoRACache(engine.max_loras, engine.cpu_loras,
                                    disk_load_ns=lambda i: load(i, "cpu"),
                                    activate_ns=lambda i: load(i, "gpu"))
        self.waiting = WaitingQueue()
        self.running: dict[Request, None] = {}
        self.decoding = DecodeSet(engine.block_size)
        self.prefilling: Request | None = None
        self.requests: dict[str, Request] = {}
        self.now_ns = 0
        self.g, self.fast_steps = 0, 0  # steps run so far, of which inside decode runs
        self.steps = StepLog() if record_steps else None
        self.itl_ns: list[np.ndarray] = []  # per step: ITL value, with weight in itl_weight
        self.itl_weight: list[np.ndarray] = []
        # The same for steps recorded one at a time (numpy's per-call cost, not per step).
        self.itl_one_ns: list[int] = []
        self.itl_one_weight: list[int] = []
        self.admission_open = True
        self._pending_stall_ns = 0
        self._events: list[EngineEvent] = []
        self._lora_ids: dict[str, int] = {}
        self._lora_names: dict[int, str] = {}
        self._next_lora_id = itertools.count(1)
        self.num_preemptions = self.prompt_tokens = self.generation_tokens = 0
        self.num_finished = self.num_aborted = 0

    # -- requests and adapters -----------------------------------------------------------------

    def lora_id(self, name: str | None) -> int:
        """The engine's id for adapter ``name`` (new names get the next id; None is 0)."""
        if name is None:
            return 0
        lid = self._lora_ids.get(name)
        if lid is None:
            lid = self._lora_ids[name] = next(self._next_lora_id)
            self._lora_names[lid] = name
        return lid

    def lora_name(self, lora_int_id: int) -> str:
        return self._lora_names[lora_int_id]

    def add_lora(self, name: str, now_ns: int | None = None) -> int:
        """The API's load: a new id for ``name``, loaded into both cache tiers. The load runs
        between steps, so it delays the next step. Returns its duration."""
        lid = next(self._next_lora_id)
        self._lora_ids[name] = lid
        self._lora_names[lid] = name
        record = self.lora_cache.add_adapter(lid)
        duration = record.duration_ns if record else 0
        self._pending_stall_ns += duration
        self._events.append(EngineEvent(EventKind.LORA_LOADED, now_ns or self.now_ns, None, lid))
        return duration

    def add_request(self, request: Request) -> None:
        """Queue ``request`` (its ``arrival_ns`` is kept). ``max_tokens`` is capped so that
        prompt plus output fit in ``max_model_len``, as vLLM stops at that length."""
        limit = self.config.max_model_len
        if request.prompt_tokens >= limit:
            raise ValueError(f"prompt of {request.prompt_tokens} tokens does not fit "
                             f"max_model_len {limit}")
        if request.request_id in self.requests:
            raise ValueError(f"duplicate request id {request.request_id!r}")
        request.max_tokens = min(request.max_tokens, limit - request.prompt_tokens)
        request.lora_int_id = self.lora_id(request.adapter)
        self._pending_stall_ns += self.request_stall_ns
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def abort_request(self, request_id: str, now_ns: int | None = None) -> bool:
        request = self.requests.get(request_id)
        if request is None or request.is_finished:
            return False
        if request.status is RequestStatus.RUNNING:
            self._leave_running(request)
        else:
            self.waiting.remove(request)
        self._finish(request, now_ns if now_ns is not None else self.now_ns, aborted=True)
        return True

    @property
    def has_unfinished_requests(self) -> bool:
        return bool(self.running) or bool(self.waiting)

    def settle(self) -> None:
        """Write the lazily kept token counts back into every request in decode (for a
        summary of a run that ends with requests in flight)."""
        for request in self.decoding.members:
            self._settle_decode(request, self.g)

    def computed_tokens(self, request: Request) -> int:
        if request in self.decoding:
            return DecodeSet.computed(request, self.g)
        return request.num_computed_tokens

    def itl_arrays(self, *, clear: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Every decode step's inter-token latency (ns) and its weight (the sequences that
        got a token in it), in no particular order; ``clear``: forget them (a live engine
        reports what came since it last asked)."""
        values = np.concatenate([*self.itl_ns, np.array(self.itl_one_ns, dtype=np.int64)])
        weights = np.concatenate([*self.itl_weight,
                                  np.array(self.itl_one_weight, dtype=np.int64)])
        if clear:
            for kept in (self.itl_ns, self.itl_weight, self.itl_one_ns, self.itl_one_weight):
                kept.clear()
        return values, weights

    def take_events(self) -> list[EngineEvent]:
        events, self._events = self._events, []
        return events

    # -- leaving running -----------------------------------------------------------------------

    def _finish(self, request: Request, now: int, *, aborted: bool) -> None:
        self.free_blocks += request.num_blocks
        request.num_blocks = 0
        request.finish_ns = now
        request.status = (RequestStatus.FINISHED_ABORTED if aborted
                          else RequestStatus.FINISHED_LENGTH_CAPPED)
        request.finish_reason = FinishReason.ABORT if aborted else FinishReason.LENGTH
        if aborted:
            self.num_aborted += 1
        else:
            self.num_finished += 1
            request.last_token_ns = now
        self._events.append(EngineEvent(EventKind.FINISHED, now, request.request_id,
                                        1 if aborted else 0))

    def _settle_decode(self, request: Request, g: int) -> None:
        """Write back the lazily kept counts of a request leaving decode at step ``g``."""
        computed = DecodeSet.computed(request, g)
        request.num_computed_tokens = computed
        request.num_blocks = math.ceil(computed / self.config.block_size)
        request.num_output_tokens = computed - request.prompt_tokens + 1

    def _leave_running(self, request: Request) -> None:
        """Take ``request`` out of ``running``; its blocks stay counted in ``num_blocks``."""
        if request in self.decoding:
            self.decoding.remove(request)
            self._settle_decode(request, self.g)
        if self.prefilling is request:
            self.prefilling = None
        del self.running[request]

    def _preempt(self, request: Request) -> None:
        self._leave_running(request)
        self.free_blocks += request.num_blocks
        request.num_blocks = 0
        request.num_computed_tokens = 0
        request.status = RequestStatus.PREEMPTED
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.prepend(request)
        self._events.append(EngineEvent(EventKind.PREEMPTED, self.now_ns, request.request_id))

    # -- state ---------------------------------------------------------------------------------

    def stats(self) -> EngineStats:
        usable = self.num_blocks - 1
        deferred = self.waiting.num_deferred() if self.track_deferred else 0
        return EngineStats(
            num_running=len(self.running), num_waiting=len(self.waiting),
            num_waiting_deferred=deferred,
            kv_cache_usage=1.0 - self.free_blocks / usable,
            num_preemptions=self.num_preemptions, prompt_tokens=self.prompt_tokens,
            generation_tokens=self.generation_tokens, num_finished=self.num_finished,
            num_aborted=self.num_aborted, num_lora_loads=self.lora_cache.num_loads,
            running_lora_ids=tuple(sorted({r.lora_int_id for r in self.running
                                           if r.lora_int_id})),
            waiting_lora_ids=tuple(sorted(i for i in self.waiting.adapters() if i)),
        )
