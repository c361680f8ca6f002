"""The shipped surrogate: the default models trained on the bundled tables
(``planner.training``), saved to and loaded from a cache folder the caller names (the gateway
passes ``$XDG_CACHE_HOME/lorafleet``; the planner itself reads no environment)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import planner.surrogate as surrogate_module
from planner.surrogate import Surrogate
from planner.training import (
    DEFAULT_CLASSIFIER,
    DEFAULT_LATENCY,
    DEFAULT_REGRESSOR,
    bundled_capacity_rows,
    bundled_digest,
    bundled_rows,
    train,
)

__all__ = ["cache_key", "pretrained_surrogate"]


def cache_key() -> str:
    """What the trained surrogate depends on: the models' names, the bundled tables and
    ``planner/surrogate.py`` (where the models' settings are)."""
    models = hashlib.sha256(Path(surrogate_module.__file__).read_bytes()).hexdigest()
    return hashlib.sha256(f"{DEFAULT_REGRESSOR}-{DEFAULT_CLASSIFIER}-{DEFAULT_LATENCY}-"
                          f"{bundled_digest()}-{models}".encode()).hexdigest()[:12]


def pretrained_surrogate(cache_dir: Path | None = None) -> Surrogate:
    """The surrogate trained on the bundled tables (about a minute on one core); with
    ``cache_dir``, loaded from ``surrogate-<cache_key>.pkl`` there when present (a file that
    does not load is trained again), else trained and saved there."""
    path = None if cache_dir is None else cache_dir / f"surrogate-{cache_key()}.pkl"
    if path is not None and path.is_file():
        try:
            return Surrogate.load(path)
        except Exception:
            path.unlink(missing_ok=True)
    surrogate = train(bundled_rows(), capacity_rows=bundled_capacity_rows())
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        surrogate.save(tmp)
        tmp.replace(path)  # atomic: a concurrent reader sees the old file or the whole new one
    return surrogate
