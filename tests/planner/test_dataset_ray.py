"""`lorafleet dataset --ray`: the same table as a local run for the same seed (on a local Ray),
a one-line error without Ray, and the placement shape of the sampler."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import main
from planner.dataset import Shape, sample_specs
from planner.placer import SLOT_CANDIDATES
from planner.ray_runner import RayUnavailableError, run_on_ray


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray for the module (``run_on_ray`` uses an initialised one and leaves it)."""
    ray = pytest.importorskip("ray", reason="the optional extra `ray` (`make test` installs it)")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _dataset(out: Path, *extra: str) -> bytes:
    assert main(["dataset", "--scenarios", "6", "--seed", "7", "--out", str(out), *extra]) == 0
    return (out / "data.csv").read_bytes()


def test_ray_writes_the_same_table_as_a_local_run(tmp_path: Path, local_ray: None) -> None:
    local = _dataset(tmp_path / "local")
    # Chunks of 4 scenarios: two tasks, possibly finishing out of order, put back in order.
    on_ray = _dataset(tmp_path / "ray", "--ray", "--workers", "2")
    assert on_ray == local
    assert len(local.splitlines()) == 7


def test_ray_rows_come_back_in_scenario_order(specs, local_ray: None) -> None:
    model, gpu, profile = specs
    # Longest first: with one-spec tasks on 2 CPUs the later, short ones finish first.
    drawn = list(sample_specs(4, 3, model, gpu, profile))
    runs = [dataclasses.replace(s, duration_s=d)
            for s, d in zip(drawn, (240, 30, 20, 10), strict=True)]
    seen: list[int] = []
    rows = run_on_ray(runs, model, gpu, profile, num_cpus=2, chunk=1, on_rows=seen.append)
    assert [r["seed"] for r in rows] == [float(s.seed) for s in runs]
    assert seen == [1, 1, 1, 1]


def test_without_ray_the_cli_says_so_in_one_line(tmp_path: Path, monkeypatch, capsys,
                                                   specs) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(RayUnavailableError):
        run_on_ray([], *specs)
    assert main(["dataset", "--scenarios", "1", "--out", str(tmp_path), "--ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--ray" in err and "pip install 'lorafleet[ray]'" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "data.csv").exists()


def test_placement_shape_gives_every_adapter_a_slot_when_memory_allows(specs) -> None:
    model, gpu, profile = specs
    sampled = list(sample_specs(40, 5, model, gpu, profile))
    placed = list(sample_specs(40, 5, model, gpu, profile, shape=Shape.PLACEMENT))
    assert len(placed) == 40
    assert placed == list(sample_specs(40, 5, model, gpu, profile, shape=Shape.PLACEMENT))
    fewer = 0
    for p in placed:
        loras = sum(1 for a in p.adapters if a.rank > 0)
        assert p.engine.max_loras in SLOT_CANDIDATES
        # The smallest candidate with a slot per adapter, or fewer only where memory forces it.
        enough = next(s for s in SLOT_CANDIDATES if s >= max(loras, 1))
        assert p.engine.max_loras <= enough
        fewer += p.engine.max_loras < loras
    assert fewer <= 4
    # The sampled shape mostly has fewer slots than adapters (why the placement shape exists).
    assert sum(s.engine.max_loras < sum(1 for a in s.adapters if a.rank > 0)
               for s in sampled) > 20
    # The same adapters as the sampled draws of the seed (first ones: none skipped yet), their
    # loads re-drawn.
    assert [a.name for a in placed[0].adapters] == [a.name for a in sampled[0].adapters]


def test_placement_loads_crowd_the_boundary_and_run_longer_there(specs) -> None:
    from planner.dataset import NEAR_BOUNDARY_DURATION_S, drawn_capacity
    from planner.features import worker_features

    model, gpu, profile = specs
    near = 0
    placed = list(sample_specs(60, 9, model, gpu, profile, shape=Shape.PLACEMENT))
    for p in placed:
        step = profile.step_model(model, gpu, p.engine)
        x = worker_features(p.adapters, p.engine, model, gpu, step, profile.memory)
        ratio = x["offered_tps"] / drawn_capacity(x, step, p.engine)  # what the sampler drew
        if 0.75 <= ratio <= 1.4:
            near += 1
            assert p.duration_s == NEAR_BOUNDARY_DURATION_S
        else:
            assert p.duration_s <= 600.0
    assert near > 30


def test_sampled_workers_run_as_long_as_the_planner_checks_a_plan(specs) -> None:
    """Where slots thrash the starvation verdict moves with the run length, so the sampled
    shape's labels come from runs as long as the twin check every plan must pass."""
    from planner.validation import VALIDATION_S

    model, gpu, profile = specs
    assert {s.duration_s for s in sample_specs(20, 4, model, gpu, profile)} == {VALIDATION_S}
