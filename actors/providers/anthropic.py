"""Anthropic Messages API: system prompt as a top-level field, content blocks, named stream events."""

from __future__ import annotations

from typing import Any

from actors.core.credentials import Secret
from actors.types import InferenceRequest
from actors.providers.base import (Delta, HttpRequest, SseRunner, fold_turns, function_tools, loads_json, object_tool_call, renamed_params, split_system, text_of, tool_arguments, tool_choice, tool_index)
from actors.core.sse import SseChunk

FINISH = {"end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
          "tool_use": "tool_calls", "refusal": "content_filter"}


def usage_fields(usage: dict[str, Any] | None) -> dict[str, int] | None:
    """Anthropic's input_tokens excludes cache reads and writes; ours is the whole prompt."""
    if not usage:
        return None
    fields: dict[str, int] = {}
    if "input_tokens" in usage or "cache_read_input_tokens" in usage:
        cached = usage.get("cache_read_input_tokens") or 0
        fields["input_tokens"] = (usage.get("input_tokens") or 0) + cached + (usage.get("cache_creation_input_tokens") or 0)
        fields["cached_input_tokens"] = cached
    if "output_tokens" in usage:
        fields["output_tokens"] = usage["output_tokens"] or 0
    return fields


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    """One OpenAI-style message (tool calls and results included) as Anthropic content blocks."""
    content = message.get("content")
    if message.get("role") == "tool":
        return [{"type": "tool_result", "tool_use_id": message.get("tool_call_id", ""), "content": text_of(content)}]
    if isinstance(content, list):
        blocks = list(content)  # OpenAI text parts have Anthropic's shape; native blocks (images) pass through
    else:
        blocks = [{"type": "text", "text": content}] if content else []
    if message.get("role") == "assistant":
        for call in message.get("tool_calls") or ():
            blocks.append({"type": "tool_use", "id": call.get("id", ""),
                           "name": (call.get("function") or {}).get("name", ""),
                           "input": tool_arguments(call, "anthropic")})
    return blocks


def to_anthropic_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI-style turns (including tool calls and tool results) -> Anthropic content blocks."""
    return fold_turns(messages, _blocks)


def to_anthropic_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"name": t["name"], "description": t["description"], "input_schema": t["parameters"]}
            for t in function_tools(tools)]


TOOL_CHOICE = {"auto": "auto", "none": "none", "required": "any", "function": "tool"}
PARAMS = (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k"), ("metadata", "metadata"))


class AnthropicRunner(SseRunner):
    provider = "anthropic"
    family = "anthropic"
    finish_map = FINISH
    options_schema = {"anthropic_version": (str, "2023-06-01"), "default_max_tokens": (int, 1024),
                      "beta": (str, None)}

    def build_request(self, request: InferenceRequest, credential: Secret | None) -> HttpRequest:
        params = request.params
        system, messages = split_system(request.messages)
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": to_anthropic_messages(messages),
            # Anthropic requires max_tokens on every request.
            "max_tokens": params.get("max_tokens") or self.options["default_max_tokens"],
            "stream": request.stream,
        }
        if system:
            payload["system"] = system
        payload.update(renamed_params(params, PARAMS, stop="stop_sequences"))
        if params.get("tools"):
            payload["tools"] = to_anthropic_tools(params["tools"])
        choice = tool_choice(params)
        if choice is not None:
            payload["tool_choice"] = {"type": TOOL_CHOICE[choice[0]], **({"name": choice[1]} if choice[1] else {})}
        auth = {"anthropic-version": self.options["anthropic_version"]}
        if credential is not None:
            auth["x-api-key"] = credential.reveal()
        if self.options["beta"]:
            auth["anthropic-beta"] = self.options["beta"]
        return self.post(self.endpoint + "/messages", auth, payload, request.stream)

    def parse_response(self, body: bytes) -> Delta:
        doc = loads_json(body, self.provider)
        if doc.get("type") == "error":
            return Delta(error=self.stream_error(doc))
        text: list[str] = []
        tools: list[dict[str, Any]] = []
        for block in doc.get("content") or ():
            if block.get("type") == "text":
                text.append(block.get("text", ""))
            elif block.get("type") == "tool_use":
                tools.append(object_tool_call(len(tools), block.get("id"), block.get("name"), block.get("input")))
        finish, raw = self.finish(doc.get("stop_reason"))
        return Delta(text="".join(text), tool_calls=tools, finish_reason=finish, raw_finish_reason=raw,
                     usage=usage_fields(doc.get("usage")), done=True, stop_sequence=doc.get("stop_sequence"))

    def translate(self, event: SseChunk, state: dict[str, Any]) -> list[Delta]:
        kind = event.event
        if kind == "ping":
            return []
        doc = loads_json(event.data, self.provider)
        kind = doc.get("type", kind)
        if kind == "error":
            return [Delta(error=self.stream_error(doc))]
        if kind == "message_start":
            return [Delta(usage=usage_fields((doc.get("message") or {}).get("usage")))]
        if kind == "content_block_start":
            block = doc.get("content_block") or {}
            if block.get("type") == "tool_use":
                return [Delta(tool_calls=[{"index": tool_index(state, doc.get("index", 0)), "id": block.get("id"),
                                           "name": block.get("name"), "arguments": ""}])]
            return []
        if kind == "content_block_delta":
            part = doc.get("delta") or {}
            if part.get("type") == "text_delta":
                return [Delta(text=part.get("text", ""))]
            if part.get("type") == "input_json_delta":
                return [Delta(tool_calls=[{"index": tool_index(state, doc.get("index", 0)),
                                           "arguments": part.get("partial_json", "")}])]
            return []  # thinking, signature and citation deltas carry no answer text
        if kind == "message_delta":
            part = doc.get("delta") or {}
            finish, raw = self.finish(part.get("stop_reason"))
            return [Delta(finish_reason=finish, raw_finish_reason=raw, usage=usage_fields(doc.get("usage")),
                          stop_sequence=part.get("stop_sequence"))]
        if kind == "message_stop":
            return [Delta(done=True)]
        return []
