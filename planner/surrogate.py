"""The surrogate: River models of one worker's throughput, starvation and latency.

Each model speaks River (``learn_one(x, y)`` / ``predict_one(x)``) over the feature dicts of
``planner.features``. The models learn dimensionless targets rather than raw numbers:
``ThroughputModel`` the share of the offered tokens served, as a correction to the analytic
share ``min(1, capacity / offered)`` (``analytic_share``: within 5% on its own for workers
with a slot per adapter, so the learned part is what the analytic model misses: slot
thrashing, bursts, short runs), ``LatencyModel`` log latencies; the analytic capacity
estimate is among their features. Which River estimator sits inside is
a constructor parameter, chosen by measurement (``bench/surrogate.py``). Nothing is trained
in a constructor; ``Surrogate.save``/``load`` are the only file access.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from river import forest, linear_model, neighbors, optim, preprocessing, tree

from planner.artefact import dumps, loads
from planner.features import FEATURES

__all__ = [
    "CAPACITY_FEATURES",
    "CAPACITY_REGRESSORS",
    "CLASSIFIERS",
    "REGRESSORS",
    "STARVATION_MODELS",
    "LatencyModel",
    "NearestRegressor",
    "StarvationModel",
    "Surrogate",
    "ThroughputModel",
    "analytic_share",
    "scale_free",
    "transform",
]

_LOG = {"sum_rate", "std_rate", "mean_input", "mean_output", "std_input", "std_output",
        "base_rate", "offered_tps", "kv_tokens", "est_capacity_tps", "served_adapters",
        "adapter_slots", "expected_active"}


def transform(x: Mapping[str, float]) -> dict[str, float]:
    """Model inputs from a feature dict: logs of scale features, ratios as they are."""
    out = {}
    for name in FEATURES:
        v = float(x[name])
        out[name] = math.log1p(max(v, 0.0)) if name in _LOG else v
    return out


# What a target's speed and memory scale (rates, tokens/s, KV tokens): the throughput
# correction learns without them (``scale_free``), so it carries to GPUs and models of other
# speeds. Trained on the home target's tables, on held-out workers of A100 + Llama-3.1-70B at
# TP 4 its saturated-throughput SMAPE was 3.4% with them and 1.1% without; within 0.1 points
# either way on the home target, H100 + Qwen2.5-7B and L40S + Llama-3.2-1B
# (bench/surrogate_transfer.py).
SCALED: frozenset[str] = frozenset({"sum_rate", "std_rate", "base_rate", "offered_tps",
                                    "kv_tokens", "est_capacity_tps"})


def scale_free(x: Mapping[str, float]) -> dict[str, float]:
    """``transform(x)`` without the ``SCALED`` features, with the rates' spread and the base
    model's share of them and the KV cache in requests of the mean length instead.

    Examples
    --------
    >>> x = dict.fromkeys(FEATURES, 1.0) | {"sum_rate": 4.0, "std_rate": 2.0, "base_rate": 1.0,
    ...                                      "kv_tokens": 300.0, "mean_input": 100.0,
    ...                                      "mean_output": 50.0}
    >>> f = scale_free(x)
    >>> f["rate_spread"], f["base_share"], round(f["kv_requests"], 3), "sum_rate" in f
    (0.5, 0.25, 1.099, False)
    """
    out = {k: v for k, v in transform(x).items() if k not in SCALED}
    rate = max(float(x["sum_rate"]), 1e-12)
    out["rate_spread"] = float(x["std_rate"]) / rate
    out["base_share"] = float(x["base_rate"]) / rate
    length = max(float(x["mean_input"]) + float(x["mean_output"]), 1.0)
    out["kv_requests"] = math.log1p(max(float(x["kv_tokens"]), 0.0) / length)
    return out


def _linear_regressor(seed: int) -> Any:
    return preprocessing.StandardScaler() | linear_model.LinearRegression(
        optimizer=optim.SGD(0.01), l2=1e-4)


REGRESSORS: dict[str, Callable[[int], Any]] = {
    "linear": _linear_regressor,
    "hoeffding": lambda seed: preprocessing.StandardScaler()
    | tree.HoeffdingAdaptiveTreeRegressor(grace_period=50, seed=seed),
    "arf": lambda seed: forest.ARFRegressor(n_models=10, seed=seed),
    "amf": lambda seed: forest.AMFRegressor(n_estimators=10, seed=seed),
    "knn": lambda seed: preprocessing.StandardScaler()
    | neighbors.KNNRegressor(n_neighbors=5),
}

CLASSIFIERS: dict[str, Callable[[int], Any]] = {
    "logistic": lambda seed: preprocessing.StandardScaler() | linear_model.LogisticRegression(),
    "hoeffding": lambda seed: preprocessing.StandardScaler()
    | tree.HoeffdingAdaptiveTreeClassifier(grace_period=50, seed=seed),
    # 40 trees: the fallback of ``capacity-*`` for workers whose slots thrash, where a forest
    # of 10 moved with its seed (near-boundary macro-F1 0.79-0.84 over three seeds on a
    # validation split of the training tables; largest adapters per GPU off by 10-11%); 40
    # trees: 0.86-0.87 and 3-4% over two seeds. The placer rarely asks it (a slot per adapter
    # unless memory forbids), so its 0.5 ms a call stays out of the placer's hot path.
    "arf": lambda seed: forest.ARFClassifier(n_models=40, seed=seed),
    "amf": lambda seed: forest.AMFClassifier(n_estimators=10, seed=seed),
}


class NearestRegressor:
    """The mean target of the ``n_neighbors`` stored rows nearest to ``x`` (exact search; each
    of ``features`` scaled by the stored rows' standard deviation), over the last ``window``
    rows learned.

    River's ``KNNRegressor`` behind a ``StandardScaler`` stores each row scaled by the running
    statistics of its time, so rows learned early sit at other scales than later ones, and its
    search (SWINN) is approximate; for a few hundred rows an exact search is about as fast.

    Examples
    --------
    >>> knn = NearestRegressor(n_neighbors=2, features=("a",))
    >>> for a, y in [(0.0, 1.0), (1.0, 2.0), (10.0, 5.0)]:
    ...     knn.learn_one({"a": a}, y)
    >>> knn.predict_one({"a": 0.2})
    1.5
    """

    def __init__(self, n_neighbors: int = 6, features: Sequence[str] | None = None,
                 window: int = 5000) -> None:
        if n_neighbors < 1 or window < 1:
            raise ValueError("n_neighbors, window: must be >= 1")
        self.n_neighbors = n_neighbors
        self.features = features
        self.window = window
        self._rows: deque[tuple[list[float], float]] = deque(maxlen=window)
        self._index: tuple[Any, Any, Any] | None = None  # scaled rows, targets, scales

    def _vector(self, x: Mapping[str, float]) -> list[float]:
        return [float(x[f]) for f in (self.features or sorted(x))]

    def learn_one(self, x: Mapping[str, float], y: float) -> None:
        self._rows.append((self._vector(x), float(y)))
        self._index = None

    def predict_one(self, x: Mapping[str, float]) -> float:
        if not self._rows:
            return 0.0
        if self._index is None:
            rows = np.array([v for v, _ in self._rows])
            scale = rows.std(axis=0)
            scale[scale == 0] = 1.0
            self._index = (rows / scale, np.array([y for _, y in self._rows]), scale)
        rows, targets, scale = self._index
        dist = ((rows - np.array(self._vector(x)) / scale) ** 2).sum(axis=1)
        k = min(self.n_neighbors, len(dist))
        return float(targets[np.argpartition(dist, k - 1)[:k]].mean())


# The features a ``capacity-nearest`` model measures distance in: not the load (sum_rate,
# offered_tps, load_ratio: it is asked near the boundary but learns from saturated workers,
# above it), and not what, with a slot per adapter, follows from the adapters and their
# ranks (adapter_slots, max_lora_rank, kv_tokens, expected_active; slot_coverage is 1). By
# backward elimination on validation folds of the placement-shaped table: pooled
# near-boundary macro-F1 0.944-0.947 with every feature but the load's, 0.950-0.954 with
# these (means over four fold layouts, 4-8 neighbours). 10 neighbours once the capacity
# also learns the bundled capacity table (planner/training.py).
CAPACITY_FEATURES: tuple[str, ...] = (
    "std_rate", "max_size", "mean_size", "std_size", "served_adapters", "mean_input",
    "mean_output", "std_input", "std_output", "burstiness", "base_rate", "active_ratio",
    "lora_pressure", "est_capacity_tps")
CAPACITY_REGRESSORS: dict[str, Callable[[int], Any]] = {
    **REGRESSORS,
    "nearest": lambda seed: NearestRegressor(n_neighbors=10, features=CAPACITY_FEATURES),
}

CAPACITY_PREFIX = "capacity-"
# The log margin (about 2% of capacity) over which a ``capacity-*`` model's probability of
# starvation goes from 0.27 to 0.73: its capacity error on saturated held-out workers.
CAPACITY_MARGIN = 0.02
# A worker serving less than this share of the tokens that arrived is saturated: it served
# its capacity (0.95 rather than the verdict's 0.9 adds the rows just short of starving,
# where the boundary is; chosen on a validation split of the training tables).
SATURATED = 0.95
STARVATION_MODELS: tuple[str, ...] = (*CLASSIFIERS,
                                      *(CAPACITY_PREFIX + name for name in CAPACITY_REGRESSORS))


def analytic_share(x: Mapping[str, float]) -> float:
    """The share of the offered tokens the analytic capacity estimate says a worker serves.

    Examples
    --------
    >>> analytic_share({"load_ratio": 0.5}), analytic_share({"load_ratio": 2.0})
    (1.0, 0.5)
    """
    return min(1.0, 1.0 / max(x["load_ratio"], 1e-9))


class ThroughputModel:
    """Tokens/s a worker serves, learned as the share of the offered tokens it serves minus
    the analytic share (``analytic_share``), from ``scale_free`` inputs. (``learn_one`` takes
    the served tokens/s and, in ``offered``, the tokens/s that arrived in that window.)"""

    def __init__(self, model: str = "arf", seed: int = 0) -> None:
        self.model = model
        self.seed = seed
        self._est = REGRESSORS[model](seed)
        self.scale_free = True

    def _inputs(self, x: Mapping[str, float]) -> dict[str, float]:
        # Models saved before ``scale_free`` learned every feature.
        return scale_free(x) if getattr(self, "scale_free", False) else transform(x)

    def learn_one(self, x: Mapping[str, float], y: float, offered: float | None = None) -> None:
        total = offered if offered is not None else x["offered_tps"]
        if total > 0:
            self._est.learn_one(self._inputs(x), min(y / total, 1.5) - analytic_share(x))

    def predict_one(self, x: Mapping[str, float]) -> float:
        share = float(self._est.predict_one(self._inputs(x))) + analytic_share(x)
        return min(max(share, 0.0), 1.0) * x["offered_tps"]


class StarvationModel:
    """Whether a worker starves (the paper's verdict, or any adapter's).

    ``model`` is a River classifier of ``CLASSIFIERS``, or ``capacity-<regressor>``
    (``STARVATION_MODELS``): for workers with a slot per LoRA adapter (``active_ratio <= 1``,
    as the placer builds them) the paper's test on a learned capacity, a
    ``CAPACITY_REGRESSORS`` model of ``log(served / est_capacity_tps)`` learned from such
    workers' saturated rows (served below ``SATURATED`` of the offered tokens: it serves its
    capacity), so starved when 0.9 x the offered load exceeds it (the probability a logistic
    of that log margin, scale ``CAPACITY_MARGIN``); for workers whose slots thrash, the ARF
    classifier. The capacity learns from how much a saturated worker serves, not from a
    yes/no label (measured against the classifiers in ``bench/surrogate.py``), and from an
    unsaturated worker that its capacity is at least what it served, where the model says
    less: near the boundary only the workers of lower capacity are saturated, so the
    saturated rows alone bias the capacity low there (on validation folds of the
    placement-shaped table, near-boundary macro-F1 0.923 -> 0.936 with ARF, 0.941 -> 0.943
    with River's k-NN).
    """

    def __init__(self, model: str = "capacity-nearest", seed: int = 0,
                 threshold: float = 0.5) -> None:
        if model not in STARVATION_MODELS:
            raise ValueError(f"model: one of {sorted(STARVATION_MODELS)}, got {model!r}")
        self.model = model
        self.seed = seed
        self.threshold = threshold
        capacity = model.removeprefix(CAPACITY_PREFIX) if model.startswith(CAPACITY_PREFIX) \
            else None
        self._est = CLASSIFIERS["arf" if capacity else model](seed)
        self._capacity = CAPACITY_REGRESSORS[capacity](seed) if capacity else None

    def learn_one(self, x: Mapping[str, float], y: bool, served: float | None = None,
                  offered: float | None = None) -> None:
        """Learn the label ``y``; with ``served`` (tokens/s) and ``offered`` (the tokens/s
        that arrived), a worker's capacity too: what a saturated one served, and at least
        what an unsaturated one served."""
        self._est.learn_one(transform(x), bool(y))
        if served is not None and offered is not None:
            self.learn_capacity(x, served, offered)

    def learn_capacity(self, x: Mapping[str, float], served: float, offered: float) -> None:
        """Learn only the capacity (no label; nothing for a plain classifier or a worker
        whose slots thrash): what a saturated worker served, and at least what an
        unsaturated one served."""
        if self._capacity is None or served <= 0 or x["active_ratio"] > 1.0:
            return
        t = transform(x)
        level = math.log(served / x["est_capacity_tps"])
        if served < SATURATED * offered or float(self._capacity.predict_one(t)) < level:
            self._capacity.learn_one(t, level)

    def predict_proba_one(self, x: Mapping[str, float]) -> float:
        t = transform(x)
        capacity = getattr(self, "_capacity", None)  # None in surrogates saved before it
        if capacity is not None and x["active_ratio"] <= 1.0:
            margin = math.log(max(0.9 * x["load_ratio"], 1e-12)) - float(
                capacity.predict_one(t))
            return 1.0 / (1.0 + math.exp(-min(max(margin / CAPACITY_MARGIN, -50.0), 50.0)))
        return float(self._est.predict_proba_one(t).get(True, 0.0))

    def predict_one(self, x: Mapping[str, float]) -> bool:
        return self.predict_proba_one(x) >= self.threshold


class LatencyModel:
    """Median TTFT and ITL in seconds (log targets); observable online at any load."""

    def __init__(self, model: str = "arf", seed: int = 0) -> None:
        self.model = model
        self.seed = seed
        self._ttft = REGRESSORS[model](seed)
        self._itl = REGRESSORS[model](seed + 1)

    def learn_one(self, x: Mapping[str, float], y: Mapping[str, float]) -> None:
        t = transform(x)
        if y.get("ttft_p50_s", -1.0) > 0:
            self._ttft.learn_one(t, math.log(y["ttft_p50_s"]))
        if y.get("itl_p50_s", -1.0) > 0:
            self._itl.learn_one(t, math.log(y["itl_p50_s"]))

    def predict_one(self, x: Mapping[str, float]) -> dict[str, float]:
        t = transform(x)
        return {"ttft_p50_s": math.exp(float(self._ttft.predict_one(t))),
                "itl_p50_s": math.exp(float(self._itl.predict_one(t)))}


class Surrogate:
    """The three models together, trained on dataset rows and saved as one file."""

    def __init__(self, throughput: ThroughputModel, starvation: StarvationModel,
                 latency: LatencyModel) -> None:
        self.throughput = throughput
        self.starvation = starvation
        self.latency = latency
        self.samples_seen = 0

    @classmethod
    def create(cls, regressor: str = "arf", classifier: str = "capacity-nearest", seed: int = 0,
               latency: str | None = None) -> Surrogate:
        return cls(ThroughputModel(regressor, seed), StarvationModel(classifier, seed),
                   LatencyModel(latency or regressor, seed))

    def learn_row(self, row: Mapping[str, float]) -> None:
        """Learn one dataset row (features plus the twin's targets)."""
        self.throughput.learn_one(row, row["throughput_tps"], row["ideal_tps"])
        self.starvation.learn_one(row, bool(row["starved"] or row["any_adapter_starved"]),
                                  row["throughput_tps"], row["ideal_tps"])
        self.latency.learn_one(row, row)
        self.samples_seen += 1

    def learn_capacity_row(self, row: Mapping[str, float]) -> None:
        """Learn one dataset row into the starvation model's capacity only
        (``StarvationModel.learn_capacity``)."""
        self.starvation.learn_capacity(row, row["throughput_tps"], row["ideal_tps"])

    def save(self, path: str | Path, meta: Mapping[str, Any] | None = None) -> None:
        """Write the surrogate in ``planner.artefact``'s format, ``meta`` in its header."""
        Path(path).write_bytes(dumps(self, meta))

    @staticmethod
    def load(path: str | Path) -> Surrogate:
        """A surrogate ``save`` wrote; a ``ValueError`` naming the file for anything else
        (loading runs no code the file names: ``planner.artefact``)."""
        try:
            obj = loads(Path(path).read_bytes())
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        if not isinstance(obj, Surrogate):
            raise ValueError(f"{path}: not a lorafleet surrogate")
        return obj
