"""The demo's terminal output: a live ``rich`` view on a terminal, plain progress lines
otherwise (CI, pipes), and the closing summary (a table, and with ``--json`` one JSON line
last)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table

from gateway.demo.fleet import DemoFleet, FleetReading
from gateway.demo.stats import DemoStats

__all__ = ["Snapshot", "plain_line", "render", "summary", "summary_table"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Everything one refresh shows."""

    elapsed_s: float
    time_scale: float
    requests: int
    failed: int
    in_flight: int
    rate_rps: float
    ttft_p50_s: float
    ttft_p99_s: float
    gpus_active: int  # GPUs of the workers with adapters routed to them
    workers: int
    reading: FleetReading  # the gateway's metrics: GPUs running, baselines, saved, moved
    adapters_per_worker: list[int]
    outstanding: list[int]
    replans: int = 0
    events: tuple[str, ...] = ()  # the last re-plans, one line each


def snapshot(stats: DemoStats, fleet: DemoFleet, *, now: float, start: float,
             start_wall: float = 0.0) -> Snapshot:
    return Snapshot(elapsed_s=now - start, time_scale=stats.time_scale,
                    requests=stats.requests, failed=stats.failed, in_flight=stats.in_flight,
                    rate_rps=stats.rate(now, start), ttft_p50_s=stats.ttft_percentile(50),
                    ttft_p99_s=stats.ttft_percentile(99), gpus_active=fleet.gpus_active,
                    workers=len(fleet.workers.urls), reading=fleet.reading(),
                    adapters_per_worker=fleet.adapters_per_worker(),
                    outstanding=fleet.outstanding(), replans=len(fleet.replans),
                    events=tuple(event_line(r, start_wall) for r in fleet.replans[-5:]))


def event_line(r: dict[str, Any], start_wall: float) -> str:
    """One re-plan as the view lists it."""
    diff = r["diff"]
    migration = r.get("migration", {})
    moved, retired = len(migration.get("moved", diff["moved"])), diff["retired"]
    outcome = migration.get("outcome", "no change" if not diff["steps"] else "-")
    text = (f"t={r['at'] - start_wall:5.0f}s {r['trigger']}: plan {r['planned_gpus']} GPUs, "
            f"moved {moved}")
    if retired:
        text += f", retired {', '.join(retired)}"
    if r.get("validated") is not None:
        text += ", twin: " + ("ok" if r["validated"] else f"starves {', '.join(r['starved'])}")
        if r.get("repairs"):
            text += f" after {r['repairs']} stricter re-plan(s)"
    if r.get("capacity_scale", 1.0) != 1.0:
        text += f", capacity x{r['capacity_scale']:.2f}"
    return text + f" ({outcome})"


