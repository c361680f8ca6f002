"""The shipped surrogate: the default models trained on the bundled tables
(``planner.training``).

It ships ready to load, as ``planner/data/surrogate.bin`` (``planner.artefact``'s format,
2.5 MB, read in about half a second), so a fresh install plans at once. Its header records
``cache_key()``, what the training depends on; when the code or the tables have changed since
it was written (``make surrogate`` writes it again; a test fails until then) it is passed
over, and the surrogate is trained (about a minute on one core) and saved to the cache folder
the caller names (the gateway passes ``$XDG_CACHE_HOME/lorafleet``; the planner itself reads
no environment).

``python -m planner.pretrained FILE`` trains and writes the shipped file.
"""

from __future__ import annotations

import hashlib
import sys
from importlib import resources
from pathlib import Path

import planner.features as features_module
import planner.surrogate as surrogate_module
import planner.training as training_module
from planner.artefact import FORMAT, read_meta
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

__all__ = ["cache_key", "pretrained_surrogate", "shipped_key", "shipped_path",
           "train_pretrained"]


def cache_key() -> str:
    """What the trained surrogate depends on: the models' names, the bundled tables, the
    code that defines and trains the models (``planner/surrogate.py``, ``training.py``,
    ``features.py``), River's version (whose classes are pickled) and the file format."""
    from importlib.metadata import version

    code = hashlib.sha256()
    for module in (surrogate_module, training_module, features_module):
        code.update(Path(module.__file__ or "").read_bytes())
    return hashlib.sha256(f"{DEFAULT_REGRESSOR}-{DEFAULT_CLASSIFIER}-{DEFAULT_LATENCY}-"
                          f"{bundled_digest()}-{code.hexdigest()}-river{version('river')}-"
                          f"format{FORMAT}".encode()).hexdigest()[:12]


def shipped_path() -> Path:
    """Where the shipped surrogate is (``planner/data/surrogate.bin``)."""
    return Path(str(resources.files("planner") / "data" / "surrogate.bin"))


def shipped_key() -> str | None:
    """The ``cache_key`` the shipped surrogate was trained under (None: none shipped)."""
    path = shipped_path()
    if not path.is_file():
        return None
    with path.open("rb") as f:
        return str(read_meta(f.read(4096)).get("key"))


def train_pretrained() -> Surrogate:
    """The default models trained on the bundled tables."""
    return train(bundled_rows(), capacity_rows=bundled_capacity_rows())


def pretrained_surrogate(cache_dir: Path | None = None) -> Surrogate:
    """The surrogate trained on the bundled tables: the shipped file when it was trained
    under today's ``cache_key``; else, with ``cache_dir``, ``surrogate-<cache_key>.bin``
    there when present (a file that does not load is trained again); else trained (and
    saved there)."""
    key = cache_key()
    if shipped_key() == key:
        return Surrogate.load(shipped_path())
    path = None if cache_dir is None else cache_dir / f"surrogate-{key}.bin"
    if path is not None and path.is_file():
        try:
            return Surrogate.load(path)
        except ValueError:
            path.unlink(missing_ok=True)
    surrogate = train_pretrained()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        surrogate.save(tmp, {"key": key})
        tmp.replace(path)  # atomic: a concurrent reader sees the old file or the whole new one
    return surrogate


def _main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m planner.pretrained FILE", file=sys.stderr)
        return 2
    train_pretrained().save(argv[0], {"key": cache_key()})
    print(f"{argv[0]}: the default surrogate, key {cache_key()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
