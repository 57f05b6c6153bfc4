"""OpenAI Responses API: ``input`` items instead of messages, and a stream of named, sequenced events.

Authentication, options and the base URL are the Chat Completions runner's.
"""

from __future__ import annotations

from typing import Any

from actors.core.classify import classify_error_body, redact
from actors.core.credentials import Secret
from actors.errors import BadRequest, InferenceError, ServerError, StreamError, Timeout
from actors.types import InferenceRequest
from actors.providers.base import (Delta, HttpRequest, function_tools, loads_json, plain_text, split_system, tool_choice, tool_index)
from actors.core.sse import SseChunk
from actors.providers.openai import OpenAIChatRunner, usage_fields

PROVIDER = "openai_responses"
# Raw finish values: the response status, or for an incomplete response the reason it stopped.
FINISH = {"completed": "stop", "max_output_tokens": "length", "content_filter": "content_filter"}
LOGPROBS_INCLUDE = "message.output_text.logprobs"   # what include[] asks for to get log probabilities
PASS_THROUGH = ("temperature", "top_p", "parallel_tool_calls", "metadata", "user", "service_tier")
# Codes of a failed response that are the service's fault; every other code names a problem
# with the request (invalid_prompt, the image_* family).
SERVICE_ERRORS: dict[str, type[InferenceError]] = {"server_error": ServerError, "vector_store_timeout": Timeout}


