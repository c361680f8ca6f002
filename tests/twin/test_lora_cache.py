"""vLLM's two LoRA cache tiers (``LRUCacheWorkerLoRAManager`` / ``LRUCacheLoRAModelManager``).

Load times are chosen per id (disk 1000*id ns, activation 10*id ns) so that every duration tells
which callbacks ran for which adapter.
"""

from __future__ import annotations

import random

import pytest

from twin.lora_cache import LoadRecord, LoRACache


def disk_ns(i: int) -> int:
    return 1000 * i


def activate_ns(i: int) -> int:
    return 10 * i


def make_cache(max_loras: int, max_cpu_loras: int) -> LoRACache:
    return LoRACache(max_loras, max_cpu_loras, disk_load_ns=disk_ns, activate_ns=activate_ns)


def run_steps(cache: LoRACache, *steps: set[int]) -> list[list[LoadRecord]]:
    return [cache.prepare_step(s) for s in steps]


# -- GPU tier ------------------------------------------------------------------------------------

def test_gpu_tier_evicts_the_least_recently_used_slot() -> None:
    cache = make_cache(max_loras=3, max_cpu_loras=8)
    run_steps(cache, {1}, {2}, {3}, {4})
    assert cache.gpu_ids == [2, 3, 4]
    run_steps(cache, {5})
    assert cache.gpu_ids == [3, 4, 5]
    assert cache.cpu_ids == [1, 2, 3, 4, 5]  # evicted from a slot, still registered on the CPU


def test_hit_is_touched_so_a_recently_used_adapter_survives() -> None:
    cache = make_cache(max_loras=2, max_cpu_loras=2)
    run_steps(cache, {1}, {2}, {1}, {3})
    assert cache.gpu_ids == [1, 3]
    assert cache.cpu_ids == [1, 3]


def test_add_adapter_hit_touches_both_tiers() -> None:
    cache = make_cache(max_loras=2, max_cpu_loras=3)
    for i in (1, 2):
        cache.add_adapter(i)
    assert cache.add_adapter(1) is None
    assert cache.gpu_ids == [2, 1]
    assert cache.cpu_ids == [2, 1]


def test_gpu_only_miss_reports_tier_gpu_with_activation_time_only() -> None:
    cache = make_cache(max_loras=1, max_cpu_loras=3)
    (first,), (second,) = run_steps(cache, {7}, {8})
    assert first == LoadRecord(7, "cpu", disk_ns(7) + activate_ns(7))
    assert second == LoadRecord(8, "cpu", disk_ns(8) + activate_ns(8))
    (again,) = cache.prepare_step({7})  # 7 lost its slot but is still on the CPU
    assert again == LoadRecord(7, "gpu", activate_ns(7))


# -- CPU tier ------------------------------------------------------------------------------------

def test_cpu_eviction_also_frees_the_gpu_slot() -> None:
    cache = make_cache(max_loras=2, max_cpu_loras=2)
    run_steps(cache, {1}, {2}, {3})
    assert cache.cpu_ids == [2, 3]
    assert 1 not in cache.gpu_ids
    (record,) = cache.prepare_step({1})  # gone from both tiers: read from disk again
    assert record.tier == "cpu"
    assert record.duration_ns == disk_ns(1) + activate_ns(1)


def test_gpu_slots_are_always_a_subset_of_the_cpu_tier() -> None:
    rng = random.Random(1234)
    cache = make_cache(max_loras=3, max_cpu_loras=5)
    for _ in range(500):
        if rng.random() < 0.3:
            cache.add_adapter(rng.randint(1, 12))
        else:
            cache.prepare_step(set(rng.sample(range(1, 13), rng.randint(0, 3))))
        assert set(cache.gpu_ids) <= set(cache.cpu_ids)
        assert len(cache.gpu_ids) <= 3 and len(cache.cpu_ids) <= 5


# -- prepare_step ----------------------------------------------------------------------------------

