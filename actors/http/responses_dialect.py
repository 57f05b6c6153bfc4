"""OpenAI's Responses API (``/v1/responses``) <-> the normalized call, over any deployment.

Stateless: each call carries its whole conversation in ``input``. Nothing is stored, so the
fields that refer to stored state (``previous_response_id``, ``conversation``, ``background``,
``prompt``) and non-function tools are refused with a 400 naming the field; ``store`` is
accepted and answered ``false``. Streams are the typed events (``response.created`` ...
``response.completed``), each with its ``sequence_number``.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

from actors.http.errors import HttpError, encode
from actors.http.translate import Call, Served, bad, fallbacks_of, known_only, need
from actors.http.usage import Shown, shown_usage
from actors.types import Completed, TokenChunk

__all__ = ["parse", "render", "StreamEncoder"]

_STATEFUL = {"previous_response_id": "stored responses", "conversation": "stored conversations",
             "background": "background responses", "prompt": "stored prompt templates"}
_KNOWN = {"model", "input", "instructions", "tools", "tool_choice", "max_output_tokens", "temperature", "top_p",
          "stream", "parallel_tool_calls", "metadata", "user", "store", "text", "truncation", "reasoning",
          "include", "top_logprobs", "service_tier", "fallbacks", "safety_identifier", "prompt_cache_key",
          "stream_options", *_STATEFUL}
LOGPROBS = "message.output_text.logprobs"   # the one include[] value served: the answer's log probabilities
FINISH = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise bad(f"{where}: must be a string or an array of content parts", param=where)
    parts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in ("input_text", "output_text", "text") or not isinstance(part.get("text"), str):
            raise bad(f"{where}[{j}]: content parts of type {kind!r} are not supported here (input_text and "
                      f"output_text are)", param=f"{where}[{j}]")
        parts.append(part["text"])
    return "".join(parts)


def _input(items: Any) -> list[dict[str, Any]]:
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise bad("input: must be a string or a non-empty array of items", param="input")
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise bad(f"{where}: must be an object", param=where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise bad(f"{where}.role: must be user, assistant, system or developer, got {role!r}",
                          param=f"{where}.role")
            messages.append({"role": "system" if role == "developer" else role,
                             "content": _text_of(item.get("content"), f"{where}.content")})
        elif kind == "function_call":
            if not all(isinstance(item.get(k), str) for k in ("call_id", "name")):
                raise bad(f"{where}: a function_call item needs a string call_id and name", param=where)
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item.get("arguments") or "{}"}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)   # parallel calls are one assistant turn
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise bad(f"{where}.call_id: must be a string", param=f"{where}.call_id")
            output = item.get("output")
            messages.append({"role": "tool", "tool_call_id": item["call_id"],
                             "content": output if isinstance(output, str) else _text_of(output, f"{where}.output")})
        else:
            raise bad(f"{where}.type: items of type {kind!r} are not supported here (message, function_call and "
                      f"function_call_output are)", param=f"{where}.type")
    return messages


def _tools(tools: list[Any]) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise bad(f"tools[{i}].type: only function tools are served here, got {kind!r}", param=f"tools[{i}].type")
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise bad(f"tools[{i}].name: required", param=f"tools[{i}].name")
        function = {"name": tool["name"], "description": tool.get("description") or "",
                    "parameters": tool.get("parameters") or {"type": "object", "properties": {}}}
        if tool.get("strict") is not None:
            function["strict"] = bool(tool["strict"])
        out.append({"type": "function", "function": function})
    return out


def _tool_echo(tool: dict[str, Any]) -> dict[str, Any]:
    """A function tool as a response repeats it: every field the API's ``FunctionTool`` has, and
    ``strict`` null when the caller did not set it (the gateway enforces nothing about it)."""
    return {"type": "function", "name": tool["name"], "description": tool.get("description"),
            "parameters": tool.get("parameters"), "strict": tool.get("strict")}


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise bad("tool_choice: must be auto, none, required or {type: function, name}", param="tool_choice")


def _format(text: dict[str, Any]) -> Any:
    fmt = text.get("format") or {}
    kind = fmt.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
        return {"type": "json_schema", "json_schema": schema}
    raise bad(f"text.format.type: must be text, json_object or json_schema, got {kind!r}", param="text.format.type")


def parse(doc: dict[str, Any]) -> Call:
    for name, what in _STATEFUL.items():
        if doc.get(name) not in (None, False):
            raise bad(f"{name}: this gateway is stateless and keeps no {what}; send the whole conversation in "
                      f"input", param=name, code="unsupported_parameter")
    known_only(doc, _KNOWN)
    logprobs = _include(need(doc, "include", list) or [])
    top = need(doc, "top_logprobs", int)
    if top is not None and not 0 <= top <= 20:
        raise bad(f"top_logprobs: must be in [0, 20], got {top}", param="top_logprobs", code="invalid_value")
    truncation = need(doc, "truncation", str)
    if truncation not in (None, "disabled"):
        raise bad("truncation: only disabled is supported", param="truncation", code="unsupported_value")
    model = need(doc, "model", str, required=True)
    if "input" not in doc or doc["input"] is None:
        raise bad("input: required", param="input", code="missing_required_parameter")
    messages = _input(doc["input"])
    instructions = need(doc, "instructions", str)
    if instructions:
        messages.insert(0, {"role": "system", "content": instructions})
    params: dict[str, Any] = {}
    for name in ("temperature", "top_p"):
        if need(doc, name, float) is not None:
            params[name] = doc[name]
    if need(doc, "max_output_tokens", int) is not None:
        params["max_tokens"] = doc["max_output_tokens"]
    tools = need(doc, "tools", list)
    if tools:
        params["tools"] = _tools(tools)
    if doc.get("tool_choice") is not None:
        params["tool_choice"] = _tool_choice(doc["tool_choice"])
    if need(doc, "parallel_tool_calls", bool) is not None:
        params["parallel_tool_calls"] = doc["parallel_tool_calls"]
    fmt = _format(need(doc, "text", dict) or {})
    if fmt is not None:
        params["response_format"] = fmt
    effort = (need(doc, "reasoning", dict) or {}).get("effort")
    if effort:
        params["reasoning_effort"] = effort
    if need(doc, "user", str):
        params["user"] = doc["user"]
    if logprobs:   # as the API: top_logprobs alone returns none
        params["logprobs"] = True
        if top is not None:
            params["top_logprobs"] = top
    metadata = need(doc, "metadata", dict) or {}
    echo = {"instructions": instructions, "tools": [_tool_echo(t) for t in tools or ()],
            "tool_choice": doc.get("tool_choice") or "auto",
            "temperature": doc.get("temperature"), "top_p": doc.get("top_p"), "metadata": metadata,
            "max_output_tokens": doc.get("max_output_tokens"),
            "parallel_tool_calls": doc.get("parallel_tool_calls", True), "text": doc.get("text") or
            {"format": {"type": "text"}}, "user": doc.get("user"), "top_logprobs": top}
    return Call(model, messages, params, bool(need(doc, "stream", bool)), fallbacks=fallbacks_of(doc), echo=echo,
                logprobs=logprobs)


def _include(values: list[Any]) -> bool:
    """Whether ``include`` asks for log probabilities; anything else it names is output not kept here."""
    for i, value in enumerate(values):
        if value != LOGPROBS:
            raise bad(f"include[{i}]: only {LOGPROBS!r} is available here, got {value!r}", param=f"include[{i}]",
                      code="unsupported_value")
    return bool(values)


def response_id(request_id: str) -> str:
    return "resp_" + request_id.removeprefix("req_")


def _usage(shown: Shown) -> dict[str, Any]:
    u = shown.usage
    return shown.mark({"input_tokens": u.input_tokens,
                       "input_tokens_details": {"cached_tokens": u.cached_input_tokens, "cache_write_tokens": 0},
                       "output_tokens": u.output_tokens,
                       "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
                       "total_tokens": u.total_tokens})


def _token(item: dict[str, Any], with_bytes: bool) -> dict[str, Any]:
    token = str(item.get("token", ""))
    doc = {"token": token, "logprob": float(item.get("logprob") or 0.0)}
    if with_bytes:
        raw = item.get("bytes")
        doc["bytes"] = raw if isinstance(raw, list) else list(token.encode())
    return doc


def logprobs_doc(items: list[dict[str, Any]] | None, stream_event: bool = False) -> list[dict[str, Any]]:
    """Chat's ``logprobs.content`` items as an ``output_text`` part's ``logprobs`` (with ``bytes``), or
    as a text delta event's (without: the API's ``ResponseLogProb``)."""
    return [{**_token(x, not stream_event),
             "top_logprobs": [_token(t, not stream_event) for t in x.get("top_logprobs") or ()]}
            for x in items or ()]


def _message_item(item_id: str, text: str, status: str = "completed",
                  logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    content = ([{"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs_doc(logprobs)}]
               if status == "completed" else [])
    return {"type": "message", "id": item_id, "status": status, "role": "assistant", "content": content}


def _call_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def _snapshot(rid: str, call: Call, created: float, status: str, output: list[dict[str, Any]],
              usage: dict[str, Any] | None, incomplete: str | None = None) -> dict[str, Any]:
    e = call.echo
    # ``user`` is a string or absent (never null, by OpenAI's schema).
    user = {"user": e["user"]} if isinstance(e.get("user"), str) else {}
    # Usage only once there is some: the schema's ``usage`` is an object, never null.
    counted = {"usage": usage} if usage is not None else {}
    return {"id": response_id(rid), "object": "response", "created_at": created, "status": status,
            "model": call.model, "output": output, "error": None,
            "incomplete_details": {"reason": incomplete} if incomplete else None,
            "instructions": e.get("instructions"), "metadata": e.get("metadata") or {},
            "parallel_tool_calls": bool(e.get("parallel_tool_calls", True)), "temperature": e.get("temperature"),
            "top_p": e.get("top_p"), "tool_choice": e.get("tool_choice") or "auto", "tools": e.get("tools") or [],
            "max_output_tokens": e.get("max_output_tokens"), "text": e.get("text"), "truncation": "disabled",
            "store": False, "background": False, "previous_response_id": None, "reasoning": None,
            "service_tier": "default", "top_logprobs": e.get("top_logprobs"), **user, **counted}


def _status(result: Completed) -> tuple[str, str | None]:
    reason = FINISH.get(result.finish_reason)
    return ("incomplete", reason) if reason else ("completed", None)


def render(result: Completed, call: Call, served: Served = Served()) -> dict[str, Any]:
    rid = result.request_id
    output: list[dict[str, Any]] = []
    if result.text:
        output.append(_message_item("msg_" + rid.removeprefix("req_"), result.text,
                                   logprobs=result.logprobs if call.logprobs else None))
    for i, tc in enumerate(result.tool_calls):
        output.append(_call_item(f"fc_{rid.removeprefix('req_')}_{i}", tc.id, tc.name, tc.arguments))
    status, reason = _status(result)
    return _snapshot(rid, call, time.time(), status, output,
                     _usage(shown_usage(result, call.messages, call.params)), reason)


class StreamEncoder:
    """TokenChunks -> typed Responses events; every item is opened, streamed and closed in order."""

    def __init__(self, request_id: str, call: Call, served: Served = Served()) -> None:
        self._rid = request_id
        self._call = call
        self._created = time.time()
        self._seq = -1
        self._items: list[dict[str, Any]] = []     # finished items, in output order
        self._open: dict[str, Any] | None = None   # the item being streamed
        self._tool_key: int | None = None

    def _event(self, kind: str, **fields: Any) -> bytes:
        self._seq += 1
        return (b"event: " + kind.encode() + b"\ndata: "
                + encode({"type": kind, "sequence_number": self._seq, **fields}) + b"\n\n")

    def start(self) -> bytes:
        head = _snapshot(self._rid, self._call, self._created, "in_progress", [], None)
        return self._event("response.created", response=head) + self._event("response.in_progress", response=head)

    def _close(self) -> bytes:
        item, self._open = self._open, None
        if item is None:
            return b""
        index = len(self._items)
        if item["type"] == "message":
            done = _message_item(item["id"], item["text"], logprobs=item["logprobs"])
            self._items.append(done)
            part = done["content"][0]
            return (self._event("response.output_text.done", item_id=item["id"], output_index=index,
                                content_index=0, text=item["text"],
                                logprobs=logprobs_doc(item["logprobs"], stream_event=True))
                    + self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                  content_index=0, part=part)
                    + self._event("response.output_item.done", output_index=index, item=done))
        done = _call_item(item["id"], item["call_id"], item["name"], item["arguments"])
        self._items.append(done)
        return (self._event("response.function_call_arguments.done", item_id=item["id"], output_index=index,
                            arguments=item["arguments"], name=item["name"])
                + self._event("response.output_item.done", output_index=index, item=done))

    def chunk(self, chunk: TokenChunk) -> bytes:
        out = b""
        if chunk.text:
            if self._open is None or self._open["type"] != "message":
                out += self._close()
                item_id = f"msg_{self._rid.removeprefix('req_')}"
                self._open = {"type": "message", "id": item_id, "text": "", "logprobs": []}
                index = len(self._items)
                out += self._event("response.output_item.added", output_index=index,
                                   item=_message_item(item_id, "", "in_progress"))
                out += self._event("response.content_part.added", item_id=item_id, output_index=index,
                                   content_index=0, part={"type": "output_text", "text": "", "annotations": [],
                                                          "logprobs": []})
            self._open["text"] += chunk.text
            logprobs = chunk.logprobs if self._call.logprobs else None
            self._open["logprobs"] += logprobs or []
            out += self._event("response.output_text.delta", item_id=self._open["id"], output_index=len(self._items),
                               content_index=0, delta=chunk.text, logprobs=logprobs_doc(logprobs, stream_event=True))
        for tc in chunk.tool_calls:
            key = int(tc.get("index", 0))
            if self._open is None or self._open["type"] != "function_call" or self._tool_key != key:
                out += self._close()
                item_id = f"fc_{self._rid.removeprefix('req_')}_{key}"
                self._open = {"type": "function_call", "id": item_id, "call_id": tc.get("id") or item_id,
                              "name": tc.get("name") or "", "arguments": ""}
                self._tool_key = key
                out += self._event("response.output_item.added", output_index=len(self._items),
                                   item=_call_item(item_id, self._open["call_id"], self._open["name"], "",
                                                   "in_progress"))
            if tc.get("arguments"):
                self._open["arguments"] += tc["arguments"]
                out += self._event("response.function_call_arguments.delta", item_id=self._open["id"],
                                   output_index=len(self._items), delta=tc["arguments"])
        return out

    def end(self, result: Completed) -> Iterator[bytes]:
        closing = self._close()
        if closing:
            yield closing
        status, reason = _status(result)
        final = _snapshot(self._rid, self._call, self._created, status, self._items,
                          _usage(shown_usage(result, self._call.messages, self._call.params)), reason)
        yield self._event("response.completed" if status == "completed" else "response.incomplete", response=final)

    def error(self, err: HttpError) -> Iterator[bytes]:
        # The openai SDK raises APIError on an ``error`` event.
        yield self._event("error", code=err.code, message=err.message, param=err.param)
