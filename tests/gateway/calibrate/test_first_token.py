"""The sweep's requests sent alone: each one's time outside vLLM's own time to first token."""

from __future__ import annotations

import asyncio

import pytest

from gateway.calibrate.client import RequestTiming
from gateway.calibrate.prom import Scrape, parse_metrics
from gateway.calibrate.sweep import TTFT, _alone, _row


class FakeServer:
    """Answers each request after ``client`` seconds of which vLLM's clock saw ``server``;
    the request numbered ``other`` has a second request beside it (two first tokens)."""

    def __init__(self, timings: list[tuple[float, float]], other: int = -1) -> None:
        self.timings, self.other = timings, other
        self.sum = self.count = 0.0
        self.sent = 0

    async def scrape(self) -> Scrape:
        return parse_metrics(f"{TTFT}_sum {self.sum!r}\n{TTFT}_count {self.count!r}\n")

    async def complete(self, model: str, prompt: int, max_tokens: int) -> RequestTiming:
        client, server = self.timings[self.sent]
        self.sum += server + (0.5 if self.sent == self.other else 0.0)
        self.count += 2 if self.sent == self.other else 1
        self.sent += 1
        t = RequestTiming(model, prompt, max_tokens, 10.0)
        t.first = 10.0 + client
        return t


def test_each_request_alone_gives_its_time_outside_the_engine() -> None:
    server = FakeServer([(0.012, 0.010), (0.020, 0.017), (0.011, 0.0095)])
    ttft, outside = asyncio.run(_alone(server, "m", 16, 3))  # type: ignore[arg-type]
    assert ttft == pytest.approx([0.012, 0.020, 0.011])
    assert outside == pytest.approx([0.002, 0.003, 0.0015])
    row = _row(16.0, 0.0, 16.0, 0, 0.012, lora_tokens=0.0, max_loras=1, overhead=True,
               outside=outside)
    assert row["outside_engine_s"] == pytest.approx(0.002)


def test_a_request_that_shared_the_engine_gives_no_outside_time() -> None:
    server = FakeServer([(0.012, 0.010), (0.020, 0.017), (0.011, 0.0095)], other=1)
    ttft, outside = asyncio.run(_alone(server, "m", 16, 3))  # type: ignore[arg-type]
    assert len(ttft) == 3 and outside == pytest.approx([0.002, 0.0015])
    row = _row(16.0, 0.0, 16.0, 0, 0.012, lora_tokens=0.0, max_loras=1, overhead=True)
    assert "outside_engine_s" not in row
