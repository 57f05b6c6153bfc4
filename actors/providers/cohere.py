"""Cohere v2 Chat: OpenAI-like messages and tool calls, a typed event stream ending in ``message-end``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from actors.core.classify import redact
from actors.core.credentials import Secret
from actors.errors import InferenceError, ServerError, StreamError
from actors.types import InferenceRequest
from actors.providers.embeddings import vectors_of
from actors.providers.base import (Delta, HttpRequest, SseRunner, bare_message, bare_message_error, function_tools, loads_json, plain_text, renamed_params, tool_choice, tool_index)
from actors.core.sse import SseChunk
from actors.providers.openai import tool_call_deltas

PROVIDER = "cohere"
FINISH = {"COMPLETE": "stop", "STOP_SEQUENCE": "stop", "MAX_TOKENS": "length", "TOOL_CALL": "tool_calls",
          "ERROR": "error", "TIMEOUT": "error"}
PARAMS = (("max_tokens", "max_tokens"), ("temperature", "temperature"), ("top_p", "p"), ("top_k", "k"),
          ("seed", "seed"), ("presence_penalty", "presence_penalty"), ("frequency_penalty", "frequency_penalty"))
TOOL_FIELDS = ("name", "description", "parameters")
# Cohere's 499 means its side cancelled the request or broke the stream: worth another attempt.
STATUS_ERRORS: dict[int, type[InferenceError]] = {499: StreamError}


def usage_fields(usage: dict[str, Any] | None) -> dict[str, int] | None:
    """``tokens`` counts what the model processed; ``billed_units`` (what is billed) is the fallback."""
    if not usage:
        return None
    counts = usage.get("tokens") or usage.get("billed_units") or {}
    return {"input_tokens": int(counts.get("input_tokens") or 0),
            "output_tokens": int(counts.get("output_tokens") or 0)}


def to_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages -> Cohere's: the same roles and tool-call shape, text content only."""
    out = []
    for m in messages:
        role = "system" if m.get("role") == "developer" else m.get("role")
        message: dict[str, Any] = {"role": role, "content": plain_text(m.get("content"), PROVIDER)}
        if role == "tool":
            message["tool_call_id"] = m.get("tool_call_id", "")
        elif role == "assistant" and m.get("tool_calls"):
            message["tool_calls"] = [{"id": c.get("id", ""), "type": "function", "function": c.get("function") or {}}
                                     for c in m["tool_calls"]]
            if not message["content"]:
                del message["content"]  # an assistant turn with tool calls may have no text, never empty text
        out.append(message)
    return out


class CohereRunner(SseRunner):
    provider = PROVIDER
    family = "cohere"
    finish_map = FINISH
    # input_type is required by Cohere's v3+ embedding models; a request may name its own.
    options_schema = {"input_type": (str, "search_document")}
    embed_batch = 96   # v2 /embed: at most 96 texts per call

    def build_request(self, request: InferenceRequest, credential: Secret | None) -> HttpRequest:
        params = request.params
        payload: dict[str, Any] = {"model": self.model, "messages": to_messages(request.messages),
                                   "stream": request.stream}
        payload.update(renamed_params(params, PARAMS, stop="stop_sequences"))
        if params.get("tools"):
            payload["tools"] = [{"type": "function", "function": {k: tool[k] for k in TOOL_FIELDS}}
                                for tool in function_tools(params["tools"])]
        choice = tool_choice(params)
        if choice is not None and choice[0] != "auto":
            # Cohere can only force some tool or none; "auto" is its default.
            payload["tool_choice"] = "NONE" if choice[0] == "none" else "REQUIRED"
        auth = {"authorization": f"Bearer {credential.reveal()}"} if credential is not None else {}
        return self.post(self.endpoint + "/chat", auth, payload, request.stream)

    def build_embed_request(self, texts: list[str], params: Any, credential: Secret | None) -> HttpRequest:
        payload: dict[str, Any] = {"model": self.model, "texts": texts, "embedding_types": ["float"],
                                   "input_type": params.get("input_type") or self.options["input_type"]}
        if params.get("dimensions") is not None:
            payload["output_dimension"] = params["dimensions"]
        auth = {"authorization": f"Bearer {credential.reveal()}"} if credential is not None else {}
        return self.post(self.endpoint + "/embed", auth, payload, False)

    def parse_embed_response(self, body: bytes, texts: list[str]) -> Delta:
        doc = loads_json(body, self.provider)
        vectors = doc.get("embeddings")
        if isinstance(vectors, dict):
            vectors = vectors.get("float")
        return Delta(embeddings=vectors_of(vectors, len(texts), self.provider), usage=usage_fields(doc.get("meta")))

    def parse_response(self, body: bytes) -> Delta:
        doc = loads_json(body, self.provider)
        message = doc.get("message") or {}
        text = "".join(p.get("text", "") for p in message.get("content") or () if p.get("type") == "text")
        return self._end(doc, Delta(text=text, tool_calls=tool_call_deltas(message.get("tool_calls"))))

    def translate(self, event: SseChunk, state: dict[str, Any]) -> list[Delta]:
        doc = loads_json(event.data, self.provider)
        kind = doc.get("type", event.event)
        message = (doc.get("delta") or {}).get("message") or {}
        if kind == "content-delta":
            return [Delta(text=(message.get("content") or {}).get("text", ""))]
        if kind in ("tool-call-start", "tool-call-delta"):
            call = message.get("tool_calls") or {}
            function = call.get("function") or {}
            return [Delta(tool_calls=[{"index": tool_index(state, doc.get("index", 0)), "id": call.get("id"),
                                       "name": function.get("name"), "arguments": function.get("arguments") or ""}])]
        if kind == "message-end":
            return [self._end(doc.get("delta") or {}, Delta())]
        # message-start, content-start/end, tool-plan-delta, tool-call-end and citations carry no answer.
        return []

    def _end(self, doc: dict[str, Any], delta: Delta) -> Delta:
        """Finish reason and usage, from a whole response or a ``message-end`` delta."""
        delta.usage = usage_fields(doc.get("usage"))
        delta.finish_reason, delta.raw_finish_reason = self.finish(doc.get("finish_reason"))
        delta.done = True
        if delta.finish_reason == "error" or doc.get("error"):
            # The generation broke off on Cohere's side: a retryable failure, not an answer.
            reason = redact(str(doc.get("error") or doc.get("finish_reason")))
            delta.error = ServerError(f"the generation failed: {reason}", provider=self.provider)
        return delta

    def classify_error(self, status: int, headers: Mapping[str, str], body: bytes) -> InferenceError:
        message = bare_message(body)  # Cohere errors are {"id": ..., "message": ...}
        if message is None:
            return super().classify_error(status, headers, body)
        return bare_message_error(status, headers, message, self.provider, STATUS_ERRORS.get(status))
