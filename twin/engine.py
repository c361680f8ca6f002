"""The engine core of one vLLM worker: scheduler, KV blocks, LoRA caches and step times.

One engine, driven two ways: offline by the SimPy driver (``twin.simulation``) and live by the
emulated worker's asyncio driver. Both call ``add_request``/``abort_request`` and advance time
with ``step_run``/``advance_until``, which return the events that happened.

The scheduling rules are vLLM 0.32's ``v1/core/sched/scheduler.py`` ``schedule()``:

- running requests first, in order, each taking ``min(remaining, budget)`` tokens; if its KV
  blocks do not fit, the *last* running request is preempted (recompute: blocks freed, computed
  tokens reset, put at the front of ``waiting``) until they fit or the request itself is the
  victim, which ends the running pass;
- no waiting request is admitted in a step that preempted;
- waiting requests are admitted FCFS while budget and ``max_num_seqs`` allow; one whose LoRA
  would be one too many (``max_loras``) is skipped and the scan goes on (``WaitingQueue``);
  the full prompt must fit in the free blocks (``scheduler_reserve_full_isl``, default on) or
  the scan stops; without chunked prefill a prompt larger than the budget stops it too.

``bench/scheduler_lockstep.py`` checks these rules against vLLM's own ``Scheduler`` class on the
same arrivals and step times: every step and every request's times agree, the ``max_loras``
lockout (three adapters on two slots) and preemptions included.

Requests in decode are kept in aggregate (``DecodeSet``). At most one running request is in
prefill, and it is the last in ``running``: a partial chunk exhausts the budget, so nothing is
admitted after it until its prompt is done. Between events that can change the batch, runs of
identical decode steps are advanced at once with numpy (``fast_path``); the result is the same
as stepping one step at a time, to the nanosecond (tests/twin/test_fast_path.py).

Prefix caching is not modelled: synthetic prompts share no prefix, and a preempted request
recomputes in full.

The queues, counters and the request and adapter API are ``twin.engine_state.EngineState``;
this module adds the scheduling passes, step timing and decode runs.
"""

from __future__ import annotations

import math

import numpy as np

from twin.decode_set import DecodeSet
from twin.engine_state import EngineState
from twin.events import EngineEvent, EventKind, StepRecord
from twin.request import Request, RequestStatus

__all__ = ["EngineCore"]

_MAX_RUN = 1 << 16


