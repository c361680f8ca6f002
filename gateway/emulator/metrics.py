"""``/metrics`` as vLLM 0.32 exports it, from the emulated engine.

Names, labels and buckets are vLLM's (``vllm/v1/metrics/loggers.py`` PrometheusStatLogger,
``vllm/v1/metrics/buckets.py``): gauges ``vllm:num_requests_running``,
``vllm:num_requests_waiting``, ``vllm:num_requests_waiting_by_reason{reason}``,
``vllm:kv_cache_usage_perc``; counters ``vllm:num_preemptions``, ``vllm:prompt_tokens``,
``vllm:generation_tokens``, ``vllm:request_success{finished_reason}``; histograms of TTFT,
inter-token latency, end-to-end latency and queue time; and ``vllm:lora_requests_info`` with
its quirks (labels ``max_lora``, ``waiting_lora_adapters``, ``running_lora_adapters`` only;
the value is the Unix time it was last set; label sets seen once stay exported).

Latencies are wall seconds (engine seconds divided by the time scale), as clients see them.
Everything is read at scrape time by one custom collector, registered in the app's own
``CollectorRegistry``; histograms take weighted observations, so one decode step of n
requests is one observation of weight n.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from gateway.emulator.driver import MetricsSink
from twin.events import EngineStats

__all__ = ["ITL_BUCKETS", "REQUEST_LATENCY_BUCKETS", "TTFT_BUCKETS", "EngineMetrics",
           "WeightedHistogram"]

# vllm/v1/metrics/buckets.py L57-80, L84-104, L30-52.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)
REQUEST_LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
                           40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
# vllm/v1/metrics/loggers.py L809-819: one child per FinishReason.
FINISH_REASONS = ("stop", "length", "abort", "error", "repetition")


class WeightedHistogram:
    """Bucket counts with weighted observations (``le`` semantics: value <= bound).

    Examples
    --------
    >>> h = WeightedHistogram((1.0, 2.0))
    >>> h.observe(1.0); h.observe(5.0, 3)
    >>> h.cumulative(), h.sum
    ([1, 1, 4], 16.0)
    """

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self._bounds = np.asarray(bounds, dtype=np.float64)
        self.counts = np.zeros(len(bounds) + 1, dtype=np.int64)
        self.sum = 0.0

    def observe(self, value: float, weight: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += weight
        self.sum += value * weight

    def observe_many(self, values: np.ndarray, weights: np.ndarray) -> None:
        idx = np.searchsorted(self._bounds, values, side="left")
        np.add.at(self.counts, idx, weights)
        self.sum += float(np.dot(values, weights))

    def cumulative(self) -> list[int]:
        return [int(c) for c in np.cumsum(self.counts)]

    def family(self, name: str, doc: str, labels: list[str],
               values: list[str]) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(name, doc, labels=labels)
        cum = self.cumulative()
        buckets = [(repr(float(b)), float(c)) for b, c in zip(self.bounds, cum, strict=False)]
        buckets.append(("+Inf", float(cum[-1])))
        fam.add_metric(values, buckets, self.sum)
        return fam


# The labels of vLLM 0.32's ``vllm:cache_config_info`` (``CacheConfig.metrics_info()`` plus
# ``engine``; vllm/v1/metrics/loggers.py, ``log_metrics_info``: a gauge set to 1), each the
# str() of the field as vLLM writes it; the emulator knows the first few, the rest are
# vLLM's defaults for a dense model.
CACHE_INFO_DEFAULTS: dict[str, str] = {
    "block_size": "16", "gpu_memory_utilization": "0.92", "num_gpu_blocks": "None",
    "num_cpu_blocks": "None", "kv_cache_size_tokens": "None", "enable_prefix_caching": "True",
    "cache_dtype": "auto", "_block_size_resolved": "True", "cache_hit_alignment_tokens": "None",
    "effective_attention_block_size": "None", "enable_mamba_shared_prefix_checkpoint": "False",
    "hash_block_size": "None", "is_attention_free": "False", "kv_cache_dtype_skip_layers": "[]",
    "kv_cache_layout": "None", "kv_cache_max_concurrency": "None",
    "kv_cache_memory_bytes": "None", "kv_offloading_backend": "native",
    "kv_offloading_size": "None", "kv_sharing_fast_prefill": "False",
    "mamba_block_size": "None", "mamba_cache_dtype": "auto", "mamba_cache_mode": "none",
    "mamba_page_size_padded": "None", "mamba_ssm_cache_dtype": "auto",
    "num_gpu_blocks_override": "None", "prefix_cache_retention_interval": "None",
    "prefix_caching_hash_algo": "sha256", "prefix_match_unit": "None",
    "replayssm_buffer_len": "None", "skip_page_size_padded": "False", "sliding_window": "None",
    "swa_bounded_replay": "False", "use_kda_recoverssm": "False", "use_replayssm": "False",
    "user_specified_block_size": "False",
}


def cache_info(known: Mapping[str, object], engine_index: int) -> dict[str, str]:
    """The label values of ``vllm:cache_config_info``: ``known`` over vLLM's defaults."""
    unknown = sorted(set(known) - set(CACHE_INFO_DEFAULTS))
    if unknown:
        raise ValueError(f"not a label of vllm:cache_config_info: {unknown[0]}")
    return {**CACHE_INFO_DEFAULTS, **{k: str(v) for k, v in known.items()},
            "engine": str(engine_index)}


