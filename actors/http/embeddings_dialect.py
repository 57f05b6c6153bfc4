"""OpenAI Embeddings <-> GatewayClient.embed: ``input`` as a string or a list of strings,
``encoding_format`` float or base64 (little-endian float32, what the openai SDK asks for by
default), ``dimensions``, ``user``; the vectors and the usage back in OpenAI's list shape."""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass, field
from typing import Any

from actors.http.translate import bad, fallbacks_of, known_only, need
from actors.http.usage import Shown, shown_usage
from actors.types import Completed, EmbeddingResult, Usage

__all__ = ["EmbedCall", "parse", "render"]

_KNOWN = {"model", "input", "encoding_format", "dimensions", "user", "fallbacks", "input_type", "task_type"}
MAX_INPUTS = 8192   # per HTTP call; GatewayClient.embed batches them to each provider's own limit


@dataclass
class EmbedCall:
    model: str
    texts: list[str]
    base64: bool = False
    dimensions: int | None = None
    user: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)   # provider options: input_type (Cohere), task_type (Gemini)
    fallbacks: list[str] | None = None
    timeout_s: float | None = None

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [{"role": "user", "content": t} for t in self.texts]


def parse(doc: dict[str, Any]) -> EmbedCall:
    known_only(doc, _KNOWN)
    model = need(doc, "model", str, required=True)
    value = need(doc, "input", (str, list), required=True)
    texts = [value] if isinstance(value, str) else value
    if not texts:
        raise bad("input: must not be empty", param="input")
    if len(texts) > MAX_INPUTS:
        raise bad(f"input: at most {MAX_INPUTS} texts per call, got {len(texts)}", param="input")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            # Token arrays are OpenAI-only: a gateway in front of several providers takes text.
            raise bad(f"input[{i}]: must be a string (token arrays are not supported)", param=f"input[{i}]",
                      code="invalid_type")
        if not text:
            raise bad(f"input[{i}]: must not be empty", param=f"input[{i}]")
    fmt = need(doc, "encoding_format", str) or "float"
    if fmt not in ("float", "base64"):
        raise bad(f"encoding_format: must be float or base64, got {fmt!r}", param="encoding_format")
    dimensions = need(doc, "dimensions", int)
    if dimensions is not None and dimensions < 1:
        raise bad(f"dimensions: must be >= 1, got {dimensions}", param="dimensions")
    extra = {k: need(doc, k, str) for k in ("input_type", "task_type") if doc.get(k) is not None}
    return EmbedCall(model, list(texts), fmt == "base64", dimensions, need(doc, "user", str), extra,
                     fallbacks_of(doc))


def _vector(values: list[float], as_base64: bool) -> Any:
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode() if as_base64 else values


def shown(result: EmbeddingResult, call: EmbedCall) -> Shown:
    whole = Completed(request_id="", text="", finish_reason="stop", usage=result.usage, embeddings=result.embeddings)
    return shown_usage(whole, call.messages)


def render(result: EmbeddingResult, call: EmbedCall) -> dict[str, Any]:
    usage: Usage = shown(result, call).usage
    return {"object": "list", "model": call.model,
            "data": [{"object": "embedding", "index": i, "embedding": _vector(v, call.base64)}
                     for i, v in enumerate(result.embeddings)],
            "usage": shown(result, call).mark({"prompt_tokens": usage.input_tokens,
                                               "total_tokens": usage.input_tokens})}
