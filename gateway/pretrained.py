"""The surrogate as the gateway, the CLI and the benchmarks use it.

For the shipped target (A100-80GB, Llama-3.1-8B): the file that ships with the planner, or,
when the code or River changed since it was written, trained once per machine and cached
under ``$XDG_CACHE_HOME/lorafleet`` (``planner.pretrained_surrogate``). For any other target:
its own surrogate from the same cache when ``lorafleet train --model M --gpu G`` (or a
gateway's background training) has made it (``train_target``), else the shipped one as the
prior (``planner.pretrained``'s docstring says why it carries over)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from planner import (
    TARGET_SAMPLES,
    OwnSurrogate,
    SampleSpec,
    Surrogate,
    Target,
    is_home,
    own_surrogate,
    pretrained_surrogate,
    run_on_ray,
    run_sample,
    target_key,
    target_specs,
)

__all__ = ["cache_dir", "default_surrogate", "surrogate_for", "target_path", "train_target"]


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lorafleet"


def default_surrogate() -> Surrogate:
    """The surrogate trained on the bundled tables: shipped, or cached, or trained now."""
    return pretrained_surrogate(cache_dir())


def target_path(target: Target, tensor_parallel_size: int = 1) -> Path | None:
    """Where ``target``'s own surrogate is cached (None for the shipped target)."""
    if is_home(target, tensor_parallel_size):
        return None
    key = target_key(target, tensor_parallel_size)
    return cache_dir() / f"surrogate-target-{key}.bin"


def surrogate_for(target: Target, tensor_parallel_size: int = 1) -> tuple[Surrogate, str]:
    """The surrogate to plan ``target`` with and where it came from: ``"shipped"`` (the
    shipped target), ``"trained"`` (its own, from the cache) or ``"prior"`` (the shipped one:
    none trained yet, or the cached one no longer loads)."""
    path = target_path(target, tensor_parallel_size)
    if path is None:
        return default_surrogate(), "shipped"
    if path.is_file():
        try:
            return Surrogate.load(path), "trained"
        except ValueError:
            path.unlink(missing_ok=True)
    return default_surrogate(), "prior"


def _twin_rows(target: Target, specs: list[SampleSpec], workers: int, ray: str | None,
               progress: Callable[[int, int], None]) -> list[dict[str, float]]:
    """``run_sample`` of each spec in the target's twin, in their order."""
    rows: list[dict[str, float]] = []
    if ray is not None:
        done = 0

        def advance(k: int) -> None:
            nonlocal done
            done += k
            progress(done, len(specs))

        return run_on_ray(specs, target.model, target.gpu, target.profile,
                          address=ray or None, num_cpus=workers, on_rows=advance)
    work = partial(run_sample, model=target.model, gpu=target.gpu, profile=target.profile)
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(ProcessPoolExecutor(workers)) if workers > 1 else None
        for row in (pool.map(work, specs) if pool else map(work, specs)):
            rows.append(row)
            progress(len(rows), len(specs))
    return rows


def train_target(target: Target, tensor_parallel_size: int = 1, *,
                 samples: int = TARGET_SAMPLES, workers: int = 1, out: Path | None = None,
                 ray: str | None = None, progress: Callable[[int, int], None] | None = None,
                 ) -> tuple[Path, OwnSurrogate]:
    """Make ``target``'s own surrogate from ``samples`` of its placement-shaped twin runs
    (``planner.target_specs``, on ``workers`` processes, or on Ray: ``ray`` "" starts a
    local one of ``workers`` CPUs, else it is a cluster's address): the shipped one carried on with
    them or new models trained on them alone, whichever cross-validates better
    (``planner.own_surrogate``). Written atomically to ``out``, by default the cache where
    ``surrogate_for`` finds it; returned with the choice.
    ``progress`` is told ``(runs done, in all)``."""
    path = out or target_path(target, tensor_parallel_size) or \
        cache_dir() / "surrogate-target-home.bin"
    specs = target_specs(target, tensor_parallel_size, samples)
    rows = _twin_rows(target, specs, workers, ray, progress or (lambda done, total: None))
    own = own_surrogate(rows, default_surrogate)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    own.surrogate.save(tmp, {
        "target_key": target_key(target, tensor_parallel_size),
        "model": target.model.name, "gpu": target.gpu.name,
        "tensor_parallel_size": tensor_parallel_size, "samples": len(rows),
        "start": own.start.value, "cross_validated": own.scores})
    tmp.replace(path)  # a concurrent reader sees no file or the whole new one
    return path, own