def to_input(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages (system split off) -> Responses input items; tool traffic becomes items of its own."""
    items: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        text = plain_text(m.get("content"), PROVIDER)
        if role == "tool":
            items.append({"type": "function_call_output", "call_id": m.get("tool_call_id", ""), "output": text})
            continue
        if role != "assistant":
            items.append({"role": "user", "content": text})
            continue
        if text:
            items.append({"role": "assistant", "content": text})
        for call in m.get("tool_calls") or ():
            function = call.get("function") or {}
            items.append({"type": "function_call", "call_id": call.get("id", ""), "name": function.get("name", ""),
                          "arguments": function.get("arguments") or "{}"})
    return items


def _logprob(item: dict[str, Any]) -> dict[str, Any]:
    token = str(item.get("token", ""))
    raw = item.get("bytes")
    return {"token": token, "logprob": float(item.get("logprob") or 0.0),
            "bytes": raw if isinstance(raw, list) else list(token.encode())}


def logprob_items(items: Any) -> list[dict[str, Any]] | None:
    """An ``output_text`` part's (or a text delta's) ``logprobs`` as Chat's ``logprobs.content`` items.

    Whole answers carry ``bytes`` with each token; stream events may not: they are derived."""
    if not isinstance(items, list):
        return None
    out = [{**_logprob(x), "top_logprobs": [_logprob(t) for t in x.get("top_logprobs") or () if isinstance(t, dict)]}
           for x in items if isinstance(x, dict)]
    return out or None


class OpenAIResponsesRunner(OpenAIChatRunner):
    provider = PROVIDER
    family = "openai"
    finish_map = FINISH
    # Responses are stored for 30 days unless told otherwise; a gateway keeps no state upstream.
    options_schema = {**OpenAIChatRunner.options_schema, "store": (bool, False)}
    path = "/responses"
    # Log probabilities are asked for with include[] (and top_logprobs); there is no n.
    features = frozenset({"logprobs"})

    def build_request(self, request: InferenceRequest, credential: Secret | None) -> HttpRequest:
        params = request.params
        if params.get("stop"):
            raise BadRequest("the Responses API has no stop sequences", provider=self.provider)
        instructions, messages = split_system(request.messages)
        payload: dict[str, Any] = {"model": self.model, "input": to_input(messages), "stream": request.stream,
                                   "store": self.options["store"]}
        if instructions:
            payload["instructions"] = instructions
        max_tokens = params.get("max_tokens", params.get("max_completion_tokens"))
        if max_tokens is not None:
            payload["max_output_tokens"] = max_tokens
        payload.update({k: params[k] for k in PASS_THROUGH if k in params})
        if params.get("reasoning_effort"):
            payload["reasoning"] = {"effort": params["reasoning_effort"]}
        if params.get("logprobs"):
            payload["include"] = [LOGPROBS_INCLUDE]
            if params.get("top_logprobs") is not None:
                payload["top_logprobs"] = params["top_logprobs"]
        if params.get("response_format"):
            fmt = params["response_format"]  # chat nests the schema under json_schema; Responses flattens it
            payload["text"] = {"format": {"type": fmt.get("type"), **(fmt.get("json_schema") or {})}}
        if params.get("tools"):
            payload["tools"] = [{"type": "function", **tool} for tool in function_tools(params["tools"])]
        choice = tool_choice(params)
        if choice is not None:
            payload["tool_choice"] = {"type": "function", "name": choice[1]} if choice[1] else choice[0]
        return self.post(self.url(), self.auth_headers(credential), payload, request.stream)

    def parse_response(self, body: bytes) -> Delta:
        doc = loads_json(body, self.provider)
        text: list[str] = []
        tools: list[dict[str, Any]] = []
        logprobs: list[dict[str, Any]] = []
        for item in doc.get("output") or ():
            if item.get("type") == "message":
                parts = [p for p in item.get("content") or () if p.get("type") == "output_text"]
                text += [p.get("text", "") for p in parts]
                logprobs += [x for p in parts for x in logprob_items(p.get("logprobs")) or ()]
            elif item.get("type") == "function_call":
                tools.append({"index": len(tools), "id": item.get("call_id"), "name": item.get("name"),
                              "arguments": item.get("arguments") or ""})
        return self._final(doc, Delta(text="".join(text), tool_calls=tools, logprobs=logprobs or None), bool(tools))

    def translate(self, event: SseChunk, state: dict[str, Any]) -> list[Delta]:
        doc = loads_json(event.data, self.provider)
        kind = doc.get("type", event.event)
        if kind == "response.output_text.delta":
            return [Delta(text=doc.get("delta", ""), logprobs=logprob_items(doc.get("logprobs")))]
        if kind == "response.output_item.added":
            item = doc.get("item") or {}
            if item.get("type") != "function_call":
                return []
            return [Delta(tool_calls=[{"index": tool_index(state, item.get("id")), "id": item.get("call_id"),
                                       "name": item.get("name"), "arguments": item.get("arguments") or ""}])]
        if kind == "response.function_call_arguments.delta":
            return [Delta(tool_calls=[{"index": tool_index(state, doc.get("item_id")),
                                       "arguments": doc.get("delta", "")}])]
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            return [self._final(doc.get("response") or {}, Delta(), bool(state.get("tool_index")))]
        if kind == "error":
            return [Delta(error=self.stream_error(doc))]
        # Lifecycle, reasoning, refusal and *.done events repeat or annotate what was already sent.
        return []

    def _final(self, response: dict[str, Any], delta: Delta, called_tools: bool) -> Delta:
        """Complete the Delta that ends a response: usage, then the finish reason or the failure."""
        delta.usage = usage_fields(response.get("usage"), "input_tokens", "output_tokens")
        delta.done = True
        if response.get("status") == "failed" or response.get("error"):
            delta.error = self.stream_error({"error": response.get("error") or {"message": "response failed"}})
            return delta
        status = response.get("status")
        raw = (response.get("incomplete_details") or {}).get("reason") if status == "incomplete" else status
        delta.finish_reason, delta.raw_finish_reason = self.finish(raw)
        if called_tools and delta.finish_reason == "stop":
            delta.finish_reason = "tool_calls"  # the API reports "completed" either way
        return delta

    def stream_error(self, payload: Any) -> InferenceError:
        error = classify_error_body(payload, None, self.provider)
        if error is not None:
            return error
        err = payload.get("error") if isinstance(payload.get("error"), dict) else payload
        code, message = str(err.get("code") or ""), redact(str(err.get("message") or "response failed"))
        cls = SERVICE_ERRORS.get(code) or (BadRequest if code else StreamError)
        return cls(f"{code}: {message}" if code else message, provider=self.provider)
