"""OpenAI's legacy Completions (``/v1/completions``) <-> the normalized call: the prompt is served
as one user turn of a chat, and the answer comes back as ``text_completion`` choices."""

from __future__ import annotations

import time
from typing import Any, Iterator

from actors.http.errors import HttpError, encode, openai_body
from actors.http.openai_dialect import usage_doc
from actors.http.translate import Call, Served, bad, fallbacks_of, known_only, need
from actors.http.usage import shown_usage
from actors.types import Completed, TokenChunk

__all__ = ["parse", "render", "StreamEncoder"]

_NUMBERS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
_PASSED = ("stop", "user", "logit_bias", "seed")
_KNOWN = {"model", "prompt", "max_tokens", "stream", "stream_options", "n", "logprobs", "echo", "suffix", "best_of",
          "fallbacks", *_NUMBERS, *_PASSED}
DEFAULT_MAX_TOKENS = 16   # the API's own default for this endpoint


def parse(doc: dict[str, Any]) -> Call:
    known_only(doc, _KNOWN)
    model = need(doc, "model", str, required=True)
    prompt = need(doc, "prompt", (str, list), required=True)
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise bad("prompt: one string per call (a list of prompts, or token arrays, is not supported)",
                      param="prompt", code="unsupported_value")
        prompt = prompt[0]
    if not prompt:
        raise bad("prompt: must not be empty", param="prompt")
    if need(doc, "echo", bool):
        raise bad("echo: not supported (chat models do not score the prompt)", param="echo", code="unsupported_value")
    if need(doc, "suffix", str):
        raise bad("suffix: not supported (no insertion mode behind this gateway)", param="suffix",
                  code="unsupported_value")
    best_of = need(doc, "best_of", int)
    if best_of is not None and best_of != 1:
        raise bad("best_of: only 1 is supported", param="best_of", code="unsupported_value")
    params: dict[str, Any] = {"max_tokens": need(doc, "max_tokens", int) or DEFAULT_MAX_TOKENS}
    for name in _NUMBERS:
        if need(doc, name, float) is not None:
            params[name] = doc[name]
    for name in _PASSED:
        if doc.get(name) is not None:
            params[name] = doc[name]
    stream = bool(need(doc, "stream", bool))
    n = need(doc, "n", int)
    if n is not None and n > 1:
        if stream:
            raise bad("n: several choices are served whole; a stream has one", param="n", code="unsupported_value")
        params["n"] = n
    top = need(doc, "logprobs", int)
    if top is not None:
        if not 0 <= top <= 5:
            raise bad(f"logprobs: must be in [0, 5], got {top}", param="logprobs")
        params["logprobs"] = True
        params["top_logprobs"] = top
    options = need(doc, "stream_options", dict) or {}
    include_usage = bool(need(options, "include_usage", bool, where="stream_options."))
    return Call(model, [{"role": "user", "content": prompt}], params, stream, include_usage,
                fallbacks=fallbacks_of(doc), logprobs=top is not None)


def _logprobs(items: list[dict[str, Any]] | None, asked: bool) -> dict[str, Any] | None:
    """Chat's logprobs items in the legacy shape (tokens, token_logprobs, top_logprobs, text_offset)."""
    if not asked:
        return None
    items = items or []
    offsets, at = [], 0
    for item in items:
        offsets.append(at)
        at += len(str(item.get("token", "")))
    return {"tokens": [i.get("token") for i in items], "token_logprobs": [i.get("logprob") for i in items],
            "top_logprobs": [{t.get("token"): t.get("logprob") for t in i.get("top_logprobs") or ()} for i in items],
            "text_offset": offsets}


def _finish(reason: str | None) -> str:
    return reason if reason in ("stop", "length", "content_filter") else "stop"


def completion_id(request_id: str) -> str:
    return "cmpl-" + request_id.removeprefix("req_")


def render(result: Completed, call: Call, served: Served = Served()) -> dict[str, Any]:
    choices = [{"text": result.text, "index": 0, "logprobs": _logprobs(result.logprobs, call.logprobs),
                "finish_reason": _finish(result.finish_reason)}]
    choices += [{"text": c.text, "index": c.index, "logprobs": _logprobs(c.logprobs, call.logprobs),
                 "finish_reason": _finish(c.finish_reason)} for c in result.choices]
    return {"id": completion_id(result.request_id), "object": "text_completion", "created": int(time.time()),
            "model": call.model, "choices": choices, "system_fingerprint": served.fingerprint(),
            "usage": usage_doc(shown_usage(result, call.messages, call.params))}


def _frame(doc: dict[str, Any]) -> bytes:
    return b"data: " + encode(doc) + b"\n\n"


class StreamEncoder:
    def __init__(self, request_id: str, call: Call, served: Served = Served()) -> None:
        self._base = {"id": completion_id(request_id), "object": "text_completion", "created": int(time.time()),
                      "model": call.model, "system_fingerprint": served.fingerprint()}
        self._call = call

    def start(self) -> bytes:
        return b""

    def chunk(self, chunk: TokenChunk) -> bytes:
        if not chunk.text:
            return b""
        return _frame({**self._base, "choices": [{"text": chunk.text, "index": 0, "finish_reason": None,
                                                  "logprobs": _logprobs(chunk.logprobs, self._call.logprobs)}]})

    def end(self, result: Completed) -> Iterator[bytes]:
        yield _frame({**self._base, "choices": [{"text": "", "index": 0, "logprobs": None,
                                                 "finish_reason": _finish(result.finish_reason)}]})
        if self._call.include_usage:
            yield _frame({**self._base, "choices": [],
                          "usage": usage_doc(shown_usage(result, self._call.messages, self._call.params))})
        yield b"data: [DONE]\n\n"

    def error(self, err: HttpError) -> Iterator[bytes]:
        yield _frame(openai_body(err))
