"""vLLM's two LoRA cache tiers: registered adapters in CPU memory, active adapters in GPU slots.

Copied from ``vllm/lora/worker_manager.py`` (``LRUCacheWorkerLoRAManager.add_adapter``) and
``vllm/lora/model_manager.py`` (``LRUCacheLoRAModelManager``):

- every step, each LoRA of the batch is added to the CPU tier (a miss reads it from disk and,
  when the tier holds ``max_cpu_loras``, evicts the least recently used one, which also frees
  its GPU slot) and then activated in a GPU slot (a miss copies it in, evicting the oldest slot
  when all ``max_loras`` are taken); hits are touched in both LRUs;
- the API's load (``add_lora``) goes through the same ``add_adapter``, so it also activates;
- the API's unload forgets the name only: the engine's caches keep the adapter until LRU
  eviction, and a reload gets a new ``lora_int_id``, i.e. a new cache entry.

vLLM iterates a step's LoRAs in set order (hash order, not reproducible); the twin touches
what is resident first, then loads the misses, which never evicts a LoRA the same step needs
(``max_loras <= max_cpu_loras`` and a step holds at most ``max_loras`` LoRAs).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass

__all__ = ["LoRACache", "LoadRecord"]


@dataclass(frozen=True, slots=True)
class LoadRecord:
    """One cache miss: which LoRA, which tier it was copied into, and how long it stalled."""

    lora_int_id: int
    tier: str  # "cpu" (disk -> CPU, then CPU -> GPU) or "gpu" (CPU -> GPU only)
    duration_ns: int


class LoRACache:
    """The two LRU tiers of one worker.

    Parameters
    ----------
    max_loras, max_cpu_loras
        GPU slots and CPU capacity, as vLLM's flags.
    disk_load_ns, activate_ns
        Load time of a LoRA (by ``lora_int_id``) from disk to CPU and from CPU to a GPU slot.

    Examples
    --------
    >>> cache = LoRACache(2, 3, disk_load_ns=lambda i: 100, activate_ns=lambda i: 10)
    >>> [r.duration_ns for r in cache.prepare_step({1, 2})]
    [110, 110]
    >>> cache.prepare_step({1, 3})[0].tier    # 2 is evicted from its slot, stays on the CPU
    'cpu'
    >>> cache.prepare_step({2})[0].tier
    'gpu'
    """

    def __init__(
        self,
        max_loras: int,
        max_cpu_loras: int,
        *,
        disk_load_ns: Callable[[int], int],
        activate_ns: Callable[[int], int],
    ) -> None:
        assert max_cpu_loras >= max_loras >= 1
        self.max_loras = max_loras
        self.max_cpu_loras = max_cpu_loras
        self._disk_load_ns = disk_load_ns
        self._activate_ns = activate_ns
        self._cpu: OrderedDict[int, None] = OrderedDict()
        self._gpu: OrderedDict[int, None] = OrderedDict()
        self._last_step: frozenset[int] = frozenset()
        self.num_loads = 0

    @property
    def cpu_ids(self) -> list[int]:
        """CPU tier from least to most recently used."""
        return list(self._cpu)

    @property
    def gpu_ids(self) -> list[int]:
        """GPU slots from least to most recently used."""
        return list(self._gpu)

    def add_adapter(self, lora_int_id: int) -> LoadRecord | None:
        """The worker's ``add_adapter``: ensure the LoRA is in both tiers; touch it in both."""
        duration = 0
        tier = ""
        if lora_int_id in self._cpu:
            self._cpu.move_to_end(lora_int_id)
        else:
            if len(self._cpu) + 1 > self.max_cpu_loras:
                evicted, _ = self._cpu.popitem(last=False)
                self._gpu.pop(evicted, None)  # remove_adapter deactivates it too
            self._cpu[lora_int_id] = None
            duration += self._disk_load_ns(lora_int_id)
            tier = "cpu"
        if lora_int_id in self._gpu:
            self._gpu.move_to_end(lora_int_id)
        else:
            if len(self._gpu) >= self.max_loras:
                self._gpu.popitem(last=False)
            self._gpu[lora_int_id] = None
            duration += self._activate_ns(lora_int_id)
            tier = tier or "gpu"
        self._last_step = frozenset()
        if not tier:
            return None
        self.num_loads += 1
        return LoadRecord(lora_int_id, tier, duration)

    def prepare_step(self, lora_ids: Collection[int]) -> list[LoadRecord]:
        """Make every LoRA of a step resident; return the misses (their time stalls the step)."""
        assert len(lora_ids) <= self.max_loras, "more LoRAs in a step than GPU slots"
        step = frozenset(lora_ids)
        if step == self._last_step:
            # Touching the same set in the same order leaves both LRUs as they are.
            return []
        ordered = sorted(step)
        misses = [i for i in ordered if i not in self._gpu]
        loads: list[LoadRecord] = []
        for i in ordered:  # touch what is resident first, so no miss evicts it
            if i in self._cpu:
                self._cpu.move_to_end(i)
            if i in self._gpu:
                self._gpu.move_to_end(i)
        for i in misses:
            record = self.add_adapter(i)
            if record is not None:
                loads.append(record)
        self._last_step = step
        return loads
