"""``lorafleet admin``: the gateway's admin API from the command line.

    lorafleet admin placement|workers --url URL [--token T] [--json]
    lorafleet admin replan [--dry-run] --url URL
    lorafleet admin drain WORKER --url URL
    lorafleet admin add-adapter NAME PATH [--rate R --input-tokens N --output-tokens N]
    lorafleet admin remove-adapter NAME --url URL

The token comes from ``--token`` or ``LORAFLEET_ADMIN_TOKEN``. Output is a table (``--json``:
the API's JSON as is). Failures are one line on stderr, never a traceback: exit status 2 for
what the user gave (no token, a bad URL, a 400 naming a field), 1 for the rest (the gateway
unreachable, 401/403, 404, 409, 5xx).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote, urlsplit

from rich.console import Console
from rich.table import Table

from gateway.cli import COMMANDS

__all__ = ["AdminError", "register", "request"]

TOKEN_ENV = "LORAFLEET_ADMIN_TOKEN"


class AdminError(Exception):
    """A failed admin call: the line to print and the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def request(url: str, token: str, method: str, path: str, body: Any = None,
            timeout: float = 60.0) -> Any:
    """One admin call; the decoded JSON answer, or ``AdminError``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise AdminError(f"--url: must be an http:// or https:// URL, got {url!r}", 2)
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url.rstrip("/") + path, data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise _http_error(exc) from None
    except urllib.error.URLError as exc:
        reason = getattr(exc.reason, "strerror", None) or str(exc.reason)
        raise AdminError(f"cannot reach the gateway at {url}: {reason}") from None
    except (TimeoutError, OSError) as exc:
        raise AdminError(f"cannot reach the gateway at {url}: {exc}") from None
    except ValueError:
        raise AdminError(f"the gateway at {url} answered something that is not JSON") from None


def _http_error(exc: urllib.error.HTTPError) -> AdminError:
    try:
        error = json.loads(exc.read()).get("error", {})
        message = error.get("message") if isinstance(error, dict) else str(error)
        param = error.get("param") if isinstance(error, dict) else None
    except (ValueError, AttributeError, OSError):
        message, param = exc.reason, None
    first = str(message or exc.reason).splitlines()[0] if message or exc.reason else ""
    where = f" ({param})" if param else ""
    return AdminError(f"{exc.code}{where}: {first}", 2 if exc.code == 400 else 1)


def _table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*r)
    return table


def _shares(shares: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" if v < 1 else k for k, v in sorted(shares.items())) or "-"


def _show(command: str, data: Any, console: Console) -> None:
    if command == "placement":
        rows = [[w["name"], str(len(w["adapters"])), _shares(w["adapters"])]
                for w in data["workers"]]
        console.print(_table(
            f"placement: {data['gpus_active']} GPUs active, {data['gpus_running']} running, "
            "planned "
            f"{data['planned_gpus'] if data['planned_gpus'] is not None else '?'}",
            ["worker", "adapters", "shares"], rows))
        for policy, gpus in sorted(data.get("baselines", {}).items()):
            console.print(f"baseline {policy}: {gpus:g} GPUs")
        if data.get("unplaced"):
            console.print(f"unplaced: {', '.join(data['unplaced'])}")
    elif command == "workers":
        rows = [[w["name"], w["url"], w["status"], w["state"] or "gone",
                 str(w["outstanding"]), ", ".join(w["resident"]) or "-"]
                for w in data["workers"]]
        console.print(_table("workers", ["worker", "url", "status", "state", "outstanding",
                                         "resident"], rows))
    elif isinstance(data, dict):
        rows = [[k, v if isinstance(v, str) else json.dumps(v)] for k, v in data.items()]
        console.print(_table(command, ["field", "value"], rows))
    else:
        console.print(json.dumps(data))


def _call(args: argparse.Namespace) -> tuple[str, str, Any]:
    cmd = args.admin_command
    if cmd in ("placement", "workers"):
        return "GET", f"/admin/{cmd}", None
    if cmd == "replan":
        return "POST", "/admin/replan", {"dry_run": args.dry_run}
    if cmd == "drain":
        return "POST", f"/admin/workers/{quote(args.worker, safe='')}/drain", None
    if cmd == "add-adapter":
        body: dict[str, Any] = {"name": args.name, "path": args.path}
        for key in ("rate", "input_tokens", "output_tokens"):
            if getattr(args, key) is not None:
                body[key] = getattr(args, key)
        return "POST", "/admin/adapters", body
    return "DELETE", f"/admin/adapters/{quote(args.name, safe='')}", None


def _admin(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get(TOKEN_ENV)
    try:
        if not token:
            raise AdminError(f"no admin token: pass --token or set {TOKEN_ENV}", 2)
        method, path, body = _call(args)
        data = request(args.url, token, method, path, body, timeout=args.timeout)
    except AdminError as exc:
        print(f"lorafleet: admin {args.admin_command}: {exc}", file=sys.stderr)
        return exc.status
    if args.json:
        print(json.dumps(data))
    else:
        _show(args.admin_command, data, Console())
    return 0


def register(sub: Any) -> None:
    """Add ``admin`` to the ``lorafleet`` subcommands."""
    p = sub.add_parser("admin", help=COMMANDS["admin"][0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway's URL")
    common.add_argument("--token", default=None, help=f"admin token (default: ${TOKEN_ENV})")
    common.add_argument("--json", action="store_true", help="print the API's JSON")
    common.add_argument("--timeout", type=float, default=120.0, help="seconds")
    cmds = p.add_subparsers(dest="admin_command", required=True, metavar="ACTION")
    cmds.add_parser("placement", parents=[common], help="adapters per worker")
    cmds.add_parser("workers", parents=[common], help="workers, health and residency")
    replan = cmds.add_parser("replan", parents=[common], help="re-plan now")
    replan.add_argument("--dry-run", action="store_true", help="show the plan and diff only")
    drain = cmds.add_parser("drain", parents=[common], help="move a worker's adapters away")
    drain.add_argument("worker")
    add = cmds.add_parser("add-adapter", parents=[common], help="register an adapter")
    add.add_argument("name")
    add.add_argument("path", help="its folder (with adapter_config.json), as workers see it")
    add.add_argument("--rate", type=float, default=None, help="expected requests/s")
    add.add_argument("--input-tokens", type=float, default=None)
    add.add_argument("--output-tokens", type=float, default=None)
    remove = cmds.add_parser("remove-adapter", parents=[common], help="unload and forget")
    remove.add_argument("name")
    p.set_defaults(func=_admin)