def test_step_with_more_loras_than_slots_is_refused() -> None:
    cache = make_cache(max_loras=2, max_cpu_loras=4)
    with pytest.raises(AssertionError):
        cache.prepare_step({1, 2, 3})


def test_step_makes_every_lora_resident_and_returns_only_the_misses() -> None:
    cache = make_cache(max_loras=3, max_cpu_loras=3)
    cache.prepare_step({1, 2})
    loads = cache.prepare_step({2, 3, 1})
    assert [(r.lora_int_id, r.tier) for r in loads] == [(3, "cpu")]
    assert sorted(cache.gpu_ids) == [1, 2, 3]


def test_misses_of_a_step_are_loaded_in_id_order() -> None:
    cache = make_cache(max_loras=4, max_cpu_loras=4)
    loads = cache.prepare_step({9, 3, 6})
    assert [r.lora_int_id for r in loads] == [3, 6, 9]


def test_loading_misses_never_evicts_a_hit_of_the_same_step() -> None:
    cache = make_cache(max_loras=3, max_cpu_loras=3)
    run_steps(cache, {1}, {2}, {3})  # 1 is the least recently used slot
    loads = cache.prepare_step({1, 4})
    assert [r.lora_int_id for r in loads] == [4]
    assert set(cache.gpu_ids) >= {1, 4}
    assert 2 not in cache.gpu_ids


def test_repeating_the_same_step_loads_nothing() -> None:
    cache = make_cache(max_loras=2, max_cpu_loras=2)
    assert len(cache.prepare_step({1, 2})) == 2
    assert cache.prepare_step({1, 2}) == []
    assert cache.prepare_step({2, 1}) == []
    assert cache.num_loads == 2


def test_empty_step_loads_nothing() -> None:
    cache = make_cache(max_loras=2, max_cpu_loras=2)
    assert cache.prepare_step(set()) == []
    assert cache.gpu_ids == [] and cache.num_loads == 0


# -- add_adapter and num_loads ---------------------------------------------------------------

def test_add_adapter_of_a_resident_id_returns_none() -> None:
    cache = make_cache(max_loras=2, max_cpu_loras=2)
    assert cache.add_adapter(5) == LoadRecord(5, "cpu", disk_ns(5) + activate_ns(5))
    assert cache.add_adapter(5) is None
    assert cache.num_loads == 1


def test_num_loads_counts_misses_of_both_tiers() -> None:
    cache = make_cache(max_loras=1, max_cpu_loras=2)
    # 1 cpu, 2 cpu, 1 gpu, 1 hit, 3 cpu (evicts 2), 2 cpu, 2 hit
    loads = run_steps(cache, {1}, {2}, {1}, {1}, {3}, {2}, {2})
    tiers = [r.tier for step in loads for r in step]
    assert tiers == ["cpu", "cpu", "gpu", "cpu", "cpu"]
    assert cache.num_loads == 5


def test_num_loads_counts_misses_even_when_loading_is_free() -> None:
    cache = LoRACache(1, 1, disk_load_ns=lambda _i: 0, activate_ns=lambda _i: 0)
    cache.prepare_step({1})
    cache.prepare_step({2})
    assert cache.gpu_ids == [2]
    assert cache.num_loads == 2


def test_cpu_resident_miss_is_not_evicted_by_another_miss_of_the_same_step() -> None:
    cache = make_cache(max_loras=2, max_cpu_loras=3)
    run_steps(cache, {5}, {6}, {7})
    assert cache.cpu_ids == [5, 6, 7] and cache.gpu_ids == [6, 7]
    loads = cache.prepare_step({1, 5})  # 1 from disk; 5 only needs a GPU slot
    by_id = {r.lora_int_id: r for r in loads}
    assert by_id[5] == LoadRecord(5, "gpu", activate_ns(5))
    assert by_id[1] == LoadRecord(1, "cpu", disk_ns(1) + activate_ns(1))
