"""The tokenizer stand-in and the generated text.

No model runs here, so tokens are counted by a deterministic rule: a text prompt has
``ceil(len(utf8 bytes) / 4)`` tokens (at least 1), about what Llama-3's tokenizer gives on
English; a prompt given as token ids has as many tokens as ids. Chat messages are rendered
with Llama-3's chat template (header tokens spelled out) plus the assistant header that
``add_generation_prompt`` appends, and the rendering is counted the same way. Generated text
is filler: token ``i`` of every completion is ``" " + WORDS[i % len(WORDS)]``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = ["WORDS", "count_tokens", "filler", "filler_token", "render_chat"]

WORDS: tuple[str, ...] = ("lorem", "ipsum", "dolor", "sit", "amet", "consectetur",
                          "adipiscing", "elit", "sed", "do", "eiusmod", "tempor")


def count_tokens(text: str) -> int:
    """Tokens of ``text`` under the stand-in rule.

    Examples
    --------
    >>> count_tokens("Hello world!"), count_tokens(""), count_tokens("x" * 9)
    (3, 1, 3)
    """
    return max(1, -(-len(text.encode("utf-8")) // 4))


def render_chat(messages: Iterable[Mapping[str, str]]) -> str:
    """Llama-3's chat template with the generation prompt."""
    parts = ["<|begin_of_text|>"]
    for m in messages:
        parts.append(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n"
                     f"{m['content']}<|eot_id|>")
    parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(parts)


def filler_token(i: int) -> str:
    """The text of generated token ``i`` (0-based)."""
    return " " + WORDS[i % len(WORDS)]


def filler(n: int) -> str:
    """The text of ``n`` generated tokens.

    Examples
    --------
    >>> filler(3)
    ' lorem ipsum dolor'
    """
    return "".join(filler_token(i) for i in range(n))
