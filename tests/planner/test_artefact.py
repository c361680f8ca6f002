"""The surrogate's file format (planner/artefact.py) and the shipped surrogate
(planner/pretrained.py)."""

from __future__ import annotations

import os
import pickle
import zlib
from pathlib import Path

import pytest

from planner.artefact import MAGIC, dumps, loads, read_meta
from planner.pretrained import (
    cache_key,
    pretrained_surrogate,
    shipped_key,
    shipped_path,
    train_pretrained,
)
from planner.surrogate import REGRESSORS, STARVATION_MODELS, Surrogate
from planner.training import bundled_rows, train

ROWS = bundled_rows()[1::97]  # rows the small surrogates below never learned


def _predictions(s: Surrogate, rows: list[dict[str, float]]) -> list[tuple[float, ...]]:
    return [(s.throughput.predict_one(r), s.starvation.predict_proba_one(r),
             *s.latency.predict_one(r).values()) for r in rows]


def test_round_trip_predicts_the_same(surrogate: Surrogate, tmp_path: Path) -> None:
    path = tmp_path / "s.bin"
    surrogate.save(path, {"note": "test"})
    loaded = Surrogate.load(path)
    assert _predictions(loaded, ROWS) == _predictions(surrogate, ROWS)
    assert read_meta(path.read_bytes()) == {"note": "test"}
    # Smaller than a plain pickle: the Gaussians' generators are not written.
    assert path.stat().st_size < len(pickle.dumps(surrogate)) / 5


@pytest.mark.parametrize(("regressor", "classifier"), [
    *((r, "capacity-nearest") for r in REGRESSORS),
    *(("linear", c) for c in STARVATION_MODELS if c != "capacity-nearest"),
])
def test_every_model_choice_loads(regressor: str, classifier: str, tmp_path: Path) -> None:
    """The restricted loader allows what every model `lorafleet train` offers is made of."""
    s = train(bundled_rows()[:300:3], regressor=regressor, classifier=classifier,
              latency=regressor)
    path = tmp_path / "s.bin"
    s.save(path)
    assert _predictions(Surrogate.load(path), ROWS[:20]) == _predictions(s, ROWS[:20])


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def _file(obj: object, header: bytes = MAGIC + b" 1 {}\n") -> bytes:
    return header + zlib.compress(pickle.dumps(obj))


def test_a_file_that_calls_a_function_is_refused_before_it_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "evil.bin"
    path.write_bytes(_file(_Payload(marker)))
    with pytest.raises(ValueError, match=r"evil\.bin: refused to load: it names "
                       r"(posix|os|nt)\.system"):
        Surrogate.load(path)
    assert not marker.exists()


@pytest.mark.parametrize(("data", "message"), [
    (pickle.dumps({"a": 1}), "not a lorafleet surrogate file"),  # a plain (old) pickle
    (b"hello\n", "not a lorafleet surrogate file"),
    (MAGIC + b" 7 {}\n", "format 7, this lorafleet reads 1"),
    (MAGIC + b" 1 [1]\n", "header is not a JSON object"),
    (MAGIC + b" 1 {}\nnot zlib", "body is not zlib data"),
    (MAGIC + b" 1 {}\n" + zlib.compress(pickle.dumps(object)[:-3]), "not a lorafleet"),
    (_file(eval), "names builtins.eval"),
    (_file(Path), "names pathlib"),
])
def test_bad_files_say_why(data: bytes, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        loads(data)


def test_a_file_of_another_object_is_not_a_surrogate(tmp_path: Path) -> None:
    path = tmp_path / "dict.bin"
    path.write_bytes(dumps({"a": 1}))
    with pytest.raises(ValueError, match=r"dict\.bin: not a lorafleet surrogate"):
        Surrogate.load(path)


def test_the_shipped_surrogate_is_current() -> None:
    """planner/data/surrogate.bin was trained under today's code and tables: after a change
    to the models, their training or the tables, `make surrogate` writes it again."""
    assert shipped_path().is_file(), "run `make surrogate`"
    assert shipped_key() == cache_key(), "stale planner/data/surrogate.bin: run `make surrogate`"


def test_a_fresh_cache_uses_the_shipped_surrogate(tmp_path: Path) -> None:
    s = pretrained_surrogate(tmp_path / "cache")
    assert s.samples_seen > 1000
    assert not (tmp_path / "cache").exists()  # nothing trained, nothing written


@pytest.mark.slow
def test_the_shipped_surrogate_is_what_training_gives() -> None:
    """Trained again here (about a minute and a half), the default models predict what the
    shipped file does: it is the training's result, not a hand-made file."""
    fresh = train_pretrained()
    shipped = Surrogate.load(shipped_path())
    for a, b in zip(_predictions(fresh, ROWS), _predictions(shipped, ROWS), strict=True):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12)
