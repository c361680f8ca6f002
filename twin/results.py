"""Summaries of a run: throughput, latency percentiles, and starvation with its evidence.

Starvation is the paper's verdict (PAPER.md): throughput, in input plus output tokens
processed per second, below 0.9 x the ideal throughput of the tokens that arrived. Tokens of
requests still running at the end count as far as they were processed. lorafleet adds the
same test per adapter, with the evidence (served vs offered tokens, requests left waiting,
the longest wait), and calls an adapter starved only when its longest wait also exceeds a
tenth of the run, so that a rare adapter whose one request arrived in the last second is
not called starved. An adapter is *locked out* when it is starved and served less than
``LOCKOUT_FRACTION`` of its offered tokens: with more adapters than ``max_loras`` slots, vLLM's
skip rule keeps an adapter out for as long as the resident adapters' running sets never empty.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from twin.request import Request

__all__ = ["LOCKOUT_FRACTION", "STARVATION_RATIO", "AdapterResult", "SimulationResult",
           "summarize", "weighted_percentile"]

STARVATION_RATIO = 0.9
#: A starved adapter served less than this fraction of its offered tokens is locked out.
LOCKOUT_FRACTION = 0.1


def weighted_percentile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values`` repeated ``weights`` times.

    Examples
    --------
    >>> weighted_percentile(np.array([1.0, 2.0, 3.0]), np.array([1, 1, 2]), 50)
    2.0
    """
    if len(values) == 0 or weights.sum() == 0:
        return float("nan")
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    cum = np.cumsum(w)
    rank = int(q / 100.0 * (cum[-1] - 1))  # numpy's "lower" method on the repeated values
    return float(v[np.searchsorted(cum, rank + 1, side="left")])


@dataclass(frozen=True, slots=True, kw_only=True)
class AdapterResult:
    name: str
    requests: int
    finished: int
    offered_tps: float
    served_tps: float
    waiting_at_end: int
    max_wait_s: float
    ttft_p99_s: float
    starved: bool

    @property
    def served_fraction(self) -> float:
        """Tokens processed over tokens offered (1.0 when nothing was offered).

        Examples
        --------
        >>> a = AdapterResult(name="a", requests=2, finished=0, offered_tps=10.0,
        ...                   served_tps=0.5, waiting_at_end=2, max_wait_s=9.0,
        ...                   ttft_p99_s=9.0, starved=True)
        >>> a.served_fraction, a.locked_out
        (0.05, True)
        """
        return self.served_tps / self.offered_tps if self.offered_tps > 0 else 1.0

    @property
    def locked_out(self) -> bool:
        return self.starved and self.served_fraction < LOCKOUT_FRACTION


@dataclass(frozen=True, slots=True, kw_only=True)
class SimulationResult:
    """What one worker did in a run (``lorafleet simulate --json`` prints it)."""

    throughput_rps: float
    input_tps: float
    output_tps: float
    throughput_tps: float
    ideal_tps: float
    starved: bool
    starved_adapters: list[str]
    requests: int
    finished: int
    ttft_p50_s: float
    ttft_p99_s: float
    itl_p50_s: float
    itl_p99_s: float
    e2e_p50_s: float
    e2e_p99_s: float
    queue_p99_s: float
    preemptions: int
    lora_loads: int
    kv_blocks: int
    kv_cache_tokens: int
    steps: int
    sim_seconds: float
    wall_seconds: float
    clipped_lengths: int
    adapters: list[AdapterResult]

    @property
    def locked_out_adapters(self) -> list[str]:
        """Starved adapters that were served almost nothing (see ``LOCKOUT_FRACTION``)."""
        return [a.name for a in self.adapters if a.locked_out]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _processed(r: Request) -> tuple[int, int]:
    """Input and output tokens processed for ``r`` so far."""
    if r.first_token_ns is not None:
        return r.prompt_tokens, r.num_output_tokens
    return min(r.num_computed_tokens, r.prompt_tokens), 0


def _pct(x: list[float], q: float) -> float:
    return float(np.percentile(x, q)) if x else float("nan")


def summarize(requests: list[Request], *, duration_s: float, end_ns: int,
              itl_ns: np.ndarray, itl_weight: np.ndarray, preemptions: int,
              lora_loads: int, kv_blocks: int, kv_cache_tokens: int, steps: int,
              wall_seconds: float, clipped_lengths: int) -> SimulationResult:
    """Summarise a run that ended at ``end_ns`` (requests may still be in flight)."""
    by_adapter: dict[str, list[Request]] = {}
    in_done = out_done = in_all = out_all = 0
    ttft: list[float] = []
    e2e: list[float] = []
    queue: list[float] = []
    for r in requests:
        by_adapter.setdefault(r.adapter or "<base>", []).append(r)
        i, o = _processed(r)
        in_done += i
        out_done += o
        in_all += r.prompt_tokens
        out_all += r.max_tokens
        # Requests without a first token count with the time they have waited so far.
        ttft.append(((r.first_token_ns or end_ns) - r.arrival_ns) / 1e9)
        if r.finish_ns is not None:
            e2e.append((r.finish_ns - r.arrival_ns) / 1e9)
        queue.append(((r.first_scheduled_ns or end_ns) - r.arrival_ns) / 1e9)
    finished = sum(1 for r in requests if r.finish_ns is not None)
    adapters = [_adapter_result(name, rs, duration_s, end_ns)
                for name, rs in sorted(by_adapter.items())]
    throughput = (in_done + out_done) / duration_s
    ideal = (in_all + out_all) / duration_s
    return SimulationResult(
        throughput_rps=finished / duration_s, input_tps=in_done / duration_s,
        output_tps=out_done / duration_s, throughput_tps=throughput, ideal_tps=ideal,
        starved=throughput < STARVATION_RATIO * ideal,
        starved_adapters=[a.name for a in adapters if a.starved],
        requests=len(requests), finished=finished,
        ttft_p50_s=_pct(ttft, 50), ttft_p99_s=_pct(ttft, 99),
        itl_p50_s=weighted_percentile(itl_ns, itl_weight, 50) / 1e9,
        itl_p99_s=weighted_percentile(itl_ns, itl_weight, 99) / 1e9,
        e2e_p50_s=_pct(e2e, 50), e2e_p99_s=_pct(e2e, 99), queue_p99_s=_pct(queue, 99),
        preemptions=preemptions, lora_loads=lora_loads, kv_blocks=kv_blocks,
        kv_cache_tokens=kv_cache_tokens, steps=steps, sim_seconds=duration_s,
        wall_seconds=wall_seconds, clipped_lengths=clipped_lengths, adapters=adapters,
    )


def _adapter_result(name: str, rs: list[Request], duration_s: float,
                    end_ns: int) -> AdapterResult:
    served = sum(sum(_processed(r)) for r in rs)
    offered = sum(r.prompt_tokens + r.max_tokens for r in rs)
    waits = [((r.first_token_ns or end_ns) - r.arrival_ns) / 1e9 for r in rs]
    waiting = sum(1 for r in rs if r.first_scheduled_ns is None)
    max_wait = max(waits) if waits else 0.0
    return AdapterResult(
        name=name, requests=len(rs), finished=sum(1 for r in rs if r.finish_ns is not None),
        offered_tps=offered / duration_s, served_tps=served / duration_s,
        waiting_at_end=waiting, max_wait_s=max_wait, ttft_p99_s=_pct(waits, 99),
        starved=served < STARVATION_RATIO * offered and max_wait > 0.1 * duration_s,
    )
