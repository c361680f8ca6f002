"""GPUs by name or by their own spec (a mapping, or its JSON on a command line)."""

from __future__ import annotations

import pytest

from twin.catalog import GPUS, get_gpu, gpu_from_mapping, gpu_ref
from twin.errors import ConfigError
from twin.scenario import parse_scenario
from twin.specs import GIB


def test_bundled_gpus_carry_datasheet_interconnects() -> None:
    assert {"h200", "l4"} <= set(GPUS)
    assert get_gpu("h200").interconnect_gbps == 900.0  # NVLink 4
    assert get_gpu("l4").interconnect_gbps == 64.0  # PCIe 4.0 x16, no NVLink
    assert get_gpu("h200").memory_bytes > get_gpu("h100-80gb").memory_bytes


def test_a_custom_gpu_from_a_mapping_or_its_json_is_the_same_spec() -> None:
    spec = {"name": "b200", "memory_gib": 178, "tflops": 2250, "bandwidth_gbps": 8000,
            "interconnect_gbps": 1800}
    gpu = get_gpu(spec)
    assert (gpu.name, gpu.memory_bytes, gpu.peak_tflops, gpu.bandwidth_gbps,
            gpu.interconnect_gbps) == ("b200", 178 * GIB, 2250.0, 8000.0, 1800.0)
    assert get_gpu(gpu_ref(spec)) == gpu
    assert gpu_ref("l4") == "l4"


@pytest.mark.parametrize(("value", "field"), [
    ({"memory_gib": 80}, "gpu.name"),
    ({"name": "x"}, "gpu.memory_gib"),
    ({"name": "x", "memory_gib": -1}, "gpu.memory_gib"),
    ({"name": "x", "memory_gib": 80, "tflops": "fast"}, "gpu.tflops"),
    ({"name": "x", "memory_gib": 80, "tflops": 1, "peak_tflops": 1}, "gpu.tflops"),
    ({"name": "x", "memory_gib": 80, "nvlink": 900}, "gpu.nvlink"),
    ("{not json", "gpu"),
    ("[1]", "gpu"),
    ("tpu-v5", "gpu"),
])
def test_a_bad_gpu_names_its_field(value: object, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        get_gpu(value)  # type: ignore[arg-type]
    assert err.value.field == field


def test_a_scenario_takes_the_same_gpu_mapping() -> None:
    sc = parse_scenario({"model": "llama-3.2-1b",
                         "gpu": {"name": "mine", "memory_gib": 24, "tflops": 100},
                         "adapters": {"count": 2, "rate_total": 1.0}, "duration_s": 5})
    assert sc.gpu == gpu_from_mapping({"name": "mine", "memory_gib": 24, "tflops": 100})
    with pytest.raises(ConfigError) as err:
        parse_scenario({"model": "llama-3.2-1b", "gpu": {"name": "mine"},
                        "adapters": {"count": 2}, "duration_s": 5})
    assert err.value.field == "gpu.memory_gib"
