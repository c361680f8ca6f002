"""The dataset's twin runs as Ray tasks (the optional extra ``ray``), for sweeps that outgrow
one machine.

Each task runs a chunk of consecutive ``SampleSpec`` s with ``run_sample`` (the same pure
function the local runs use) and returns its rows with the chunk's first scenario index; rows
are put back in scenario order, so the same seed gives the same table with or without Ray.
Ray's own networking (a local instance or the cluster at an address) is the only I/O here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from planner.dataset import SampleSpec, run_sample
from twin.profile import CalibrationProfile
from twin.specs import GpuSpec, ModelSpec

__all__ = ["RayUnavailableError", "require_ray", "run_on_ray"]


class RayUnavailableError(RuntimeError):
    """Ray is not installed (``pip install 'lorafleet[ray]'``)."""


def require_ray() -> Any:
    """The ``ray`` module; ``RayUnavailableError`` when the extra is not installed."""
    try:
        import ray
    except ImportError:
        raise RayUnavailableError("Ray is not installed: pip install 'lorafleet[ray]'") from None
    return ray


def _run_chunk(start: int, specs: Sequence[SampleSpec], model: ModelSpec, gpu: GpuSpec,
               profile: CalibrationProfile) -> tuple[int, list[dict[str, float]]]:
    return start, [run_sample(spec, model, gpu, profile) for spec in specs]


def run_on_ray(specs: Sequence[SampleSpec], model: ModelSpec, gpu: GpuSpec,
               profile: CalibrationProfile, *, address: str | None = None, num_cpus: int = 1,
               chunk: int = 4, on_rows: Callable[[int], None] | None = None,
               ) -> list[dict[str, float]]:
    """The rows of ``specs`` in their order, computed as Ray tasks of ``chunk`` specs each.

    ``address`` ``None`` starts a local Ray with ``num_cpus`` CPUs (stopped at the end);
    otherwise Ray connects to that cluster (``"auto"``, ``"ray://host:10001"``). If Ray is
    already initialised in this process, that instance is used and left running.
    ``on_rows(k)`` is called as each task's ``k`` rows arrive (progress).
    """
    if chunk < 1:
        raise ValueError(f"chunk: must be >= 1, got {chunk}")
    ray = require_ray()
    started_here = not ray.is_initialized()
    if started_here:
        if address is None:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    try:
        task: Any = ray.remote(_run_chunk)
        # The shared inputs go to the object store once, not once per task.
        shared = (ray.put(model), ray.put(gpu), ray.put(profile))
        pending = [task.remote(i, list(specs[i:i + chunk]), *shared)
                   for i in range(0, len(specs), chunk)]
        done: dict[int, list[dict[str, float]]] = {}
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            start, rows = ray.get(ready[0])
            done[start] = rows
            if on_rows is not None:
                on_rows(len(rows))
        return [row for start in sorted(done) for row in done[start]]
    finally:
        if started_here:
            ray.shutdown()
