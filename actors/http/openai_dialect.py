"""OpenAI Chat Completions <-> the normalized call: request parsing, whole responses, SSE chunks."""

from __future__ import annotations

import time
from typing import Any, Iterator

from actors.http.errors import HttpError, encode, openai_body
from actors.http.translate import Call, Served, bad, fallbacks_of, known_only, need
from actors.http.usage import Shown, shown_usage
from actors.types import Completed, TokenChunk

__all__ = ["parse", "render", "StreamEncoder"]

# Passed through as they are (the project's params are OpenAI's vocabulary).
_NUMBERS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
_INTS = ("max_tokens", "seed", "top_k", "top_logprobs")
_PASSED = ("stop", "tools", "tool_choice", "response_format", "user", "parallel_tool_calls", "logit_bias",
           "reasoning_effort", "metadata")
# Accepted and dropped: they change nothing a caller can observe through this gateway.
_IGNORED = ("store", "service_tier", "prompt_cache_key", "safety_identifier")
_KNOWN = {"model", "messages", "stream", "stream_options", "n", "max_completion_tokens", "fallbacks", "logprobs",
          *_NUMBERS, *_INTS, *_PASSED, *_IGNORED}
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
    known_only(doc, _KNOWN)
    model = need(doc, "model", str, required=True)
    messages = need(doc, "messages", list, required=True)
    if not messages:
        raise bad("messages: must not be empty", param="messages")
    n = need(doc, "n", int)
    if n is not None and not 1 <= n <= 128:
        raise bad(f"n: must be in [1, 128], got {n}", param="n", code="invalid_value")
    stream = bool(need(doc, "stream", bool))
    if n is not None and n > 1 and stream:
        raise bad("n: several choices are served whole; a stream has one", param="n", code="unsupported_value")
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
    if n is not None and n > 1:
        params["n"] = n
    logprobs = bool(need(doc, "logprobs", bool))
    if logprobs:
        params["logprobs"] = True      # false is the default everywhere: not sent
    elif "top_logprobs" in params:
        raise bad("top_logprobs: needs logprobs: true", param="top_logprobs", code="invalid_value")
    return Call(model, [_message(i, m) for i, m in enumerate(messages)], params, stream, include_usage,
                fallbacks=fallbacks_of(doc), logprobs=logprobs)


def usage_doc(shown: Shown) -> dict[str, Any]:
    usage = shown.usage
    return shown.mark({"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
                       "total_tokens": usage.total_tokens,
                       "prompt_tokens_details": {"cached_tokens": usage.cached_input_tokens},
                       "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens}})


def logprobs_doc(items: list[dict[str, Any]] | None, asked: bool) -> dict[str, Any] | None:
    return {"content": list(items or []), "refusal": None} if asked else None


def _finish(reason: str | None) -> str:
    return reason if reason in ("stop", "length", "tool_calls", "content_filter") else "stop"


def completion_id(request_id: str) -> str:
    return "chatcmpl-" + request_id.removeprefix("req_")


def _choice(index: int, text: str, tool_calls: list, finish: str, logprobs: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not tool_calls else None,
                               "refusal": None}
    if tool_calls:
        message["tool_calls"] = [{"id": tc.id, "type": "function",
                                  "function": {"name": tc.name, "arguments": tc.arguments}} for tc in tool_calls]
    return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": _finish(finish)}


def render(result: Completed, call: Call, served: Served = Served()) -> dict[str, Any]:
    choices = [_choice(0, result.text, result.tool_calls, result.finish_reason,
                       logprobs_doc(result.logprobs, call.logprobs))]
    choices += [_choice(c.index, c.text, c.tool_calls, c.finish_reason, logprobs_doc(c.logprobs, call.logprobs))
                for c in result.choices]
    return {"id": completion_id(result.request_id), "object": "chat.completion", "created": int(time.time()),
            "model": call.model, "choices": choices,
            "usage": usage_doc(shown_usage(result, call.messages, call.params)),
            "system_fingerprint": served.fingerprint()}


def _frame(doc: dict[str, Any]) -> bytes:
    return b"data: " + encode(doc) + b"\n\n"


class StreamEncoder:
    """TokenChunks -> ``chat.completion.chunk`` frames; ``end`` or ``error`` closes the stream."""

    content_type = "text/event-stream"

    def __init__(self, request_id: str, call: Call, served: Served = Served()) -> None:
        self._base = {"id": completion_id(request_id), "object": "chat.completion.chunk",
                      "created": int(time.time()), "model": call.model, "system_fingerprint": served.fingerprint()}
        self._include_usage = call.include_usage
        self._call = call

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> bytes:
        doc = {**self._base, "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}
        if self._include_usage:
            doc["usage"] = None
        return _frame(doc)

    def start(self) -> bytes:
        return self._chunk({"role": "assistant", "content": "", "refusal": None})

    def chunk(self, chunk: TokenChunk) -> bytes:
        out = b""
        if chunk.text:
            out += self._chunk({"content": chunk.text}, logprobs=logprobs_doc(chunk.logprobs, self._call.logprobs))
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
            yield _frame({**self._base, "choices": [],
                          "usage": usage_doc(shown_usage(result, self._call.messages, self._call.params))})
        yield b"data: [DONE]\n\n"

    def error(self, err: HttpError) -> Iterator[bytes]:
        # The openai SDK raises APIError on a data frame holding "error" (and never sees [DONE]).
        yield _frame(openai_body(err))
