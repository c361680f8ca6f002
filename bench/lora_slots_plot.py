"""A two-panel SVG of the LoRA step rows against the fitted step model (no plotting library).

Left: batch-1 steps of the base model against ``max_loras``, one colour per
``max_lora_rank``. Right: batch-220 steps on 300 slots against the adapters in the step (filled
where the reference logged them, hollow where derived), one colour per output length; the
dashed line leaves out ``per_adapter_sq_s`` (what a cost linear in the adapters would give).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from twin.specs import EngineConfig
from twin.step_time import LinearCoefficients, LinearStepTime

__all__ = ["write_svg"]

_W, _H, _PAD = 460, 340, 52
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c")


class _Panel:
    def __init__(self, x0: float, title: str, xlabel: str, xs: tuple[float, float],
                 ys: tuple[float, float]) -> None:
        self.x0, self.xs, self.ys = x0, xs, ys
        self.parts = [f'<text x="{x0 + _W / 2}" y="18" text-anchor="middle" '
                      f'font-size="13">{title}</text>',
                      f'<text x="{x0 + _W / 2}" y="{_H - 8}" text-anchor="middle">{xlabel}'
                      "</text>",
                      f'<text x="{x0 + 14}" y="{_H / 2}" transform="rotate(-90 {x0 + 14} '
                      f'{_H / 2})" text-anchor="middle">step time (ms)</text>']
        for v in np.linspace(*xs, 5):
            self.parts.append(f'<text x="{self.px(v):.1f}" y="{_H - _PAD + 16}" '
                              f'text-anchor="middle">{v:.0f}</text>')
        for v in np.linspace(*ys, 5):
            self.parts.append(f'<text x="{x0 + _PAD - 4}" y="{self.py(v) + 4:.1f}" '
                              f'text-anchor="end">{v:.0f}</text>')
            self.parts.append(f'<line x1="{x0 + _PAD}" x2="{x0 + _W - 10}" y1="{self.py(v):.1f}"'
                              f' y2="{self.py(v):.1f}" stroke="#ddd"/>')

    def px(self, v: float) -> float:
        return self.x0 + _PAD + (v - self.xs[0]) / (self.xs[1] - self.xs[0]) * (_W - _PAD - 10)

    def py(self, v: float) -> float:
        return _H - _PAD - (v - self.ys[0]) / (self.ys[1] - self.ys[0]) * (_H - _PAD - 30)

    def line(self, xs: Sequence[float], ys: Sequence[float], colour: str,
             dashed: bool = False) -> None:
        pts = " ".join(f"{self.px(x):.1f},{self.py(y):.1f}" for x, y in zip(xs, ys, strict=True))
        dash = ' stroke-dasharray="5,4"' if dashed else ""
        self.parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}"{dash}/>')

    def point(self, x: float, y: float, colour: str, filled: bool = True) -> None:
        fill = colour if filled else "white"
        self.parts.append(f'<circle cx="{self.px(x):.1f}" cy="{self.py(y):.1f}" r="3.2" '
                          f'fill="{fill}" stroke="{colour}"/>')

    def legend(self, i: int, text: str, colour: str) -> None:
        y = 40 + 16 * i
        self.parts.append(f'<rect x="{self.x0 + _PAD + 10}" y="{y - 8}" width="10" height="10" '
                          f'fill="{colour}"/><text x="{self.x0 + _PAD + 26}" y="{y + 1}">{text}'
                          "</text>")


def _curve(lin: LinearCoefficients, slots: int, rank: int, batch: float, context: float,
           adapters: Sequence[float]) -> list[float]:
    model = LinearStepTime(lin, EngineConfig(max_loras=slots, max_lora_rank=rank,
                                             max_num_seqs=2048, max_num_batched_tokens=2048))
    return [float(model.predict(0.0, batch, context, k, batch if k else 0.0)) * 1e3
            for k in adapters]


def write_svg(rows: Sequence[dict[str, Any]], lin: LinearCoefficients, path: Path) -> None:
    """Draw the ``slots`` and ``adapters`` rows of ``bench.reference_steps`` and the model."""
    left = _Panel(0, "batch 1, base model: step vs max_loras", "max_loras", (0, 400), (10, 24))
    slot_rows = [r for r in rows if r["group"] == "slots"]
    for i, rank in enumerate(sorted({r["max_lora_rank"] for r in slot_rows})):
        mine = [r for r in slot_rows if r["max_lora_rank"] == rank]
        ctx = mine[0]["context_tokens"]
        xs = list(range(8, max(r["max_loras"] for r in mine) + 1, 8))
        left.line(xs, [_curve(lin, s, rank, 1.0, ctx, [0.0])[0] for s in xs], _COLOURS[i])
        for r in mine:
            left.point(r["max_loras"], r["measured_s"] * 1e3, _COLOURS[i])
        left.legend(i, f"max_lora_rank {rank}", _COLOURS[i])
    right = _Panel(_W, "batch 220, 300 slots: step vs adapters in the step",
                   "distinct adapters per step", (0, 160), (30, 95))
    ad_rows = [r for r in rows if r["group"] == "adapters"]
    linear_only = replace(lin, lora=replace(lin.lora, per_adapter_sq_s=0.0))
    ks = list(np.linspace(1.0, 160.0, 60))
    for i, ctx in enumerate(sorted({r["context_tokens"] for r in ad_rows})):
        mine = [r for r in ad_rows if r["context_tokens"] == ctx]
        out_len = mine[0]["step"].split("out=")[-1]
        right.line(ks, _curve(lin, 300, 8, 220.0, ctx, ks), _COLOURS[i])
        right.line(ks, _curve(linear_only, 300, 8, 220.0, ctx, ks), _COLOURS[i], dashed=True)
        for r in mine:
            right.point(r["distinct_adapters"], r["measured_s"] * 1e3, _COLOURS[i],
                        r["adapters_measured"])
        right.legend(i, f"output {out_len} tokens", _COLOURS[i])
    body = "\n".join(left.parts + right.parts)
    path.write_text(f'<svg xmlns="http://www.w3.org/2000/svg" width="{2 * _W}" height="{_H}" '
                    f'font-family="sans-serif" font-size="11">\n<rect width="100%" '
                    f'height="100%" fill="white"/>\n{body}\n</svg>\n')
