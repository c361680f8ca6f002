"""``lorafleet train --model M --gpu G``: a target's own surrogate from its twin."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import pretrained
from gateway.cli import main
from planner import Start, Surrogate, Target, run_sample, shipped_path


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "lorafleet"


@pytest.mark.parametrize(("argv", "field"), [
    (["--workers", "0"], "--workers"),
    (["--samples", "0"], "--samples"),
    (["-tp", "0"], "--tensor-parallel-size"),
    (["-tp", "3"], "--tensor-parallel-size"),  # 32 attention heads do not split 3 ways
    (["--out", "/nonexistent-folder/s.bin"], "--out"),
    (["--gpu", "z100"], "gpu"),
])
def test_bad_input_is_one_line(argv: list[str], field: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--model", "llama-3.2-1b", "--gpu", "l40s", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lorafleet: "), err
    assert field in err[0]


def test_a_model_that_does_not_fit_names_the_size_that_does(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--model", "llama-3.1-70b", "--gpu", "a100-80gb"]) == 2
    err = capsys.readouterr().err
    assert "The smallest tensor_parallel_size that fits is 2" in err
    assert "Traceback" not in err


def test_data_needs_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data", str(tmp_path)]) == 2
    assert "lorafleet: invalid input: --out: required with --data" in capsys.readouterr().err


def test_the_shipped_target_has_nothing_to_train(cache: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train"]) == 0
    assert "nothing to train" in capsys.readouterr().err
    assert not cache.exists()


def test_a_target_is_trained_into_the_cache_plan_and_serve_read(
        cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--model", "llama-3.2-1b", "--gpu", "l40s", "--samples", "2",
                 "--workers", "1"]) == 0
    err = " ".join(capsys.readouterr().err.split())  # rich wraps at the terminal's width
    assert "2 twin runs learned" in err and "starting from shipped" in err
    target = Target.resolve("llama-3.2-1b", "l40s")
    surrogate, source = pretrained.surrogate_for(target)
    assert source == "trained"
    assert surrogate.samples_seen == Surrogate.load(shipped_path()).samples_seen + 2
    path = pretrained.target_path(target)
    assert path is not None and path.parent == cache


def test_ray_runs_the_twin_at_the_address_given(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    """The Ray branch hands the specs to ``planner.run_on_ray`` (tested with a real local Ray
    in tests/planner/test_dataset_ray.py) and reports its progress."""
    seen: dict[str, object] = {}

    def fake_ray(specs, model, gpu, profile, *, address, num_cpus, on_rows):
        seen.update(address=address, num_cpus=num_cpus)
        rows = [run_sample(s, model, gpu, profile) for s in specs]
        on_rows(len(rows))
        return rows

    monkeypatch.setattr(pretrained, "run_on_ray", fake_ray)
    told: list[tuple[int, int]] = []
    path, own = pretrained.train_target(Target.resolve("llama-3.2-1b", "l40s"), samples=1,
                                        workers=3, ray="auto", out=tmp_path / "s.bin",
                                        progress=lambda done, total: told.append((done, total)))
    assert seen == {"address": "auto", "num_cpus": 3}
    assert told == [(1, 1)] and own.start is Start.SHIPPED and path.is_file()
