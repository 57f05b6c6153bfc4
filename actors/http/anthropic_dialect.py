"""Anthropic Messages <-> the normalized call: content blocks to OpenAI-style turns and back,
and the named stream events (message_start ... message_stop)."""

from __future__ import annotations

import json
from typing import Any, Iterator

from actors.http.errors import HttpError, anthropic_body, encode
from actors.http.translate import Call, Served, bad, fallbacks_of, known_only, need
from actors.http.usage import COUNTED_BY, Shown, prompt_tokens, shown_usage
from actors.types import Completed, TokenChunk

__all__ = ["parse", "render", "StreamEncoder"]

_KNOWN = {"model", "messages", "system", "max_tokens", "stream", "temperature", "top_p", "top_k",
          "stop_sequences", "tools", "tool_choice", "metadata", "fallbacks"}
STOP_REASON = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}


def _text(block: dict[str, Any], where: str) -> str:
    text = block.get("text")
    if not isinstance(text, str):
        raise bad(f"{where}.text: must be a string", param=f"{where}.text")
    return text


def _result_text(content: Any, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for j, block in enumerate(content):
            if not isinstance(block, dict) or block.get("type") != "text":
                raise bad(f"{where}.content[{j}]: only text is supported in a tool result", param=f"{where}.content")
            parts.append(_text(block, f"{where}.content[{j}]"))
        return "".join(parts)
    raise bad(f"{where}.content: must be a string or an array of text blocks", param=f"{where}.content")


def _turn(i: int, message: Any) -> list[dict[str, Any]]:
    """One Anthropic turn as OpenAI-style messages (tool results become ``tool`` messages)."""
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise bad(f"{where}: must be an object", param=where)
    role = need(message, "role", str, required=True, where=f"{where}.")
    if role not in ("user", "assistant"):
        raise bad(f"{where}.role: must be user or assistant, got {role!r}", param=f"{where}.role")
    content = message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise bad(f"{where}.content: must be a string or an array of content blocks", param=f"{where}.content")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for j, block in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(_text(block, at))
        elif kind == "tool_use" and role == "assistant":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise bad(f"{at}: a tool_use block needs a string id and name", param=at)
            calls.append({"id": block["id"], "type": "function",
                          "function": {"name": block["name"], "arguments": json.dumps(block.get("input") or {})}})
        elif kind == "tool_result" and role == "user":
            if not isinstance(block.get("tool_use_id"), str):
                raise bad(f"{at}.tool_use_id: must be a string", param=f"{at}.tool_use_id")
            results.append({"role": "tool", "tool_call_id": block["tool_use_id"],
                            "content": _result_text(block.get("content"), at)})
        else:
            raise bad(f"{at}: content blocks of type {kind!r} are not supported here "
                      f"(text, and tool_use/tool_result, are)", param=at)
    out = list(results)
    if role == "assistant":
        if texts or calls:
            turn: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts else None}
            if calls:
                turn["tool_calls"] = calls
            out.append(turn)
    elif texts:
        out.append({"role": "user", "content": "".join(texts) if len(texts) == 1 else
                    [{"type": "text", "text": t} for t in texts]})
    if not out:
        raise bad(f"{where}.content: must not be empty", param=f"{where}.content")
    return out


def _tools(tools: list[Any]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str) or not tool["name"]:
            raise bad(f"tools[{i}]: must be an object with a name", param=f"tools[{i}]")
        schema = tool.get("input_schema") or {"type": "object", "properties": {}}
        if not isinstance(schema, dict):
            raise bad(f"tools[{i}].input_schema: must be an object", param=f"tools[{i}].input_schema")
        out.append({"type": "function", "function": {"name": tool["name"], "description": tool.get("description", ""),
                                                     "parameters": schema}})
    return out


def _tool_choice(choice: dict[str, Any]) -> Any:
    kind = choice.get("type")
    if kind == "tool" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    mapped = {"auto": "auto", "any": "required", "none": "none"}.get(kind) if isinstance(kind, str) else None
    if mapped is None:
        raise bad(f"tool_choice.type: must be auto, any, tool (with a name) or none, got {kind!r}",
                  param="tool_choice")
    return mapped


def parse(doc: dict[str, Any]) -> Call:
    known_only(doc, _KNOWN)
    model = need(doc, "model", str, required=True)
    max_tokens = need(doc, "max_tokens", int, required=True)
    if max_tokens < 1:
        raise bad(f"max_tokens: must be >= 1, got {max_tokens}", param="max_tokens")
    turns = need(doc, "messages", list, required=True)
    if not turns:
        raise bad("messages: must not be empty", param="messages")
    messages: list[dict[str, Any]] = []
    system = need(doc, "system", (str, list))
    if isinstance(system, list):
        system = "".join(_text(b, f"system[{j}]") if isinstance(b, dict) else "" for j, b in enumerate(system))
    if system:
        messages.append({"role": "system", "content": system})
    for i, turn in enumerate(turns):
        messages.extend(_turn(i, turn))
    params: dict[str, Any] = {"max_tokens": max_tokens}
    for name in ("temperature", "top_p"):
        if need(doc, name, float) is not None:
            params[name] = doc[name]
    if need(doc, "top_k", int) is not None:
        params["top_k"] = doc["top_k"]
    stops = need(doc, "stop_sequences", list)
    if stops:
        params["stop"] = stops
    echo = {"stop_sequences": list(stops or [])}
    tools = need(doc, "tools", list)
    if tools:
        params["tools"] = _tools(tools)
    choice = need(doc, "tool_choice", dict)
    if choice is not None:
        params["tool_choice"] = _tool_choice(choice)
    metadata = need(doc, "metadata", dict) or {}
    if isinstance(metadata.get("user_id"), str):
        params["user"] = metadata["user_id"]
    return Call(model, messages, params, bool(need(doc, "stream", bool)), fallbacks=fallbacks_of(doc), echo=echo)


