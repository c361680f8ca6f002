"""How good a surrogate is, on the samples that matter to placement.

- throughput SMAPE on saturated samples (the twin says the worker starved: it serves its
  capacity, which is what the placer needs to know);
- starvation macro-F1 overall and near the boundary (``near_boundary``), of the classifier
  alone and of the verdict the placer uses (``placer_starved``: the classifier, or the
  predicted throughput below 0.9 of the offered load, the twin's own test);
- latency SMAPE of median TTFT and ITL on unsaturated samples;
- prediction time per call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from planner.surrogate import Surrogate

__all__ = ["Evaluation", "evaluate", "macro_f1", "smape", "split"]


def smape(actual: Sequence[float], predicted: Sequence[float]) -> float:
    """Symmetric mean absolute percentage error, as a fraction.

    Examples
    --------
    >>> round(smape([100.0, 200.0], [110.0, 200.0]), 4)
    0.0476
    """
    terms = [abs(p - a) / ((abs(a) + abs(p)) / 2) for a, p in zip(actual, predicted, strict=True)
             if abs(a) + abs(p) > 0]
    return sum(terms) / len(terms) if terms else float("nan")


def macro_f1(actual: Sequence[bool], predicted: Sequence[bool]) -> float:
    """Mean of the F1 scores of both classes (a class absent from both counts as 1)."""
    scores = []
    for cls in (True, False):
        tp = sum(1 for a, p in zip(actual, predicted, strict=True) if a == cls and p == cls)
        fp = sum(1 for a, p in zip(actual, predicted, strict=True) if a != cls and p == cls)
        fn = sum(1 for a, p in zip(actual, predicted, strict=True) if a == cls and p != cls)
        scores.append(1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / 2


def split(rows: Sequence[dict[str, float]], test_fraction: float = 0.2,
          ) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """Deterministic split: every ``1/test_fraction``-th row is held out."""
    every = max(2, round(1 / test_fraction))
    train = [r for i, r in enumerate(rows) if i % every]
    test = [r for i, r in enumerate(rows) if not i % every]
    return train, test


def starved(row: dict[str, float]) -> bool:
    return bool(row["starved"] or row["any_adapter_starved"])


def near_boundary(row: dict[str, float]) -> bool:
    """A proxy for "near the starvation boundary": the offered load is between 0.7 and 1.4
    times the analytic capacity estimate (the twin's boundary lies at 0.7-1.0 of it).
    ``bench/surrogate.py`` also measures the literal version, with the boundary found by
    bisection in the twin."""
    return 0.7 <= row["load_ratio"] <= 1.4


@dataclass(frozen=True, slots=True, kw_only=True)
class Evaluation:
    samples: int
    saturated: int
    near_boundary: int
    throughput_smape_saturated: float
    starvation_f1: float
    starvation_f1_near_boundary: float
    placer_f1: float
    placer_f1_near_boundary: float
    ttft_smape: float
    itl_smape: float
    predict_us: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate(surrogate: Surrogate, rows: Sequence[dict[str, float]]) -> Evaluation:
    sat = [r for r in rows if r["starved"]]
    near = [r for r in rows if near_boundary(r)]
    started = time.perf_counter()
    preds = [(surrogate.throughput.predict_one(r), surrogate.starvation.predict_one(r))
             for r in rows]
    per_call = (time.perf_counter() - started) / max(1, 2 * len(rows)) * 1e6
    by_id = {id(r): p for r, p in zip(rows, preds, strict=True)}
    verdict = {id(r): p[1] or p[0] < 0.9 * r["offered_tps"] for r, p in zip(rows, preds,
                                                                            strict=True)}
    calm = [r for r in rows if not starved(r) and r["ttft_p50_s"] > 0 and r["itl_p50_s"] > 0]
    lat = [surrogate.latency.predict_one(r) for r in calm]
    return Evaluation(
        samples=len(rows), saturated=len(sat), near_boundary=len(near),
        throughput_smape_saturated=smape([r["throughput_tps"] for r in sat],
                                         [by_id[id(r)][0] for r in sat]),
        starvation_f1=macro_f1([starved(r) for r in rows], [p[1] for p in preds]),
        starvation_f1_near_boundary=macro_f1([starved(r) for r in near],
                                             [by_id[id(r)][1] for r in near]),
        placer_f1=macro_f1([starved(r) for r in rows], [verdict[id(r)] for r in rows]),
        placer_f1_near_boundary=macro_f1([starved(r) for r in near],
                                         [verdict[id(r)] for r in near]),
        ttft_smape=smape([r["ttft_p50_s"] for r in calm], [p["ttft_p50_s"] for p in lat]),
        itl_smape=smape([r["itl_p50_s"] for r in calm], [p["itl_p50_s"] for p in lat]),
        predict_us=per_call if math.isfinite(per_call) else float("nan"),
    )
