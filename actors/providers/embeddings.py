"""Embeddings: the one non-chat operation, as the worker sees it.

A request with ``operation="embed"`` carries its texts as ``messages`` (one user turn per
text, so validation, budget estimates and routing treat them like a prompt). The worker asks
the deployment's runner for an :class:`EmbeddingCall` (``ModelRunner.for_request``), which has
the runner's shape (``build_request``, ``parse_response``, ``classify_error``) and maps each to
the runner's embeddings methods. Never streamed; the call's usage is its input tokens.
"""

from __future__ import annotations

import base64
import struct
from array import array
from collections.abc import Mapping
from typing import Any

from actors.core.credentials import Secret
from actors.errors import BadRequest, InferenceError, StreamError
from actors.providers.base import Delta, HttpRequest
from actors.types import InferenceRequest

__all__ = ["EmbeddingCall", "embed_texts", "vectors_of", "floats_from_base64"]


def embed_texts(request: InferenceRequest, provider: str = "") -> list[str]:
    """The texts of an embeddings request: each message's content, which must be a non-empty string."""
    texts = []
    for i, message in enumerate(request.messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str) or not content:
            raise BadRequest(f"input[{i}]: an embeddings input must be a non-empty string", provider=provider)
        texts.append(content)
    return texts


def floats_from_base64(text: str) -> list[float]:
    """OpenAI's ``encoding_format: base64``: little-endian float32s."""
    raw = base64.b64decode(text)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def vectors_of(items: Any, count: int, provider: str, key: str = "embedding") -> list[list[float]]:
    """Exactly ``count`` vectors of numbers from ``items`` (a list of vectors or of ``{key: vector}``)."""
    if not isinstance(items, list) or len(items) != count:
        got = len(items) if isinstance(items, list) else type(items).__name__
        raise StreamError(f"{provider} answered {got} embeddings for {count} inputs", provider=provider)
    out = []
    for item in items:
        vector = item.get(key) if isinstance(item, dict) else item
        if isinstance(vector, str):
            vector = floats_from_base64(vector)
        try:
            # array() checks and converts every number in C: a Python loop over 1536 of them per
            # text was half the cost of reading a large answer.
            if not isinstance(vector, list):
                raise TypeError
            out.append(array("d", vector).tolist())
        except (TypeError, OverflowError):
            raise StreamError(f"{provider} sent an embedding that is not a list of numbers",
                              provider=provider) from None
    return out


class EmbeddingCall:
    """One embeddings attempt: the runner's embeddings request, response and errors."""

    def __init__(self, runner: Any, request: InferenceRequest) -> None:
        self.runner = runner
        self.provider = runner.provider
        self.texts = embed_texts(request, runner.provider)
        limit = runner.embed_batch_for()
        if limit <= 0:
            raise BadRequest(f"{runner.provider} has no embeddings API behind this gateway", provider=runner.provider)
        if len(self.texts) > limit:
            raise BadRequest(f"input: {runner.provider} takes at most {limit} texts per embeddings call, got "
                             f"{len(self.texts)} (GatewayClient.embed splits larger inputs)", provider=runner.provider)
        if request.stream:
            raise BadRequest("embeddings are not streamed", provider=runner.provider)

    def build_request(self, request: InferenceRequest, credential: Secret | None) -> HttpRequest:
        return self.runner.build_embed_request(self.texts, request.params, credential)

    def parse_response(self, body: bytes) -> Delta:
        delta = self.runner.parse_embed_response(body, self.texts)
        delta.done = True
        if delta.embeddings is not None and delta.finish_reason is None:
            delta.finish_reason = "stop"
        return delta

    def classify_error(self, status: int, headers: Mapping[str, str], body: bytes) -> InferenceError:
        return self.runner.classify_error(status, headers, body)

    def stream_decoder(self) -> Any:
        raise BadRequest("embeddings are not streamed", provider=self.provider)