def stop_of(result: Completed, call: Call) -> tuple[str, str | None]:
    """``stop_reason`` and ``stop_sequence`` as Anthropic reports them.

    A provider that names the sequence (Anthropic) is believed; one that only says a stop
    sequence ended the answer (Bedrock, Cohere) names it when the caller gave just one."""
    stops = call.echo.get("stop_sequences") or []
    sequence = result.stop_sequence
    raw = (result.raw_finish_reason or "").lower()
    if sequence is None and raw == "stop_sequence" and len(stops) == 1:
        sequence = stops[0]
    if sequence is not None and result.finish_reason == "stop":
        return "stop_sequence", sequence
    return STOP_REASON.get(result.finish_reason, "end_turn"), None


def message_id(request_id: str) -> str:
    return "msg_" + request_id.removeprefix("req_")


def _usage(shown: Shown) -> dict[str, Any]:
    # Anthropic's input_tokens leaves out cache reads; ours counts the whole prompt.
    usage = shown.usage
    return shown.mark({"input_tokens": usage.input_tokens - usage.cached_input_tokens,
                       "output_tokens": usage.output_tokens,
                       "cache_read_input_tokens": usage.cached_input_tokens, "cache_creation_input_tokens": 0})


def _arguments(text: str) -> Any:
    try:
        return json.loads(text or "{}")
    except ValueError:
        return {"_unparsed_arguments": text}


def render(result: Completed, call: Call, served: Served = Served()) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if result.text:
        content.append({"type": "text", "text": result.text})
    for tc in result.tool_calls:
        content.append({"type": "tool_use", "id": tc.id, "name": tc.name, "input": _arguments(tc.arguments)})
    stop_reason, stop_sequence = stop_of(result, call)
    return {"id": message_id(result.request_id), "type": "message", "role": "assistant", "model": call.model,
            "content": content, "stop_reason": stop_reason, "stop_sequence": stop_sequence,
            "usage": _usage(shown_usage(result, call.messages, call.params))}


def _event(name: str, doc: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + encode({"type": name, **doc}) + b"\n\n"


class StreamEncoder:
    """TokenChunks -> content blocks: text blocks, and one tool_use block per tool call."""

    content_type = "text/event-stream"

    def __init__(self, request_id: str, call: Call, served: Served = Served()) -> None:
        self._id = message_id(request_id)
        self._model = call.model
        self._call = call
        self._open: tuple[str, int] | None = None   # ("text", -1) or ("tool", tool index), with its block index
        self._block = -1

    def start(self) -> bytes:
        # The provider's own count comes with the answer's end (message_delta), which the SDKs take;
        # before it the gateway counts the prompt as sent, and says so.
        usage = {"input_tokens": prompt_tokens(self._call.messages, self._call.params), "output_tokens": 0,
                 "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0, "counted_by": COUNTED_BY}
        return _event("message_start", {"message": {
            "id": self._id, "type": "message", "role": "assistant", "model": self._model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": usage}})

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return _event("content_block_stop", {"index": self._block})

    def _begin(self, key: tuple[str, int], block: dict[str, Any]) -> bytes:
        out = self._close()
        self._block += 1
        self._open = key
        return out + _event("content_block_start", {"index": self._block, "content_block": block})

    def chunk(self, chunk: TokenChunk) -> bytes:
        out = b""
        if chunk.text:
            if self._open != ("text", -1):
                out += self._begin(("text", -1), {"type": "text", "text": ""})
            out += _event("content_block_delta", {"index": self._block,
                                                  "delta": {"type": "text_delta", "text": chunk.text}})
        for tc in chunk.tool_calls:
            key = ("tool", int(tc.get("index", 0)))
            if self._open != key:
                out += self._begin(key, {"type": "tool_use", "id": tc.get("id") or "", "name": tc.get("name") or "",
                                         "input": {}})
            if tc.get("arguments"):
                out += _event("content_block_delta", {"index": self._block, "delta": {
                    "type": "input_json_delta", "partial_json": tc["arguments"]}})
        return out

    def end(self, result: Completed) -> Iterator[bytes]:
        closing = self._close()
        if closing:
            yield closing
        usage = _usage(shown_usage(result, self._call.messages, self._call.params))
        stop_reason, stop_sequence = stop_of(result, self._call)
        yield _event("message_delta", {"delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                                       "usage": usage})
        yield _event("message_stop", {})

    def error(self, err: HttpError) -> Iterator[bytes]:
        # The anthropic SDK raises on ``event: error`` (an APIStatusError carrying this body).
        yield b"event: error\ndata: " + encode(anthropic_body(err)) + b"\n\n"
