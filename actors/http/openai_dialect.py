"""OpenAI Chat Completions <-> the normalized call: request parsing, whole responses, SSE chunks."""

from __future__ import annotations

import time
from typing import Any, Iterator

from actors.http.errors import HttpError, encode, openai_body
from actors.http.translate import Call, bad, fallbacks_of, need
from actors.types import Completed, TokenChunk, Usage

__all__ = ["parse", "render", "StreamEncoder"]

# Passed through as they are (the project's params are OpenAI's vocabulary).
_NUMBERS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
_INTS = ("max_tokens", "seed", "top_k")
_PASSED = ("stop", "tools", "tool_choice", "response_format", "user", "parallel_tool_calls", "logit_bias",
           "reasoning_effort", "metadata")
# Accepted and dropped: they change nothing a caller can observe through this gateway.
_IGNORED = ("store", "service_tier", "prompt_cache_key", "safety_identifier")
_KNOWN = {"model", "messages", "stream", "stream_options", "n", "max_completion_tokens", "fallbacks", *_NUMBERS, *_INTS,
          *_PASSED, *_IGNORED}
_ROLES = ("system", "developer", "user", "assistant", "tool")


def _message(i: int, message: Any) -> dict[str, Any]:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise bad(f"{where}: must be an object", param=where)
    role = need(message, "role", str, required=True, where=f"{where}.")
    if role not in _ROLES:
        raise bad(f"{where}.role: must be one of {', '.join(_ROLES)}, got {role!r}", param=f"{where}.role")
    content = message.get("content")
    if content is not None and not isinstance(content, (str, list)):
        raise bad(f"{where}.content: must be a string or an array of content parts", param=f"{where}.content")
    if content is None and not message.get("tool_calls"):
        raise bad(f"{where}.content: required", param=f"{where}.content")
    need(message, "tool_calls", list, where=f"{where}.")
    if role == "tool":
        need(message, "tool_call_id", str, required=True, where=f"{where}.")
    out = dict(message)
    if role == "developer":
        out["role"] = "system"  # the same thing for every provider behind the gateway
    return out


def parse(doc: dict[str, Any]) -> Call:
    unknown = sorted(set(doc) - _KNOWN)
    if unknown:
        raise bad(f"{unknown[0]}: unsupported parameter", param=unknown[0], code="unsupported_parameter")
    model = need(doc, "model", str, required=True)
    messages = need(doc, "messages", list, required=True)
    if not messages:
        raise bad("messages: must not be empty", param="messages")
    n = need(doc, "n", int)
    if n is not None and n != 1:
        raise bad(f"n: only n=1 is supported (one choice per call), got {n}", param="n", code="unsupported_value")
    stream = bool(need(doc, "stream", bool))
    options = need(doc, "stream_options", dict) or {}
    include_usage = bool(need(options, "include_usage", bool, where="stream_options."))
    params: dict[str, Any] = {}
    for name in _NUMBERS:
        if need(doc, name, float) is not None:
            params[name] = doc[name]
    for name in _INTS:
        if need(doc, name, int) is not None:
            params[name] = doc[name]
    if need(doc, "max_completion_tokens", int) is not None:
        params["max_tokens"] = doc["max_completion_tokens"]
    for name in _PASSED:
        if doc.get(name) is not None:
            params[name] = doc[name]
    need(doc, "tools", list)
    return Call(model, [_message(i, m) for i, m in enumerate(messages)], params, stream, include_usage,
                fallbacks=fallbacks_of(doc))


def _usage(usage: Usage) -> dict[str, Any]:
    return {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens,
            "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
            "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens}}


def _finish(reason: str | None) -> str:
    return reason if reason in ("stop", "length", "tool_calls", "content_filter") else "stop"


def completion_id(request_id: str) -> str:
    return "chatcmpl-" + request_id.removeprefix("req_")


def render(result: Completed, model: str) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": result.text if result.text or not result.tool_calls
                               else None, "refusal": None}
    if result.tool_calls:
        message["tool_calls"] = [{"id": tc.id, "type": "function",
                                  "function": {"name": tc.name, "arguments": tc.arguments}} for tc in result.tool_calls]
    return {"id": completion_id(result.request_id), "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": message, "logprobs": None,
                                         "finish_reason": _finish(result.finish_reason)}],
            "usage": _usage(result.usage), "system_fingerprint": None}


def _frame(doc: dict[str, Any]) -> bytes:
    return b"data: " + encode(doc) + b"\n\n"


class StreamEncoder:
    """TokenChunks -> ``chat.completion.chunk`` frames; ``end`` or ``error`` closes the stream."""

    content_type = "text/event-stream"

    def __init__(self, request_id: str, model: str, include_usage: bool) -> None:
        self._base = {"id": completion_id(request_id), "object": "chat.completion.chunk",
                      "created": int(time.time()), "model": model, "system_fingerprint": None}
        self._include_usage = include_usage

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        doc = {**self._base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        if self._include_usage:
            doc["usage"] = None
        return _frame(doc)

    def start(self) -> bytes:
        return self._chunk({"role": "assistant", "content": "", "refusal": None})

    def chunk(self, chunk: TokenChunk) -> bytes:
        out = b""
        if chunk.text:
            out += self._chunk({"content": chunk.text})
        if chunk.tool_calls:
            calls = []
            for tc in chunk.tool_calls:
                call: dict[str, Any] = {"index": int(tc.get("index", 0))}
                if tc.get("id"):
                    call["id"] = tc["id"]
                    call["type"] = "function"
                function = {k: tc[k] for k in ("name", "arguments") if tc.get(k) is not None}
                call["function"] = function
                calls.append(call)
            out += self._chunk({"tool_calls": calls})
        return out

    def end(self, result: Completed) -> Iterator[bytes]:
        yield self._chunk({}, _finish(result.finish_reason))
        if self._include_usage:
            yield _frame({**self._base, "choices": [], "usage": _usage(result.usage)})
        yield b"data: [DONE]\n\n"

    def error(self, err: HttpError) -> Iterator[bytes]:
        # The openai SDK raises APIError on a data frame holding "error" (and never sees [DONE]).
        yield _frame(openai_body(err))
