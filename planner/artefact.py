"""The surrogate's file format: compact, fast to load, and loading runs no code the file names.

A file is one header line, ``lorafleet-surrogate <format> <json meta>``, then the surrogate
pickled and zlib-compressed. What makes it small and fast:

- River's ``proba.Gaussian`` (the naive-Bayes leaves' class-conditional estimators, about
  21,000 of them in the default starvation forest) each carries a ``random.Random`` for its
  ``sample()``, which nothing here calls: 2.5 kB of Mersenne state apiece, 80 of the 90 MB a
  plain pickle took. They are written without it and share one generator when read.
- The garbage collector is paused while the half a million small objects are rebuilt (3 s
  of a load was its passes over them).

Reading it back uses a restricted ``pickle.Unpickler`` (the Python documentation's
"Restricting Globals"): a file may name only classes of River, numpy and ``planner``, and a
short list of other callables (``ALLOWED``), so a file from elsewhere (``--surrogate FILE``,
a cache folder others can write) can build those objects but cannot call ``os.system`` or
any other function. A name outside the list is a ``ValueError`` naming it.
"""

from __future__ import annotations

import gc
import importlib
import io
import json
import pickle
import random
import zlib
from collections.abc import Mapping
from typing import Any

__all__ = ["ALLOWED", "MAGIC", "dumps", "loads", "read_meta"]

MAGIC = b"lorafleet-surrogate"
FORMAT = 1

# Callables other than River's and planner's classes that a surrogate's pickle names.
ALLOWED: frozenset[tuple[str, str]] = frozenset({
    ("builtins", "float"), ("builtins", "int"), ("builtins", "complex"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "bytearray"), ("builtins", "slice"),
    ("collections", "Counter"), ("collections", "OrderedDict"), ("collections", "defaultdict"),
    ("collections", "deque"), ("functools", "partial"), ("random", "Random"),
    ("statistics", "NormalDist"), ("copyreg", "_reconstructor"),
    ("numpy", "dtype"), ("numpy", "ndarray"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "scalar"),
    # Functions River's models keep as attributes: the regression splitters' update
    # (river/tree/splitter/ebst_splitter.py), the k-NN search's distance (river/neighbors).
    ("river.tree.splitter.ebst_splitter", "EBSTNode._update_estimator_univariate"),
    ("river._river_rust.vectordict", "euclidean_distance_tuple"),
    ("river.utils.math", "minkowski_distance"),
    ("planner.artefact", "_gaussian"),
})
_CLASS_PACKAGES = ("river", "planner")


def _gaussian(cls: type[Any], state: dict[str, Any]) -> Any:
    """A ``river.proba.Gaussian`` written without its generator (``dumps``)."""
    obj = object.__new__(cls)
    obj.__dict__.update(state)
    obj._rng = _SHARED_RNG
    return obj


_SHARED_RNG = random.Random(0)


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        cls = type(obj)
        if cls.__name__ == "Gaussian" and cls.__module__ == "river.proba.gaussian":
            state = dict(vars(obj))
            state.pop("_rng", None)
            return _gaussian, (cls, state)
        return NotImplemented


class _Refused(pickle.UnpicklingError):
    pass


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED:
            return super().find_class(module, name)
        if module.partition(".")[0] in _CLASS_PACKAGES and "." not in name:
            obj = getattr(importlib.import_module(module), name, None)
            if isinstance(obj, type):
                return obj
        raise _Refused(f"it names {module}.{name}, which a lorafleet surrogate "
                                     "does not use")


def dumps(obj: Any, meta: Mapping[str, Any] | None = None, level: int = 9) -> bytes:
    """``obj`` in the surrogate format, with ``meta`` (JSON) in its header."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    header = MAGIC + f" {FORMAT} ".encode() + json.dumps(dict(meta or {}),
                                                           sort_keys=True).encode() + b"\n"
    return header + zlib.compress(buf.getvalue(), level)


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    line, newline, body = data.partition(b"\n")
    parts = line.split(b" ", 2)
    if not newline or len(parts) != 3 or parts[0] != MAGIC:
        raise ValueError("not a lorafleet surrogate file (`lorafleet train` writes them; "
                         "plain pickles of earlier versions must be trained again)")
    if parts[1] != str(FORMAT).encode():
        raise ValueError(f"surrogate file format {parts[1].decode(errors='replace')}, this "
                         f"lorafleet reads {FORMAT}: train it again")
    try:
        meta = json.loads(parts[2])
    except ValueError:
        raise ValueError("not a lorafleet surrogate file: its header is not JSON") from None
    if not isinstance(meta, dict):
        raise ValueError("not a lorafleet surrogate file: its header is not a JSON object")
    return meta, body


def read_meta(data: bytes) -> dict[str, Any]:
    """The header's metadata (a ``ValueError`` for anything but a surrogate file)."""
    return _split(data[:4096] if b"\n" in data[:4096] else data)[0]


def loads(data: bytes) -> Any:
    """The object ``dumps`` wrote; a ``ValueError`` saying why for anything else."""
    _, body = _split(data)
    try:
        raw = zlib.decompress(body)
    except zlib.error:
        raise ValueError("not a lorafleet surrogate file: its body is not zlib data") from None
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _Unpickler(io.BytesIO(raw)).load()
    except _Refused as exc:
        raise ValueError(f"refused to load: {exc}") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, TypeError,
            IndexError) as exc:
        raise ValueError(f"not a lorafleet surrogate file: {exc}") from None
    finally:
        if enabled:
            gc.enable()
