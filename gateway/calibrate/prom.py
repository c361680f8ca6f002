"""Reading a Prometheus scrape of vLLM's ``/metrics`` (pure: text in, numbers out)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Scrape", "parse_metrics"]


@dataclass(frozen=True, slots=True)
class Scrape:
    """Samples by name: ``{sample name: [(labels, value), ...]}``."""

    samples: dict[str, list[tuple[dict[str, str], float]]]

    def total(self, name: str) -> float:
        """The sum of ``name`` over its label sets (0 when absent).

        Examples
        --------
        >>> parse_metrics('a_total{x="1"} 2\\na_total{x="2"} 3\\n').total("a_total")
        5.0
        """
        return float(sum(v for _, v in self.samples.get(name, ())))

    def histogram(self, name: str) -> tuple[float, float]:
        """``(sum, count)`` of the histogram ``name`` over its label sets."""
        return self.total(f"{name}_sum"), self.total(f"{name}_count")

    def lora_info(self) -> dict[str, str]:
        """The labels of ``vllm:lora_requests_info``'s latest series (its value is the time
        it was set; old label sets are never cleared), or ``{}``."""
        series = self.samples.get("vllm:lora_requests_info", [])
        if not series:
            return {}
        return max(series, key=lambda s: s[1])[0]


def parse_metrics(text: str) -> Scrape:
    """Parse the Prometheus text format.

    Examples
    --------
    >>> s = parse_metrics('h_sum 1.5\\nh_count 3\\n')
    >>> s.histogram("h")
    (1.5, 3.0)
    """
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return Scrape(samples)
