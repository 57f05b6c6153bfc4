"""The usage an answer shows: the provider's when it reported one, else the gateway's own count.

A provider that reports no usage (llama.cpp's streams, Gemini's and Cohere-on-Bedrock's
embeddings) must not make a dialect print zeros: cost dashboards and client libraries read them.
The gateway then counts the prompt and the answer with a real tokenizer (``core/tokens.py``) and
says so: ``counted_by`` in the usage object, and the ``x-atomr-usage`` header on whole answers
(docs/http.md, "Usage").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.core.tokens import TOKENIZER, count_messages, count_text
from actors.types import Completed, Usage

__all__ = ["Shown", "shown_usage", "prompt_tokens", "usage_header", "COUNTED_BY"]

COUNTED_BY = f"gateway:{TOKENIZER}"


@dataclass(frozen=True)
class Shown:
    usage: Usage
    counted_by: str | None      # None: the provider's own figures

    def mark(self, doc: dict[str, Any]) -> dict[str, Any]:
        """``doc`` (a dialect's usage object) with the ``counted_by`` marker when the gateway counted."""
        if self.counted_by:
            doc["counted_by"] = self.counted_by
        return doc


def prompt_tokens(messages: list[dict[str, Any]], params: dict[str, Any] | None = None) -> int:
    return count_messages(messages, (params or {}).get("tools"))


def _answer_text(result: Completed) -> str:
    parts = [result.text] + [f"{tc.name}{tc.arguments}" for tc in result.tool_calls]
    parts += [c.text for c in result.choices]
    return "".join(parts)


def shown_usage(result: Completed, messages: list[dict[str, Any]], params: dict[str, Any] | None = None) -> Shown:
    usage = result.usage
    if usage.reported:
        return Shown(usage, None)
    if result.embeddings is not None:   # embeddings: the inputs are the whole count
        return Shown(Usage(sum(count_text(str(m.get("content") or "")) for m in messages), 0), COUNTED_BY)
    return Shown(Usage(prompt_tokens(messages, params), count_text(_answer_text(result))), COUNTED_BY)


def usage_header(shown: Shown) -> tuple[str, str]:
    return "x-atomr-usage", ("reported" if shown.counted_by is None else f"counted; tokenizer={TOKENIZER}")
