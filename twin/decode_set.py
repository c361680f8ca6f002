"""Running requests in decode, kept in aggregate so a step costs O(1) instead of O(batch).

Every request in decode computes exactly one token per step, so with ``g`` the number of steps
the engine has run, a request's computed tokens are ``offset + g`` for a fixed ``offset``. A
decode step needs a new KV block for a request when its computed count is a multiple of
``block_size`` (``ceil((c + 1) / bs) > ceil(c / bs)``), so the blocks a step needs are a count
per residue of ``offset`` mod ``block_size``; completions are a heap of step indices.
"""

from __future__ import annotations

import heapq
from collections import Counter

import numpy as np

from twin.request import Request

__all__ = ["DecodeSet"]


class DecodeSet:
    """The requests in ``running`` that are in decode."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.members: set[Request] = set()
        self.streaming: set[Request] = set()
        self.lora_counts: Counter[int] = Counter()
        self.lora_seqs = 0  # members that run an adapter
        self._residue = np.zeros(block_size, dtype=np.int64)
        self._sum_offsets = 0
        self._finish: list[tuple[int, int, Request]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, request: Request) -> bool:
        return request in self.members

    def add(self, request: Request, computed: int, g: int) -> None:
        """``request`` (with ``computed`` tokens after step ``g - 1``) decodes from step ``g``."""
        request.decode_offset = computed - g
        request.finish_step = g + request.max_tokens - request.num_output_tokens - 1
        self.members.add(request)
        if request.stream:
            self.streaming.add(request)
        if request.lora_int_id:
            self.lora_counts[request.lora_int_id] += 1
            self.lora_seqs += 1
        self._residue[request.decode_offset % self.block_size] += 1
        self._sum_offsets += request.decode_offset
        self._seq += 1
        heapq.heappush(self._finish, (request.finish_step, self._seq, request))

    def remove(self, request: Request) -> None:
        self.members.remove(request)
        self.streaming.discard(request)
        if request.lora_int_id:
            self.lora_seqs -= 1
            self.lora_counts[request.lora_int_id] -= 1
            if not self.lora_counts[request.lora_int_id]:
                del self.lora_counts[request.lora_int_id]
        self._residue[request.decode_offset % self.block_size] -= 1
        self._sum_offsets -= request.decode_offset
        # Its heap entry is dropped lazily (see next_finish_step).

    @staticmethod
    def computed(request: Request, g: int) -> int:
        return request.decode_offset + g

    def context_tokens(self, g: int) -> int:
        """Tokens attended by step ``g``: every member's computed tokens plus its new one."""
        return self._sum_offsets + len(self.members) * (g + 1)

    def blocks_needed(self, g: int) -> int:
        """New KV blocks step ``g`` needs for its decodes."""
        return int(self._residue[(-g) % self.block_size])

    def blocks_needed_over(self, g: int, k: int) -> int:
        """New KV blocks steps ``g .. g + k - 1`` need together."""
        bs = self.block_size
        full, rest = divmod(k, bs)
        total = full * len(self.members)
        for j in range(rest):
            total += int(self._residue[(-(g + j)) % bs])
        return total

    def max_steps_within(self, g: int, free_blocks: int, limit: int) -> int:
        """The most steps (<= ``limit``) from ``g`` whose decodes fit in ``free_blocks``."""
        n = len(self.members)
        bs = self.block_size
        cycles = min(free_blocks // n if n else limit, limit // bs + 1)
        k = min(cycles * bs, limit)
        used = self.blocks_needed_over(g, k)
        while k < limit:
            need = int(self._residue[(-(g + k)) % bs])
            if used + need > free_blocks:
                break
            used += need
            k += 1
        return k

    def next_finish_step(self) -> int | None:
        """Index of the next step after which a member finishes."""
        heap = self._finish
        while heap and (heap[0][2] not in self.members or heap[0][2].finish_step != heap[0][0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def pop_finished(self, step: int) -> list[Request]:
        """Members whose last token is produced by step ``step`` (removed from the set)."""
        done: list[Request] = []
        while True:
            nxt = self.next_finish_step()
            if nxt is None or nxt > step:
                return done
            _, _, request = heapq.heappop(self._finish)
            self.remove(request)
            done.append(request)