def _s(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"


def _by_policy(values: dict[str, int] | dict[str, float]) -> str:
    return ", ".join(f"{k} {v:,.0f}" for k, v in values.items())


def render(s: Snapshot) -> RenderableType:
    """The live view."""
    head = Table(title=f"lorafleet demo: {s.elapsed_s:.0f} s wall, "
                 f"{s.elapsed_s * s.time_scale:.0f} s simulated (time scale {s.time_scale:g})",
                 show_header=False)
    head.add_column(justify="left")
    head.add_column(justify="right")
    failed = f"[red]{s.failed}[/red]" if s.failed else "[green]0[/green]"
    rows = [("requests (failed)", f"{s.requests:,} ({failed})"),
            ("requests/s wall (simulated)",
             f"{s.rate_rps:.1f} ({s.rate_rps / s.time_scale:.1f})"),
            ("in flight", str(s.in_flight)),
            ("TTFT p50 / p99 (simulated s)", f"{_s(s.ttft_p50_s)} / {_s(s.ttft_p99_s)}"),
            ("GPUs routed to / running (planned)",
             f"[bold green]{s.gpus_active}[/bold green] / {s.reading.gpus_running} "
             f"({s.reading.gpus_planned})"),
            ("baselines (GPUs)", _by_policy(s.reading.baselines)),
            ("GPU-seconds saved vs running", _by_policy(s.reading.gpu_seconds_saved)),
            ("re-plans / migrations / adapters moved",
             f"{s.replans} / {s.reading.migrations} / {s.reading.adapters_moved}")]
    for label, value in rows:
        head.add_row(label, value)
    workers = Table(title="workers")
    for col in ("worker", "adapters", "in flight"):
        workers.add_column(col, justify="right")
    for i, (n, q) in enumerate(zip(s.adapters_per_worker, s.outstanding, strict=True)):
        workers.add_row(f"w{i}", str(n) if n else "[dim]idle[/dim]", str(q))
    if not s.events:
        return Group(head, workers)
    events = Table(title="re-plans", show_header=False)
    events.add_column(justify="left")
    for line in s.events:
        events.add_row(line)
    return Group(head, workers, events)


def plain_line(s: Snapshot) -> str:
    """One progress line for a pipe."""
    return (f"demo t={s.elapsed_s:.0f}s requests={s.requests} failed={s.failed} "
            f"rps={s.rate_rps:.1f} ttft_p50={_s(s.ttft_p50_s)}s ttft_p99={_s(s.ttft_p99_s)}s "
            f"gpus_active={s.gpus_active}/{s.workers} gpus_running={s.reading.gpus_running} "
            + "".join(f"baseline_{k}={v} " for k, v in s.reading.baselines.items())
            + "".join(f"saved_gpu_s_{k}={v:.0f} " for k, v in s.reading.gpu_seconds_saved.items())
            + f"adapters_per_worker={s.adapters_per_worker} replans={s.replans} "
            f"migrations={s.reading.migrations} moved={s.reading.adapters_moved}")


def summary(stats: DemoStats, *, gpus_active: int, reading: FleetReading, adapters: int,
            wall_s: float, abandoned: int, adapters_per_worker: list[int],
            replans: list[dict[str, Any]] | None = None,
            start_wall: float | None = None) -> dict[str, Any]:
    """The result, as ``--json`` prints it (NaN latencies become null)."""
    def num(v: float) -> float | None:
        return None if math.isnan(v) else round(v, 4)

    return {"requests": stats.requests, "failed": stats.failed, "abandoned": abandoned,
            "streamed": stats.streamed, "errors": dict(stats.errors),
            "gpus_active": gpus_active, "gpus_running": reading.gpus_running,
            "planned_gpus": reading.gpus_planned, "baselines": reading.baselines,
            "gpu_seconds_saved": {k: round(v, 1) for k, v in reading.gpu_seconds_saved.items()},
            "adapters": adapters, "adapters_per_worker": adapters_per_worker,
            "ttft_p50_s": num(stats.ttft_percentile(50)),
            "ttft_p99_s": num(stats.ttft_percentile(99)),
            "e2e_p50_s": num(stats.e2e_percentile(50)),
            "e2e_p99_s": num(stats.e2e_percentile(99)),
            "migrations": reading.migrations, "adapters_moved": reading.adapters_moved,
            "replans": len(replans or []),
            "replan_outcomes": _outcomes(replans or []),
            "replan_log": [event_line(r, start_wall if start_wall is not None else r["at"])
                           for r in replans or []],
            "time_scale": stats.time_scale, "wall_s": round(wall_s, 2),
            "simulated_s": round(wall_s * stats.time_scale, 1),
            "requests_per_s": round(stats.requests / wall_s, 2) if wall_s > 0 else 0.0}


def _outcomes(replans: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in replans:
        key = r.get("migration", {}).get("outcome", "unchanged")
        out[key] = out.get(key, 0) + 1
    return out


def summary_table(out: dict[str, Any]) -> Table:
    failed = out["failed"]
    table = Table(title="lorafleet demo: summary", show_header=False)
    table.add_column(justify="left")
    table.add_column(justify="right")
    lat = out["ttft_p50_s"], out["ttft_p99_s"], out["e2e_p50_s"], out["e2e_p99_s"]
    shown = ["-" if v is None else f"{v:.3f}" for v in lat]
    rows = [
        ("GPUs routed to / running (planned)",
         f"{out['gpus_active']} / {out['gpus_running']} ({out['planned_gpus']})"),
        *((f"GPUs, baseline {k}", str(v)) for k, v in out["baselines"].items()),
        *((f"GPU-seconds saved vs {k}", f"{v:,.0f}")
          for k, v in out["gpu_seconds_saved"].items()),
        ("adapters per worker", " ".join(map(str, out["adapters_per_worker"]))),
        ("requests (streamed)", f"{out['requests']:,} ({out['streamed']:,})"),
        ("failed", f"[red]{failed}[/red]" if failed else "[green]0[/green]"),
        ("still queued at the end (abandoned)", str(out["abandoned"])),
        ("TTFT p50 / p99 (simulated s)", f"{shown[0]} / {shown[1]}"),
        ("E2E p50 / p99 (simulated s)", f"{shown[2]} / {shown[3]}"),
        ("wall / simulated s", f"{out['wall_s']:.0f} / {out['simulated_s']:.0f}"),
        ("re-plans / migrations / adapters moved",
         f"{out['replans']} / {out['migrations']} / {out['adapters_moved']}"),
        *(("  re-plan", line) for line in out.get("replan_log", [])[-8:]),
    ]
    if out["errors"]:
        rows.append(("errors", ", ".join(f"{k} {v}" for k, v in out["errors"].items())))
    for label, value in rows:
        table.add_row(label, value)
    return table
