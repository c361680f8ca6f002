"""Recompute the analytic capacity columns (``est_capacity_tps``, ``load_ratio``) of the
bundled training tables and the transfer bench's tables with today's
``planner.features.capacity_estimate`` (``planner.dataset.refeature``), keeping their twin
runs. Run after changing the estimate: ``.venv/bin/python bench/refeature_tables.py``, then
``make surrogate``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.surrogate_transfer import TARGETS  # noqa: E402
from planner import COLUMNS, load_table, refeature, save_table  # noqa: E402
from twin import get_gpu, get_model, load_profile  # noqa: E402


def main() -> None:
    profile = load_profile("roofline-default")
    for target in TARGETS:
        tables = sorted((ROOT / "bench/data/transfer").glob(f"{target.name}-*.csv"))
        if target.name == "a100-80gb-llama-3.1-8b":
            tables += sorted((ROOT / "planner/data").glob(f"{target.name}*.csv"))
        for path in tables:
            rows = load_table(path)
            refeature(rows, get_model(target.model), get_gpu(target.gpu), profile,
                      target.tensor_parallel_size)
            save_table(rows, COLUMNS, path)
            print(f"{path.relative_to(ROOT)}: {len(rows)} rows")


if __name__ == "__main__":
    main()