class EngineMetrics(MetricsSink):
    """vLLM's Prometheus metrics for one emulated engine (a prometheus ``Collector``).

    Parameters
    ----------
    model_name, engine_index
        The ``model_name`` and ``engine`` labels.
    max_loras
        The ``max_lora`` label of ``vllm:lora_requests_info``.
    stats
        The engine's live state, read at each scrape.
    clock
        Unix time, for ``vllm:lora_requests_info``.
    """

    def __init__(self, *, model_name: str, engine_index: int, max_loras: int,
                 stats: Callable[[], EngineStats],
                 clock: Callable[[], float] = time.time,
                 cache_config: Mapping[str, object] | None = None) -> None:
        self._labels = ["model_name", "engine"]
        self._values = [model_name, str(engine_index)]
        self._cache_info = cache_info(cache_config or {}, engine_index)
        self._max_loras = str(max_loras)
        self._stats = stats
        self._clock = clock
        self.ttft = WeightedHistogram(TTFT_BUCKETS)
        self.itl = WeightedHistogram(ITL_BUCKETS)
        self.e2e = WeightedHistogram(REQUEST_LATENCY_BUCKETS)
        self.queue = WeightedHistogram(REQUEST_LATENCY_BUCKETS)
        self.success = dict.fromkeys(FINISH_REASONS, 0)
        self._lora_info: dict[tuple[str, str, str], float] = {}
        self._lora_key: tuple[str, str, str] | None = None

    # -- MetricsSink -----------------------------------------------------------------------

    def first_token(self, ttft_s: float, queue_s: float) -> None:
        self.ttft.observe(ttft_s)
        self.queue.observe(queue_s)

    def finished(self, e2e_s: float, reason: str) -> None:
        self.e2e.observe(e2e_s)
        self.success[reason] = self.success.get(reason, 0) + 1

    def inter_token(self, values_s: np.ndarray, weights: np.ndarray) -> None:
        self.itl.observe_many(values_s, weights)

    def lora_state(self, running: tuple[str, ...], waiting: tuple[str, ...]) -> None:
        key = (self._max_loras, ",".join(waiting), ",".join(running))
        self._lora_key = key
        self._lora_info[key] = self._clock()

    # -- Collector -------------------------------------------------------------------------

    def describe(self) -> list[Metric]:
        return []  # no name checks: the registry holds this collector only

    def collect(self) -> Iterable[Metric]:
        s = self._stats()
        lab, val = self._labels, self._values
        yield from self._gauges(s)
        for name, doc, value in (
                ("vllm:num_preemptions", "Cumulative number of preemption from the engine.",
                 s.num_preemptions),
                ("vllm:prompt_tokens", "Number of prefill tokens processed.", s.prompt_tokens),
                ("vllm:generation_tokens", "Number of generation tokens processed.",
                 s.generation_tokens)):
            counter = CounterMetricFamily(name, doc, labels=lab)
            counter.add_metric(val, float(value))
            yield counter
        success = CounterMetricFamily("vllm:request_success",
                                      "Count of successfully processed requests.",
                                      labels=[*lab, "finished_reason"])
        for reason, count in self.success.items():
            success.add_metric([*val, reason], float(count))
        yield success
        yield self.ttft.family("vllm:time_to_first_token_seconds",
                               "Histogram of time to first token in seconds.", lab, val)
        yield self.itl.family("vllm:inter_token_latency_seconds",
                              "Histogram of inter-token latency in seconds.", lab, val)
        yield self.e2e.family("vllm:e2e_request_latency_seconds",
                              "Histogram of e2e request latency in seconds.", lab, val)
        yield self.queue.family("vllm:request_queue_time_seconds",
                                "Histogram of time spent in WAITING phase for request.",
                                lab, val)
        yield self._lora_family()
        info = GaugeMetricFamily("vllm:cache_config_info",
                                 "Information of the LLMEngine CacheConfig",
                                 labels=list(self._cache_info))
        info.add_metric(list(self._cache_info.values()), 1.0)
        yield info

    def _gauges(self, s: EngineStats) -> Iterable[Metric]:
        lab, val = self._labels, self._values
        for name, doc, value in (
                ("vllm:num_requests_running", "Number of requests in model execution batches.",
                 s.num_running),
                ("vllm:num_requests_waiting", "Number of requests waiting to be processed.",
                 s.num_waiting),
                ("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.",
                 s.kv_cache_usage)):
            gauge = GaugeMetricFamily(name, doc, labels=lab)
            gauge.add_metric(val, float(value))
            yield gauge
        by_reason = GaugeMetricFamily(
            "vllm:num_requests_waiting_by_reason",
            "Number of requests waiting, broken down by reason.", labels=[*lab, "reason"])
        deferred = min(s.num_waiting_deferred, s.num_waiting)
        by_reason.add_metric([*val, "capacity"], float(s.num_waiting - deferred))
        by_reason.add_metric([*val, "deferred"], float(deferred))
        yield by_reason

    def _lora_family(self) -> GaugeMetricFamily:
        # vLLM sets the series from the scheduler's stats of each step
        # (vllm/v1/metrics/loggers.py, PrometheusStatLogger.record): none before the engine
        # has run a request; then the current label set at every logging interval.
        if self._lora_key is not None:
            self._lora_info[self._lora_key] = self._clock()
        fam = GaugeMetricFamily("vllm:lora_requests_info", "Running stats on lora requests.",
                                labels=["max_lora", "waiting_lora_adapters",
                                        "running_lora_adapters"])
        for key, stamp in self._lora_info.items():
            fam.add_metric(list(key), stamp)
        return fam
