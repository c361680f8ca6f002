"""Build the tiny Llama, its tokenizer and peft LoRA adapters that the real-vLLM tests serve.

Run with the vLLM venv's Python (torch, transformers, peft and tokenizers live there, not in
``.venv``)::

    .venv-vllm/bin/python tests/integration/tiny_model.py [--out .cache/tiny-llama] [--seed 0]

The model matches the twin's ``tiny-llama`` catalog entry (``twin/catalog.py``): hidden size 128,
2 layers, 2 heads of head_dim 64 (vLLM's CPU attention crashes at head_dim 16), intermediate size
256, vocabulary 512, untied embeddings, float32, random weights. The tokenizer is a byte-level BPE
trained here on a generated corpus, with a chat template. The adapters are peft LoRAs on
``q_proj`` and ``v_proj`` with ``init_lora_weights=False`` (random A and B, so an adapter really
changes the output). Everything derives from ``--seed``; a build whose manifest matches the seed
and :data:`BUILD_VERSION` is reused, and a new build is written to a temporary folder and renamed
into place, so an interrupted build never looks complete.

Layout under ``--out``: ``base/`` (the model and tokenizer), ``adapters/<name>/`` (peft format)
and ``manifest.json`` (``{"build_version", "seed", "base", "adapters": [{"name", "rank",
"path"}]}`` with paths relative to ``--out``). This module imports only the standard library at
import time, so the main ``.venv`` (pytest's ``--doctest-modules``, the fixture) can import it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "ADAPTERS",
    "BUILD_VERSION",
    "DEFAULT_OUT",
    "AdapterDef",
    "build",
    "is_built",
    "main",
    "read_manifest",
]

#: Bump when the build output changes, so cached builds are rebuilt.
BUILD_VERSION = 1
#: Default cache folder, relative to the repository root.
DEFAULT_OUT = Path(".cache/tiny-llama")
MANIFEST = "manifest.json"

VOCAB_SIZE = 512
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]
# Jinja chat template in the style of Zephyr: role tags, each turn closed by "</s>".
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


@dataclass(frozen=True, slots=True)
class AdapterDef:
    """One LoRA adapter to build: its served name, rank and weight seed offset."""

    name: str
    rank: int
    seed_offset: int


#: Two ranks the server accepts (8, 16; ``--max-lora-rank 16``), four adapters so that more
#: adapters exist than ``--max-loras 2`` GPU slots, and one rank-32 adapter vLLM must refuse.
ADAPTERS: tuple[AdapterDef, ...] = (
    AdapterDef("tiny-a-r8", 8, 1),
    AdapterDef("tiny-b-r16", 16, 2),
    AdapterDef("tiny-c-r8", 8, 3),
    AdapterDef("tiny-d-r16", 16, 4),
    AdapterDef("tiny-big-r32", 32, 5),
)


def read_manifest(out: Path) -> dict[str, Any] | None:
    """The build's manifest under ``out``, or None when there is none.

    Examples
    --------
    >>> read_manifest(Path("/nonexistent/tiny-llama")) is None
    True
    """
    try:
        data: dict[str, Any] = json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data


def is_built(out: Path, seed: int) -> bool:
    """Whether ``out`` holds a complete build for ``seed`` at the current build version."""
    manifest = read_manifest(out)
    return (
        manifest is not None
        and manifest.get("build_version") == BUILD_VERSION
        and manifest.get("seed") == seed
    )


_CORPUS_WORDS = (
    "the a an of to in and or is are was be for on with as by at from this that it not "
    "adapter model token request server worker queue batch prompt reply latency memory "
    "cache slot rank layer weight tiny llama vllm gateway planner twin test hello world "
    "what how why when where who which one two three four five six seven eight nine ten "
    "please answer question write short story about cat dog tree river city number day"
)


def _corpus(seed: int, lines: int = 4000) -> list[str]:
    """A deterministic English-like corpus: enough merges for a 512-token byte-level BPE."""
    rng = random.Random(seed)
    words = _CORPUS_WORDS.split()
    text = []
    for _ in range(lines):
        n = rng.randint(4, 16)
        sentence = " ".join(rng.choice(words) for _ in range(n))
        text.append(sentence.capitalize() + rng.choice([".", "?", "!", ",", ":"]))
    return text


def _build_tokenizer(seed: int, dest: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="</s>",
        model_max_length=512,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(dest)


def _build_base(seed: int, dest: Path) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = json.loads((dest / "tokenizer.json").read_text())["model"]["vocab"]
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        pad_token_id=vocab["</s>"],
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(dest, safe_serialization=True)


def _build_adapter(base: Path, adapter: AdapterDef, seed: int, dest: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(seed + adapter.seed_offset)
    config = LoraConfig(
        r=adapter.rank,
        lora_alpha=2 * adapter.rank,
        target_modules=["q_proj", "v_proj"],
        lora_dropout=0.0,
        bias="none",
        task_type="CAUSAL_LM",
        init_lora_weights=False,
    )
    peft_model = get_peft_model(model, config)
    # peft reads the base's config from this path while saving (a name would be looked up on
    # the hub); vLLM ignores it, so rewrite it machine-independent afterwards.
    peft_model.peft_config["default"].base_model_name_or_path = str(base)
    peft_model.save_pretrained(dest)
    config_path = dest / "adapter_config.json"
    saved = json.loads(config_path.read_text())
    saved["base_model_name_or_path"] = "tiny-llama"
    saved["target_modules"] = sorted(saved["target_modules"])  # a set in peft: hash order
    config_path.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n")
    (dest / "README.md").unlink(missing_ok=True)  # a model card naming the build's temp path


def build(out: Path = DEFAULT_OUT, seed: int = 0, *, force: bool = False) -> dict[str, Any]:
    """Build the tiny model, tokenizer and adapters into ``out``; return the manifest.

    Does nothing but read the manifest when ``out`` already holds a build for ``seed``.
    """
    if not force and is_built(out, seed):
        manifest = read_manifest(out)
        assert manifest is not None
        return manifest
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        _build_tokenizer(seed, work / "base")
        _build_base(seed, work / "base")
        adapters = []
        for adapter in ADAPTERS:
            rel = Path("adapters") / adapter.name
            _build_adapter(work / "base", adapter, seed, work / rel)
            adapters.append({"name": adapter.name, "rank": adapter.rank, "path": str(rel)})
        manifest = {
            "build_version": BUILD_VERSION,
            "seed": seed,
            "base": "base",
            "adapters": adapters,
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; prints the manifest as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="cache folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument("--force", action="store_true", help="rebuild even if built")
    args = parser.parse_args(argv)
    # Nothing is downloaded: everything is built from the seed.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    manifest = build(args.out, args.seed, force=args.force)
    print(json.dumps(manifest))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
