"""The bundled training tables: the sampled one and the placement-shaped one, interleaved."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from planner.table import load_table
from planner.training import (
    bundled_capacity_rows,
    bundled_capacity_tables,
    bundled_digest,
    bundled_rows,
    bundled_tables,
    interleave,
)

DATA = Path(__file__).resolve().parents[2] / "planner" / "data"
# A row made again on another CPU may differ in the last bits: numpy picks SIMD kernels per
# CPU (an AMD EPYC without AVX-512 summed 1468.553760825118 where the table holds
# 1468.5537608251177). Far tighter than any change of the sampler or the twin would be.
ROW_REL = 1e-9


def test_both_tables_are_bundled_and_learned_interleaved() -> None:
    names = [t.name for t in bundled_tables()]
    assert names == ["a100-80gb-llama-3.1-8b.csv", "a100-80gb-llama-3.1-8b-placement.csv"]
    sampled = load_table(DATA / names[0])
    placement = load_table(DATA / names[1])
    rows = bundled_rows()
    assert len(rows) == len(sampled) + len(placement)
    seeds = {r["seed"] for r in placement}
    # Every quarter of the learning order holds about a quarter of the placement rows.
    quarter = len(rows) // 4
    for q in range(4):
        share = sum(r["seed"] in seeds for r in rows[q * quarter:(q + 1) * quarter])
        assert abs(share - len(placement) / 4) <= 2
    # Each table keeps its own order.
    assert [r for r in rows if r["seed"] in seeds] == placement


def test_the_placement_table_is_placement_shaped() -> None:
    placement = load_table(DATA / "a100-80gb-llama-3.1-8b-placement.csv")
    thrashing = sum(r["adapter_slots"] < r["served_adapters"] for r in placement)
    assert thrashing / len(placement) < 0.02
    assert sum(0.7 <= r["load_ratio"] <= 1.4 for r in placement) / len(placement) > 0.5


def test_interleave_keeps_every_row_once() -> None:
    a, b, c = list(range(10)), list("xyz"), [None]
    merged = interleave(a, b, c)
    assert sorted(map(str, merged)) == sorted(map(str, a + b + c))
    assert [m for m in merged if isinstance(m, int)] == a
    assert interleave(a) == a


def test_the_capacity_table_holds_more_placement_shaped_workers() -> None:
    """Only the capacity learns it: placement-shaped workers other than the placement
    table's (the sampler's next 1200 of the same seed)."""
    assert [t.name for t in bundled_capacity_tables()] == ["a100-80gb-llama-3.1-8b-capacity.csv"]
    more = bundled_capacity_rows()
    placement = load_table(DATA / "a100-80gb-llama-3.1-8b-placement.csv")
    assert len(more) == 1200
    assert not {r["seed"] for r in more} & {r["seed"] for r in placement}
    assert sum(r["adapter_slots"] < r["served_adapters"] for r in more) / len(more) < 0.02
    assert sum(0.7 <= r["load_ratio"] <= 1.4 for r in more) / len(more) > 0.5


def test_the_digest_covers_every_table() -> None:
    """``default_surrogate``'s cache key: it changes when any table does."""
    digest = hashlib.sha256()
    for name in ("a100-80gb-llama-3.1-8b.csv", "a100-80gb-llama-3.1-8b-placement.csv",
                 "a100-80gb-llama-3.1-8b-capacity.csv"):
        digest.update((DATA / name).read_bytes())
    assert bundled_digest() == digest.hexdigest()


def test_the_sampled_table_is_what_the_dataset_command_makes_now(specs) -> None:
    """Its first rows are ``run_sample`` of ``lorafleet dataset --seed 0``'s first workers (so
    the table follows the sampler, e.g. its run length: ``planner.validation.VALIDATION_S``)."""
    from planner.dataset import run_sample, sample_specs

    model, gpu, profile = specs
    table = load_table(DATA / "a100-80gb-llama-3.1-8b.csv")
    for spec, row in zip(sample_specs(3, 0, model, gpu, profile), table, strict=False):
        assert run_sample(spec, model, gpu, profile) == pytest.approx(row, rel=ROW_REL)


def test_the_capacity_table_is_the_samplers_next_placement_workers(specs) -> None:
    """Its first rows are ``run_sample`` of workers 1201-1203 of ``lorafleet dataset
    --scenarios 2400 --seed 1 --shape placement`` (the placement table holds the first 1200)."""
    from itertools import islice

    from planner.dataset import Shape, run_sample, sample_specs

    model, gpu, profile = specs
    table = load_table(DATA / "a100-80gb-llama-3.1-8b-capacity.csv")
    drawn = islice(sample_specs(2400, 1, model, gpu, profile, shape=Shape.PLACEMENT),
                   1200, 1203)
    for spec, row in zip(drawn, table[:3], strict=True):
        assert run_sample(spec, model, gpu, profile) == pytest.approx(row, rel=ROW_REL)


def test_train_reports_progress_and_the_cli_writes_a_loadable_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main
    from planner import COLUMNS, save_table
    from planner.surrogate import Surrogate
    from planner.training import train

    rows = bundled_rows()[:250]
    seen: list[tuple[int, int]] = []
    train(rows, regressor="linear", progress=lambda done, total: seen.append((done, total)))
    assert seen == [(100, 250), (200, 250), (250, 250)]
    save_table(rows, COLUMNS, tmp_path / "data.csv")
    out = tmp_path / "s.bin"
    assert main(["train", "--data", str(tmp_path), "--out", str(out),
                 "--regressor", "linear"]) == 0
    assert "trained on" in capsys.readouterr().err
    assert Surrogate.load(out).samples_seen > 0
    assert main(["evaluate", "--data", str(tmp_path), "--surrogate", str(out), "--json"]) == 0


@pytest.mark.parametrize(("argv", "field"), [
    (["--epochs", "0"], "--epochs"),
    (["--out", "/nonexistent-folder/s.bin"], "--out"),
])
def test_train_cli_bad_input_is_one_line(argv: list[str], field: str, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main
    from planner import COLUMNS, save_table

    save_table(bundled_rows()[:40], COLUMNS, tmp_path / "data.csv")
    args = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "s.bin"),
            "--regressor", "linear", *argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"lorafleet: invalid input: {field}:")
    assert "Traceback" not in "\n".join(err)
