"""What ``lorafleet admin`` prints: each admin answer as tables and lines a person reads
(``--json`` prints the answer as it came). Every reader tolerates a field it does not know
or one that is missing: an older or newer gateway still prints.

Examples
--------
>>> from rich.console import Console
>>> console = Console(width=100, color_system=None)
>>> show("undrain", {"worker": "w1", "status": "up"}, console)
w1: up (back to the planner)
>>> show("remove-adapter", {"name": "sql", "removed": True, "drained": True,
...                         "unloaded_from": ["w0"], "failed": {}}, console)
removed sql: its requests finished; unloaded from w0
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

__all__ = ["show", "value_text"]


def value_text(value: Any) -> str:
    """One value as text: ``-`` for none, lists joined, mappings as ``key value`` pairs.

    Examples
    --------
    >>> value_text(None), value_text([]), value_text(["w0", "w1"]), value_text(0.25)
    ('-', '-', 'w0, w1', '0.25')
    >>> value_text({"sql": 1.0, "chat": 0.5}), value_text(True)
    ('chat 0.5, sql 1', 'yes')
    """
    if value is None or value == [] or value == {}:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list | tuple):
        return ", ".join(value_text(v) for v in value)
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {value_text(v)}" for k, v in sorted(value.items()))
    return str(value)


def _table(title: str | None, columns: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*r)
    return table


def _shares(shares: Mapping[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" if v < 1 else k for k, v in sorted(shares.items())) or "-"


def _placement(data: Mapping[str, Any], console: Console) -> None:
    planned = data.get("planned_gpus")
    rows = [[w["name"], str(len(w["adapters"])), _shares(w["adapters"])]
            for w in data.get("workers", [])]
    console.print(f"placement: {data.get('gpus_active', '?')} GPUs active, "
                  f"{data.get('gpus_running', '?')} running, planned "
                  f"{planned if planned is not None else '?'}")
    console.print(_table(None, ["worker", "adapters", "shares"], rows))
    for policy, gpus in sorted(data.get("baselines", {}).items()):
        console.print(f"baseline {policy}: {gpus:g} GPUs")
    if data.get("unplaced"):
        console.print(f"unplaced: {value_text(data['unplaced'])}")


def _workers(data: Mapping[str, Any], console: Console) -> None:
    rows = [[w["name"], w["url"], w["status"], w.get("state") or "gone",
             str(w.get("outstanding", "-")), value_text(w.get("resident"))]
            for w in data.get("workers", [])]
    console.print(_table(None, ["worker", "url", "status", "state", "outstanding",
                                "resident"], rows))


def _replan(data: Mapping[str, Any], console: Console) -> None:
    """A re-plan (``admin replan``, ``admin drain``): the verdict, the diff, what was done."""
    how = [str(data.get("trigger", "re-plan"))]
    how += [w for w, on in (("dry run", data.get("dry_run")), ("fresh", data.get("fresh")))
            if on]
    starved = data.get("starved") or []
    twin = {True: "holds in the twin", False: f"starves GPUs {value_text(starved)} in the twin",
            None: "not checked in the twin"}.get(data.get("validated"), "?")
    console.print(f"re-plan ({', '.join(how)}): {data.get('planned_gpus', '?')} GPUs planned, "
                  f"{data.get('gpus_active', '?')} active; {twin}; planned in "
                  f"{data.get('plan_seconds', 0):g} s, checked in "
                  f"{data.get('validate_seconds', 0):g} s")
    diff = data.get("diff") or {}
    console.print(f"moved: {value_text(diff.get('moved'))}; retired: "
                  f"{value_text(diff.get('retired'))}; workers to add: "
                  f"{value_text(diff.get('added'))}")
    steps = diff.get("steps") or []
    if steps:
        console.print(_table("migration steps", ["step", "worker", "adapter"],
                             [[s.get("kind", "?"), s.get("worker") or "-",
                               s.get("adapter") or "-"] for s in steps]))
    migration = data.get("migration")
    if isinstance(migration, Mapping):
        error = f": {migration['error']}" if migration.get("error") else ""
        console.print(f"migration: {migration.get('outcome', '?')} in "
                      f"{migration.get('seconds', 0):g} s, loaded "
                      f"{len(migration.get('loaded') or [])}, releasing "
                      f"{len(migration.get('releasing') or [])}, retired "
                      f"{value_text(migration.get('retired'))}{error}")
    actuator = data.get("actuator")
    if isinstance(actuator, Mapping):
        error = f": {actuator['error']}" if actuator.get("error") else ""
        console.print(f"actuator: scale {actuator.get('direction', '?')} to "
                      f"{actuator.get('workers', '?')} workers ({actuator.get('present', '?')} "
                      f"present): {actuator.get('outcome', '?')}{error}")
    if data.get("baselines"):
        console.print(f"baselines (GPUs): {value_text(data['baselines'])}")
    learned = [f"capacity scale x{data['capacity_scale']:g}"] if "capacity_scale" in data else []
    if data.get("speeds"):
        learned.append(f"worker speeds: {value_text(data['speeds'])}")
    if learned:
        console.print("; ".join(learned))


def _undrain(data: Mapping[str, Any], console: Console) -> None:
    console.print(f"{data.get('worker', '?')}: {data.get('status', '?')} (back to the planner)")


def _added(data: Mapping[str, Any], console: Console) -> None:
    console.print(f"added {data.get('name', '?')}: rank {data.get('rank', '?')}, "
                  f"{value_text(data.get('rate'))} req/s, {value_text(data.get('input_tokens'))}"
                  f" input / {value_text(data.get('output_tokens'))} output tokens, from "
                  f"{data.get('path', '?')}; "
                  + ("placed" if data.get("placed") else "placed by the next re-plan or "
                     "its first request"))


def _removed(data: Mapping[str, Any], console: Console) -> None:
    drained = ("its requests finished" if data.get("drained")
               else "unloaded after drain_timeout_s with requests still in flight")
    unloaded = data.get("unloaded_from") or []
    console.print(f"removed {data.get('name', '?')}: {drained}; " + (
        f"unloaded from {value_text(unloaded)}" if unloaded else "no worker held it"))
    for worker, error in sorted((data.get("failed") or {}).items()):
        console.print(f"unload failed on {worker}: {error}")


def _fields(data: Mapping[str, Any], console: Console) -> None:
    console.print(_table(None, ["field", "value"],
                         [[str(k), value_text(v)] for k, v in data.items()]))


_VIEWS: dict[str, Callable[[Mapping[str, Any], Console], None]] = {
    "placement": _placement, "workers": _workers, "replan": _replan, "drain": _replan,
    "undrain": _undrain, "add-adapter": _added, "remove-adapter": _removed}


def show(command: str, data: Any, console: Console) -> None:
    """Print the answer to ``admin COMMAND``."""
    if not isinstance(data, Mapping):
        console.print(value_text(data))
        return
    try:
        _VIEWS.get(command, _fields)(data, console)
    except (KeyError, TypeError, AttributeError, ValueError):  # a shape this CLI does not know
        _fields(data, console)
