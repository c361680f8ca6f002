"""``lorafleet admin``: the gateway's admin API from the command line.

    lorafleet admin placement|workers [--url URL] [--token T] [--json]
    lorafleet admin replan [--dry-run] [--fresh]
    lorafleet admin drain|undrain WORKER
    lorafleet admin add-adapter NAME PATH [--rate R --input-tokens N --output-tokens N]
    lorafleet admin remove-adapter NAME

The gateway is ``--url``, else ``LORAFLEET_URL``, else http://127.0.0.1:8080; the token
``--token``, else ``LORAFLEET_ADMIN_TOKEN``. Output is tables and lines
(``gateway/admin_view.py``; ``--json``: the API's JSON as is). Failures are one line on
stderr, never a traceback: exit status 2 for what the user gave (no token, a bad URL, a 400
naming a field), 1 for the rest (the gateway unreachable, 401/403, 404, 409, 5xx).
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

from gateway.admin_view import show
from gateway.cli import add_command

__all__ = ["DEFAULT_URL", "TOKEN_ENV", "URL_ENV", "AdminError", "register", "request"]

TOKEN_ENV = "LORAFLEET_ADMIN_TOKEN"
URL_ENV = "LORAFLEET_URL"
DEFAULT_URL = "http://127.0.0.1:8080"  # serve's default --host and --port


class AdminError(Exception):
    """A failed admin call: the line to print and the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def request(url: str, token: str, method: str, path: str, body: Any = None,
            timeout: float = 60.0, source: str = "--url") -> Any:
    """One admin call; the decoded JSON answer, or ``AdminError`` (a bad ``url`` names
    ``source``: the flag or the variable that gave it)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise AdminError(f"{source}: must be an http:// or https:// URL, got {url!r}", 2)
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


def _call(args: argparse.Namespace) -> tuple[str, str, Any]:
    cmd = args.admin_command
    if cmd in ("placement", "workers"):
        return "GET", f"/admin/{cmd}", None
    if cmd == "replan":
        return "POST", "/admin/replan", {"dry_run": args.dry_run,
                                         **({"fresh": True} if args.fresh else {})}
    if cmd in ("drain", "undrain"):
        return "POST", f"/admin/workers/{quote(args.worker, safe='')}/{cmd}", None
    if cmd == "add-adapter":
        body: dict[str, Any] = {"name": args.name, "path": args.path}
        for key in ("rate", "input_tokens", "output_tokens"):
            if getattr(args, key) is not None:
                body[key] = getattr(args, key)
        return "POST", "/admin/adapters", body
    return "DELETE", f"/admin/adapters/{quote(args.name, safe='')}", None


def _url(args: argparse.Namespace) -> tuple[str, str]:
    """The gateway's URL and what gave it (``--url``, ``LORAFLEET_URL`` or the default)."""
    if args.url is not None:
        return args.url, "--url"
    if os.environ.get(URL_ENV):
        return os.environ[URL_ENV], URL_ENV
    return DEFAULT_URL, "--url"


def _admin(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get(TOKEN_ENV)
    try:
        if not token:
            raise AdminError(f"no admin token: pass --token or set {TOKEN_ENV}", 2)
        method, path, body = _call(args)
        url, source = _url(args)
        data = request(url, token, method, path, body, timeout=args.timeout, source=source)
    except AdminError as exc:
        print(f"lorafleet: admin {args.admin_command}: {exc}", file=sys.stderr)
        return exc.status
    if args.json:
        print(json.dumps(data))
    else:
        show(args.admin_command, data, Console())
    return 0


EXAMPLES = {
    "admin": """\
export LORAFLEET_URL=http://127.0.0.1:8000 LORAFLEET_ADMIN_TOKEN=...
lorafleet admin placement
lorafleet admin workers --json
lorafleet admin replan --dry-run
lorafleet admin drain w3
""",
    "placement": "lorafleet admin placement --url http://127.0.0.1:8000 --token T\n",
    "workers": "lorafleet admin workers --json | jq '.workers[].state'\n",
    "replan": "lorafleet admin replan --dry-run\nlorafleet admin replan --fresh\n",
    "drain": "lorafleet admin drain w3\n",
    "undrain": "lorafleet admin undrain w3\n",
    "add-adapter": "lorafleet admin add-adapter sql /adapters/sql --rate 2 --input-tokens 800\n",
    "remove-adapter": "lorafleet admin remove-adapter sql\n",
}


def register(sub: Any) -> None:
    """Add ``admin`` to the ``lorafleet`` subcommands."""
    p = add_command(sub, "admin", examples=EXAMPLES["admin"])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", help=f"the gateway's URL (default: ${URL_ENV}, else "
                        f"{DEFAULT_URL})")
    common.add_argument("--token", help=f"the admin token (default: ${TOKEN_ENV})")
    common.add_argument("--json", action="store_true", help="print the API's JSON as is")
    common.add_argument("--timeout", type=float, default=120.0, metavar="S",
                        help="seconds to wait for the answer")
    cmds = p.add_subparsers(dest="admin_command", required=True, metavar="ACTION")

    def action(name: str, text: str) -> argparse.ArgumentParser:
        return add_command(cmds, name, help=text, examples=EXAMPLES[name], parents=[common])

    action("placement", "adapters per worker, GPUs against the baselines")
    action("workers", "workers, their health, state and resident adapters")
    replan = action("replan", "re-plan now")
    replan.add_argument("--dry-run", action="store_true", help="show the plan and diff only")
    replan.add_argument("--fresh", action="store_true",
                        help="plan from scratch (the fewest moves onto the workers) instead "
                        "of the incremental re-plan")
    drain = action("drain", "route nothing new to a worker; move its adapters away")
    drain.add_argument("worker", help="the worker's name (lorafleet admin workers)")
    undrain = action("undrain", "give a drained worker back to the planner")
    undrain.add_argument("worker", help="the worker's name")
    add = action("add-adapter", "register an adapter")
    add.add_argument("name", help="the adapter's name (clients send it as model)")
    add.add_argument("path", help="its folder (with adapter_config.json), as workers see it")
    add.add_argument("--rate", type=float, help="expected requests/s (default 0: planned "
                     "from the traffic the gateway observes)")
    add.add_argument("--input-tokens", type=float, help="mean prompt tokens (default 512)")
    add.add_argument("--output-tokens", type=float, help="mean completion tokens (default 128)")
    remove = action("remove-adapter", "stop routing an adapter, unload and forget it")
    remove.add_argument("name", help="the adapter's name")
    p.set_defaults(func=_admin)