class EngineCore(EngineState):
    """One worker's engine: ``EngineState`` (parameters there) with vLLM's scheduling rules
    and the clock: ``step_run`` / ``advance_until`` run steps and return their events."""

    # -- time ----------------------------------------------------------------------------------

    def advance_until(self, until_ns: int) -> list[EngineEvent]:
        """Run every step that starts before ``until_ns``; return the events."""
        while self.has_unfinished_requests and self.now_ns < until_ns:
            self.step_run(until_ns)
        return self.take_events()

    def step_run(self, until_ns: float, arrival_ns: float = math.inf) -> None:
        """One step, then (with ``fast_path``) the run of identical decode steps after it.

        No step starts at or after ``until_ns``; while a new arrival could be admitted
        (``admission_open``), none starts at or after ``arrival_ns`` either.
        """
        if not self.has_unfinished_requests or self.now_ns >= until_ns:
            return
        pure_decode = self._step()
        if not (self.fast_path and pure_decode and self.decoding):
            return
        wake = self.admission_open or self.request_stall_ns
        self._decode_run(min(until_ns, arrival_ns) if wake else until_ns)

    # -- one step ------------------------------------------------------------------------------

    def _step(self) -> bool:
        """Schedule, time and apply one step. True if it was a pure decode step with no
        admission, preemption, completion or adapter load."""
        cfg = self.config
        bs = cfg.block_size
        g = self.g
        budget = cfg.max_num_batched_tokens
        preempted = False
        need = self.decoding.blocks_needed(g)
        if need <= self.free_blocks:
            self.free_blocks -= need
            budget -= len(self.decoding)
        else:
            budget = self._schedule_with_preemption(budget)
            preempted = True
        # Every request left in self.decoding is scheduled in this step.
        context = self.decoding.context_tokens(g)
        loras = set(self.decoding.lora_counts)
        prefills: list[tuple[Request, int]] = []
        p = self.prefilling
        if p is not None and not preempted and budget > 0:
            chunk = self._chunk(p, budget)
            blocks = math.ceil((p.num_computed_tokens + chunk) / bs) - p.num_blocks
            if blocks <= self.free_blocks:
                self.free_blocks -= blocks
                p.num_blocks += blocks
                prefills.append((p, chunk))
                budget -= chunk
                if p.lora_int_id:
                    loras.add(p.lora_int_id)
            else:  # vLLM preempts the last running request: the prefill itself
                self._preempt(p)
                preempted = True
        if not preempted:
            self._admit(budget, loras, prefills)
        loads = self.lora_cache.prepare_step(loras) if loras else []
        load_ns = sum(r.duration_ns for r in loads)
        prefill_tokens = sum(c for _, c in prefills)
        lora_tokens = self.decoding.lora_seqs + sum(c for r, c in prefills if r.lora_int_id)
        context += sum(r.num_computed_tokens + c for r, c in prefills)
        n_sched = len(self.decoding)
        if n_sched == 0 and not prefills:
            if not self.running and self.waiting and not preempted:
                head = self.waiting.first()
                assert head is not None
                raise ValueError(f"request {head.request_id!r} can never be admitted: "
                                 f"{head.num_tokens} tokens need more KV blocks than the "
                                 f"{self.num_blocks - 1} usable")
            return False  # everything runnable was preempted; the next step re-admits
        seconds = self.step_model.predict(float(prefill_tokens), float(n_sched), float(context),
                                          float(len(loras)), float(lora_tokens))
        duration = round(seconds * 1e9) + load_ns + self._pending_stall_ns
        self._pending_stall_ns = 0
        start = self.now_ns
        end = start + duration
        self._events.extend(EngineEvent(EventKind.LORA_LOADED, start, None, r.lora_int_id)
                            for r in loads)
        if self.steps is not None:
            self.steps.append(StepRecord(
                start_ns=start, duration_ns=duration, prefill_tokens=prefill_tokens,
                decode_seqs=n_sched, context_tokens=context, distinct_adapters=len(loras),
                lora_load_ns=load_ns, num_running=len(self.running),
                num_waiting=len(self.waiting)))
        self.now_ns = end
        finished = self._finish_decodes(g, n_sched, duration, end)
        self.g = g + 1
        self._finish_prefills(prefills, end)
        return not (preempted or prefills or loads or finished)

    def _long_prefill_cap(self, tokens: int) -> int:
        """``long_prefill_token_threshold``, which vLLM ignores with one request in all."""
        threshold = self.config.long_prefill_token_threshold
        if 0 < threshold < tokens and len(self.running) + len(self.waiting) > 1:
            return threshold
        return tokens

    def _chunk(self, request: Request, budget: int) -> int:
        remaining = request.num_tokens - request.num_computed_tokens
        return min(self._long_prefill_cap(remaining), budget)

    def _admit(self, budget: int, loras: set[int], prefills: list[tuple[Request, int]]) -> None:
        """The waiting pass of ``schedule()``; sets ``admission_open``."""
        cfg = self.config
        bs = cfg.block_size
        waiting = self.waiting
        self.admission_open = False
        stop_seq: float = math.inf
        while budget > 0:
            if len(self.running) >= cfg.max_num_seqs:
                break
            full = len(loras) >= cfg.max_loras
            request = waiting.first_among(loras) if full else waiting.first()
            if request is None:
                self.admission_open = True  # an arrival could be admitted
                break
            num_new = self._long_prefill_cap(request.num_tokens)
            if not cfg.enable_chunked_prefill and num_new > budget:
                stop_seq = request.queue_seq
                break
            num_new = min(num_new, budget)
            # scheduler_reserve_full_isl: the whole sequence must fit before admission.
            if math.ceil(min(request.num_tokens, cfg.max_model_len) / bs) > self.free_blocks:
                stop_seq = request.queue_seq
                break
            blocks = math.ceil(num_new / bs)
            self.free_blocks -= blocks
            request.num_blocks = blocks
            request.num_computed_tokens = 0
            waiting.pop(request)
            self.running[request] = None
            request.status = RequestStatus.RUNNING
            if request.first_scheduled_ns is None:
                request.first_scheduled_ns = self.now_ns
                self._events.append(EngineEvent(EventKind.SCHEDULED, self.now_ns,
                                                request.request_id))
            if request.lora_int_id:
                loras.add(request.lora_int_id)
            prefills.append((request, num_new))
            budget -= num_new
        if self.track_deferred and len(loras) >= cfg.max_loras and waiting:
            waiting.mark_skipped(int(min(stop_seq, 1 << 62)), frozenset(loras))
        if not waiting:
            self.admission_open = True

    def _schedule_with_preemption(self, budget: int) -> int:
        """The running pass when decodes do not all fit: vLLM's loop, request by request.
        Returns the budget left."""
        bs = self.config.block_size
        g = self.g
        for request in list(self.running):
            if request not in self.running:
                break  # preempted from the tail: the pass has reached the victims
            if request is self.prefilling:
                break  # handled by the caller (it is the last running request)
            need = 1 if DecodeSet.computed(request, g) % bs == 0 else 0
            while need > self.free_blocks:
                victim = next(reversed(self.running))
                self._preempt(victim)
                if victim is request:
                    break
            if request not in self.running:
                break
            self.free_blocks -= need
            budget -= 1
        # Requests in decode after a preemption have been scheduled or preempted; the
        # ones left in self.decoding were all scheduled.
        return budget

    # -- step results --------------------------------------------------------------------------

    def _finish_decodes(self, g: int, n: int, duration: int, end: int) -> bool:
        if n:
            self._record_decode_step(duration, end)
        return self._complete_decodes(g, end)

    def _record_decode_step(self, duration: int, end: int) -> None:
        """``_record_decode_steps`` for one step, without numpy (most steps are one)."""
        n = len(self.decoding)
        self.generation_tokens += n
        self.itl_one_ns.append(duration)
        self.itl_one_weight.append(n)
        if self.decoding.streaming:
            self._events.extend(EngineEvent(EventKind.TOKEN, end, r.request_id)
                                for r in self.decoding.streaming)

    def _record_decode_steps(self, durations: np.ndarray, ends: np.ndarray) -> None:
        """Tokens, inter-token latencies and streamed token events of decode steps that all
        ran the whole decode set."""
        n = len(self.decoding)
        self.generation_tokens += n * len(durations)
        self.itl_ns.append(durations)
        self.itl_weight.append(np.full(len(durations), n, dtype=np.int64))
        if self.decoding.streaming:
            ids = [r.request_id for r in self.decoding.streaming]
            self._events.extend(EngineEvent(EventKind.TOKEN, int(t), rid)
                                for t in ends for rid in ids)

    def _complete_decodes(self, last_step: int, end: int) -> bool:
        """Finish the requests in decode whose last token came in step ``last_step``."""
        done = self.decoding.pop_finished(last_step)
        for request in done:
            self._settle_decode(request, last_step + 1)
            del self.running[request]
            self._finish(request, end, aborted=False)
        return bool(done)

    def _finish_prefills(self, prefills: list[tuple[Request, int]], end: int) -> None:
        for request, chunk in prefills:
            request.num_computed_tokens += chunk
            if request.num_computed_tokens < request.num_tokens:
                self.prefilling = request
                continue
            if self.prefilling is request:
                self.prefilling = None
            request.num_output_tokens += 1  # a completed prefill samples a token
            self.generation_tokens += 1
            if request.first_token_ns is None:
                request.first_token_ns = end
                self.prompt_tokens += request.prompt_tokens
                self._events.append(EngineEvent(EventKind.FIRST_TOKEN, end, request.request_id))
            elif request.stream:
                self._events.append(EngineEvent(EventKind.TOKEN, end, request.request_id))
            request.last_token_ns = end
            if request.num_output_tokens >= request.max_tokens:
                del self.running[request]
                self._finish(request, end, aborted=False)
            else:
                self.decoding.add(request, request.num_computed_tokens, self.g)

    # -- runs of identical decode steps --------------------------------------------------------

    def _decode_run(self, bound: float) -> None:
        """Advance the steps after a pure decode step that repeat its batch exactly."""
        dec = self.decoding
        nxt = dec.next_finish_step()
        limit = _MAX_RUN if nxt is None else min(_MAX_RUN, nxt - self.g + 1)
        k = dec.max_steps_within(self.g, self.free_blocks, limit)
        if k <= 0 or self.now_ns >= bound:
            return
        n = len(dec)
        j = np.arange(k, dtype=np.int64)
        context = (dec.context_tokens(self.g) + n * j).astype(np.float64)
        zeros = np.zeros(k)
        seconds = self.step_model.predict(zeros, zeros + n, context,
                                          zeros + len(dec.lora_counts), zeros + dec.lora_seqs)
        durations = np.rint(seconds * 1e9).astype(np.int64)
        ends = self.now_ns + np.cumsum(durations)
        starts = ends - durations
        k = int(np.searchsorted(starts, bound, side="left"))
        if k == 0:
            return
        durations, ends = durations[:k], ends[:k]
        self.fast_steps += k
        self.free_blocks -= dec.blocks_needed_over(self.g, k)
        self._record_decode_steps(durations, ends)
        if self.steps is not None:
            self.steps.extend_decode_run(starts[:k], durations, context[:k], decode_seqs=n,
                                         adapters=len(dec.lora_counts),
                                         running=len(self.running), waiting=len(self.waiting))
        last = self.g + k - 1
        self.now_ns = int(ends[-1])
        self._complete_decodes(last, self.now_ns)
        self.g = last + 1
