"""The gateway's config for ``lorafleet serve``, from one of three sources, then the
``LORAFLEET_*`` variables (``config_env``), then the flags:

- ``--config gateway.yaml``: the file (static workers, discovery or ``emulate:``);
- ``--worker-urls URL [URL ...] [--adapters FILE]``: running workers, named ``w0``, ``w1``,
  ...; the adapters file is ``gateway.yaml``'s ``adapters:`` (each with the ``path`` the
  workers load it from); the base model's name is ``--served-model-name``, else the one the
  first worker that answers lists in its ``GET /v1/models`` (the entry with no ``parent``:
  vLLM lists its LoRA adapters with the base model as their parent);
- ``--emulate N --adapters FILE``: N emulated workers in this process (adapters without a
  ``path`` are scaffolded), the base model served as ``--served-model-name`` or ``--model``.

Each ends as a ``gateway.yaml`` mapping checked by ``parse_config``; a bad value is one
``ConfigError`` naming the flag or the variable that gave it, else the file's field.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from gateway.config import GatewayConfig, parse_config, read_config
from gateway.config import env as config_env
from gateway.control.lifecycle import make_plan
from gateway.control.planning import InitialPlan
from gateway.fleet.kube import check_access
from gateway.server.emulated import MAX_EMULATED, EmulateSpec, emulated_config_data
from planner import DEFAULT_MODEL
from twin.errors import ConfigError

__all__ = ["API_KEY_NAME", "FLAGS", "serve_config", "served_model"]

# serve's flags that set a config field: attribute -> (field, flag)
FLAGS: dict[str, tuple[str, str]] = {
    "served_model_name": ("base_model", "--served-model-name"),
    "model": ("model", "--model"), "gpu": ("gpu", "--gpu"), "profile": ("profile", "--profile"),
    "placement": ("placement", "--placement"), "routing": ("routing", "--routing"),
    "host": ("host", "--host"), "port": ("port", "--port"),
    "tensor_parallel_size": ("tensor_parallel_size", "--tensor-parallel-size"),
}
API_KEY_NAME = "api-key"  # the key --api-key adds (its name in the access log)
MODELS_TIMEOUT_S = 5.0


def serve_config(args: argparse.Namespace, folder: Callable[[], Path],
                 environ: Mapping[str, str],
                 ) -> tuple[GatewayConfig, InitialPlan | None, EmulateSpec | None]:
    """The config, the plan made here (an emulated fleet: its workers start with the
    plan's options) and the emulated fleet to start, if any; adapter folders of an emulated
    fleet are scaffolded in ``folder()``."""
    data = _source(args)
    env = config_env.values(environ)
    flags = {field: getattr(args, attr) for attr, (field, _) in FLAGS.items()
             if getattr(args, attr) is not None}
    sources = {**{f: config_env.variable(f) for f in env},
               **{field: flag for attr, (field, flag) in FLAGS.items() if field in flags}}
    if args.adapters is not None:  # "--adapters: adapters[0].rank: ..."
        sources["adapters"] = "--adapters: adapters"
    data = {**data, **env, **flags}
    config_env.redis_url(data, environ, sources)
    _flag_extras(args, data, sources)
    if args.worker_urls and "base_model" not in data:
        data["base_model"] = served_model(args.worker_urls, _worker_token(data, environ))
    spec = None
    if "emulate" in data:
        data, spec = emulated_config_data(data, folder())
    try:
        cfg = parse_config(data)
        check_access(cfg.actuator, cfg.discovery)  # in a pod, unless the config names the API
    except ConfigError as exc:
        raise config_env.named(exc, sources) from None
    if spec is None:
        return cfg, None, None
    cfg = replace(cfg, time_scale=spec.time_scale)
    if args.emulate is not None:  # the workers run the plan's options, as the gateway knows
        cfg = replace(cfg, worker_engine=None, worker_engine_given=())
    return cfg, make_plan(cfg), spec


def _source(args: argparse.Namespace) -> dict[str, Any]:
    """The mapping ``--config``, ``--worker-urls`` or ``--emulate`` gives."""
    if args.config is not None:
        if args.adapters is not None:
            raise ConfigError("--adapters", "goes with --emulate or --worker-urls; list "
                              "adapters in the config")
        data = read_config(args.config)
        if not isinstance(data, dict):
            raise ConfigError("", "the config must be a mapping")
        return dict(data)
    adapters = [] if args.adapters is None else _adapters(args.adapters)
    if args.worker_urls is not None:
        for url in args.worker_urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ConfigError("--worker-urls", f"must be http:// or https:// URLs, got "
                                  f"{url!r}")
        return {"workers": [{"url": u, "name": f"w{i}"} for i, u in
                            enumerate(args.worker_urls)], "adapters": adapters}
    if not 1 <= args.emulate <= MAX_EMULATED:
        raise ConfigError("--emulate", f"must be in [1, {MAX_EMULATED}], got {args.emulate}")
    if args.adapters is None:
        raise ConfigError("--adapters", "is required with --emulate")
    return {"emulate": {"count": args.emulate}, "adapters": adapters}


def _adapters(path: Path) -> list[Any]:
    """``--adapters``: a file with ``adapters: [...]`` (or the list alone)."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError("--adapters", f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError("--adapters", f"invalid YAML: {exc}".splitlines()[0]) from None
    items = data.get("adapters") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise ConfigError("--adapters", f"{path} must hold adapters: [{{name, rank, rate, "
                          "path?, ...}]")
    return items


def _flag_extras(args: argparse.Namespace, data: dict[str, Any],
                 sources: dict[str, str]) -> None:
    """``--time-scale`` (an emulated fleet's), ``--api-key`` (a client key, added to the
    config's) and the emulated base model's default name, into ``data``."""
    if args.time_scale is not None:
        emulate = data.get("emulate")
        if emulate is None:
            raise ConfigError("--time-scale", "only with --emulate or a config with emulate:")
        if isinstance(emulate, int) and not isinstance(emulate, bool):
            emulate = {"count": emulate}
        if isinstance(emulate, dict):
            data["emulate"] = {**emulate, "time_scale": args.time_scale}
            sources["emulate.time_scale"] = "--time-scale"
    if args.emulate is not None:
        sources["emulate.count"] = "--emulate"
        if "base_model" not in data:
            model = data.get("model", DEFAULT_MODEL)
            data["base_model"] = model if isinstance(model, str) else DEFAULT_MODEL
    if args.api_key is not None:
        if not args.api_key:
            raise ConfigError("--api-key", "must be a non-empty string")
        keys = data.get("keys")
        if keys is None or isinstance(keys, list):  # else parse_config names keys
            data["keys"] = [*(keys or []), {"key": args.api_key, "name": API_KEY_NAME}]


def _worker_token(data: Mapping[str, Any], environ: Mapping[str, str]) -> str | None:
    name = data.get("worker_api_key_env")
    return environ.get(name) if isinstance(name, str) else None


def served_model(urls: Sequence[str], token: str | None = None,
                 timeout_s: float = MODELS_TIMEOUT_S) -> str:
    """The base model's name as the first of ``urls`` that answers ``GET /v1/models``
    serves it (``ConfigError`` naming ``--served-model-name`` when none does)."""
    reasons = []
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    for url in urls:
        request = urllib.request.Request(url.rstrip("/") + "/v1/models", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as resp:
                data = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            exc.close()
            reasons.append(f"{url}: HTTP {exc.code}")
            continue
        except urllib.error.URLError as exc:
            reasons.append(f"{url}: {getattr(exc.reason, 'strerror', None) or exc.reason}")
            continue
        except (OSError, ValueError) as exc:
            reasons.append(f"{url}: {exc}")
            continue
        entries = data.get("data") if isinstance(data, dict) else None
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and isinstance(entry.get("id"), str) \
                    and not entry.get("parent"):
                return str(entry["id"])
        reasons.append(f"{url}: no base model in /v1/models")
    raise ConfigError("--served-model-name", "not given, and no worker told the base model's "
                      f"name ({'; '.join(reasons)})")
