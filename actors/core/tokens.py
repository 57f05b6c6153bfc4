"""Token counts the gateway makes itself, when a provider reports none (docs/http.md, "Usage").

A real tokenizer, not a guess: OpenAI's ``o200k_base`` BPE through ``tiktoken``, loaded from
``actors/data/o200k_base.tiktoken.gz`` (shipped with the package and checked against the hash
tiktoken expects), so nothing is downloaded at run time. For OpenAI models it is their own
tokenizer; for other providers' models (whose tokenizers are not public) it is an estimate of
the same order, and the answers that carry such counts say so (``counted_by``).
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import json
from importlib import resources
from typing import Any

__all__ = ["TOKENIZER", "count_text", "count_messages", "encoding"]

TOKENIZER = "o200k_base"
_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
# o200k_base's pre-tokenizer pattern, as tiktoken defines it (tiktoken_ext/openai_public.py, MIT).
_PATTERN = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
# What a chat message costs beyond its text (OpenAI's published accounting for its chat format).
PER_MESSAGE = 3
PER_REPLY = 3


@functools.cache
def encoding() -> Any:
    """The o200k_base encoding (loaded once per process, ~0.5 s)."""
    import tiktoken

    data = gzip.decompress(resources.files("actors").joinpath("data/o200k_base.tiktoken.gz").read_bytes())
    if hashlib.sha256(data).hexdigest() != _SHA256:
        raise RuntimeError("actors/data/o200k_base.tiktoken.gz is not the o200k_base file tiktoken expects")
    ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in data.splitlines() if line)}
    return tiktoken.Encoding(TOKENIZER, pat_str=_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 199999, "<|endofprompt|>": 200018})


def count_text(text: str) -> int:
    """Tokens in ``text`` (special-token spellings count as ordinary text)."""
    return len(encoding().encode_ordinary(text)) if text else 0  # "" needs no encoding loaded


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def count_messages(messages: list[dict[str, Any]], tools: Any = None) -> int:
    """The prompt tokens of chat ``messages`` (and tool definitions), as OpenAI counts its chat format."""
    total = PER_REPLY
    for message in messages:
        total += (PER_MESSAGE + count_text(str(message.get("role", "")))
                  + count_text(_content_text(message.get("content"))))
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            total += count_text(str(function.get("name", ""))) + count_text(str(function.get("arguments", "")))
    if tools:
        total += count_text(json.dumps(tools, separators=(",", ":")))
    return total
