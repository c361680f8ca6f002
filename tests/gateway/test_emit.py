"""``lorafleet plan --emit DIR`` (gateway/emit.py): the `vllm serve` command of every worker,
a gateway.yaml the gateway loads, and the plan."""

from __future__ import annotations

import contextlib
import io
import json
import shlex
from pathlib import Path

import pytest
import yaml

from gateway.cli import main
from gateway.config import parse_config
from planner import load_adapters

ROOT = Path(__file__).resolve().parents[2]
ADAPTERS = ROOT / "examples" / "adapters-50.yaml"
MODELS = ROOT / "tests" / "data" / "models"


def serve_flags(folder: Path) -> tuple[str, dict[str, str]]:
    """The model and the ``--flag value`` pairs of serve-worker.sh's ``vllm serve`` line."""
    line = next(ln for ln in (folder / "serve-worker.sh").read_text().splitlines()
                if ln.startswith("exec vllm serve "))
    words = shlex.split(line.removeprefix("exec vllm serve "))
    model, rest = words[0], [w for w in words[1:] if w != "$@"]
    flags: dict[str, str] = {}
    i = 0
    while i < len(rest):
        if rest[i] == "--enable-lora":
            flags[rest[i]] = ""
            i += 1
        else:
            flags[rest[i]] = rest[i + 1]
            i += 2
    return model, flags


def _emit(tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    assert main(["plan", str(ADAPTERS), "--emit", str(tmp_path / "out"), "--json",
                 "--no-baselines", "--duration", "60", *extra]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def emitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("emit")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["plan", str(ADAPTERS), "--emit", str(folder / "out"), "--json",
                     "--no-baselines", "--duration", "60"]) == 0
    return folder / "out", json.loads(buf.getvalue().strip().splitlines()[-1])


def test_every_worker_gets_the_largest_options_of_the_plan(emitted) -> None:
    folder, out = emitted
    model, flags = serve_flags(folder)
    assert model == "meta-llama/Llama-3.1-8B-Instruct"
    rows = out["placement"]
    assert int(flags["--max-loras"]) == max(r["max_loras"] for r in rows)
    assert int(flags["--max-cpu-loras"]) == max(r["max_cpu_loras"] for r in rows)
    assert int(flags["--max-lora-rank"]) == max(r["max_lora_rank"] for r in rows)
    assert flags["--tensor-parallel-size"] == "1" and "--enable-lora" in flags
    assert flags["--served-model-name"] == "llama-3.1-8b"
    text = (folder / "serve-worker.sh").read_text()
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True" in text
    assert (folder / "serve-worker.sh").stat().st_mode & 0o111
    emit = out["emit"]
    assert emit["max_loras"] == int(flags["--max-loras"])
    assert emit["validated"] in (True, False)  # checked again in the twin with them
    assert json.loads((folder / "plan.json").read_text())["gpus"] == out["gpus"]


def test_the_gateway_yaml_loads_and_describes_the_workers(emitted) -> None:
    folder, out = emitted
    cfg = parse_config(yaml.safe_load((folder / "gateway.yaml").read_text()))
    _, flags = serve_flags(folder)
    assert len(cfg.workers) == out["workers"]
    assert cfg.base_model == flags["--served-model-name"]
    engine = cfg.worker_engine
    assert engine is not None
    assert (engine.max_loras, engine.cpu_loras, engine.max_lora_rank, engine.max_model_len) == (
        int(flags["--max-loras"]), int(flags["--max-cpu-loras"]),
        int(flags["--max-lora-rank"]), int(flags["--max-model-len"]))
    given = {a.name: a for a in load_adapters(ADAPTERS)}
    assert {a.demand.name: a.demand for a in cfg.adapters} == given
    assert all(a.path == f"/adapters/{a.demand.name}" for a in cfg.adapters)


def test_a_config_folder_is_what_vllm_serves_and_tensor_parallel_workers(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = MODELS / "Llama-3.1-70B-Instruct"
    out = _emit(tmp_path, capsys, "--model", str(folder), "-tp", "4", "--no-validate")
    model, flags = serve_flags(tmp_path / "out")
    assert model == str(folder.resolve())
    assert flags["--tensor-parallel-size"] == "4"
    assert out["emit"]["tensor_parallel_size"] == 4 and out["gpus"] == 4 * out["workers"]
    cfg = parse_config(yaml.safe_load((tmp_path / "out" / "gateway.yaml").read_text()))
    assert cfg.tensor_parallel_size == 4 and cfg.model == str(folder.resolve())
    assert len(cfg.workers) == out["workers"]


def test_an_unwritable_folder_is_one_line_naming_the_flag(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["plan", str(ADAPTERS), "--emit", str(blocker / "sub"), "--no-baselines",
                 "--no-validate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lorafleet: invalid input: --emit: cannot write")


def test_a_bundled_model_without_a_checkpoint_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny = tmp_path / "a.yaml"
    tiny.write_text("adapters:\n  - {name: a, rank: 8, rate: 0.5}\n")
    assert main(["plan", str(tiny), "--model", "tiny-llama", "--gpu", "l4", "--emit",
                 str(tmp_path / "out"), "--no-baselines", "--no-validate"]) == 2
    assert "--model: 'tiny-llama' has no checkpoint" in capsys.readouterr().err
