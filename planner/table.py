"""Explicit load and save of the dataset table (CSV, one row per sampled worker)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

__all__ = ["load_table", "save_table"]


def save_table(rows: Sequence[dict[str, float]], columns: Sequence[str], path: Path) -> None:
    """Write ``rows`` with ``columns`` in that order (atomically: a temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([repr(float(row[c])) for c in columns])
    tmp.replace(path)


def load_table(path: Path) -> list[dict[str, float]]:
    """Read a table written by ``save_table``; raises ``ValueError`` naming the bad cell."""
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        rows = []
        for n, raw in enumerate(reader, 2):
            try:
                rows.append({k: float(v) for k, v in raw.items()})
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{n}: not a number ({exc})") from None
    return rows
