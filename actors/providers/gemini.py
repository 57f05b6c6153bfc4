"""Google Gemini: ``generateContent`` and ``streamGenerateContent?alt=sse``.

The Gemini API (AI Studio) takes its key in the ``x-goog-api-key`` header, never in the URL,
where proxies and access logs would keep it. With ``auth: bearer`` and an endpoint ending in
``.../locations/{region}/publishers/google`` the same runner speaks to Vertex AI.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from actors.core.credentials import Secret
from actors.errors import BadRequest, ConfigError, ContentFiltered, InferenceError
from actors.types import Choice, InferenceRequest
from actors.providers.embeddings import vectors_of
from actors.providers.base import (Delta, HttpRequest, SseRunner, fold_turns, function_tools, json_or_none, loads_json, object_tool_call, plain_text, renamed_params, split_system, tool_arguments, tool_choice)
from actors.core.sse import SseChunk

PROVIDER = "gemini"
FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "SAFETY": "content_filter", "RECITATION": "content_filter",
          "BLOCKLIST": "content_filter", "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter",
          "IMAGE_SAFETY": "content_filter", "MALFORMED_FUNCTION_CALL": "error"}
GENERATION_CONFIG = (("max_tokens", "maxOutputTokens"), ("temperature", "temperature"), ("top_p", "topP"),
                     ("top_k", "topK"), ("seed", "seed"), ("presence_penalty", "presencePenalty"),
                     ("frequency_penalty", "frequencyPenalty"))
TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY", "function": "ANY"}


def usage_fields(meta: dict[str, Any] | None) -> dict[str, int] | None:
    """``usageMetadata`` is a running total on every chunk, so it is reported, never summed.

    The prompt count already includes cached content; thinking tokens are billed as output
    but counted apart from the candidates, and tool-use prompts (e.g. search results) as input.
    """
    if not meta:
        return None
    thoughts = meta.get("thoughtsTokenCount") or 0
    return {"input_tokens": (meta.get("promptTokenCount") or 0) + (meta.get("toolUsePromptTokenCount") or 0),
            "output_tokens": (meta.get("candidatesTokenCount") or 0) + thoughts,
            "cached_input_tokens": meta.get("cachedContentTokenCount") or 0,
            "reasoning_tokens": thoughts}


def to_contents(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages (system split off) -> Gemini contents with roles user and model."""
    # A function response is matched by name, which an OpenAI-style tool message does not carry.
    names = {call.get("id"): (call.get("function") or {}).get("name", "")
             for m in messages if m.get("role") == "assistant" for call in m.get("tool_calls") or ()}

    def parts(m: dict[str, Any]) -> list[dict[str, Any]]:
        text = plain_text(m.get("content"), PROVIDER)
        if m.get("role") == "tool":
            if m.get("tool_call_id") not in names:
                raise BadRequest(f"tool result {m.get('tool_call_id')!r} answers no tool call", provider=PROVIDER)
            return [{"functionResponse": {"name": names[m["tool_call_id"]], "response": _response_object(text)}}]
        if m.get("role") != "assistant":
            return [{"text": text}]
        out: list[dict[str, Any]] = [{"text": text}] if text else []
        for call in m.get("tool_calls") or ():
            out.append({"functionCall": {"name": (call.get("function") or {}).get("name", ""),
                                         "args": tool_arguments(call, PROVIDER)}})
        return out

    return fold_turns(messages, parts, assistant="model", key="parts")


def _response_object(text: str) -> dict[str, Any]:
    """A tool's output as the object Gemini wants: JSON objects as they are, anything else under "output"."""
    value = json_or_none(text)
    if isinstance(value, dict):
        return value
    return {"output": text if value is None else value}


def _retry_delay(body: bytes) -> float | None:
    """Google sends its Retry-After in the body: a RetryInfo detail with ``retryDelay: "33s"``."""
    doc = json_or_none(body)
    doc = doc[0] if isinstance(doc, list) and doc else doc
    details = (doc.get("error") or {}).get("details") if isinstance(doc, dict) else None
    for detail in details if isinstance(details, list) else ():
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                seconds = float(delay[:-1])
            except ValueError:
                return None
            return seconds if math.isfinite(seconds) and seconds >= 0 else None
    return None


def _logprob_items(result: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """A candidate's ``logprobsResult`` as OpenAI's ``logprobs.content`` items."""
    if not isinstance(result, dict):
        return None
    chosen = result.get("chosenCandidates") or []
    tops = result.get("topCandidates") or []

    def item(c: dict[str, Any]) -> dict[str, Any]:
        token = str(c.get("token", ""))
        return {"token": token, "logprob": float(c.get("logProbability") or 0.0), "bytes": list(token.encode())}

    out = []
    for i, c in enumerate(chosen):
        top = tops[i].get("candidates") if i < len(tops) and isinstance(tops[i], dict) else []
        out.append({**item(c), "top_logprobs": [item(t) for t in top or ()]})
    return out or None


class GeminiRunner(SseRunner):
    provider = PROVIDER
    family = "gemini"
    finish_map = FINISH
    options_schema = {"auth": (str, "api-key"), "safety_settings": (list, None)}
    features = frozenset({"logprobs", "n"})
    embed_batch = 100   # batchEmbedContents: at most 100 requests per batch

    def __init__(self, deployment) -> None:
        super().__init__(deployment)
        if self.options["auth"] not in ("api-key", "bearer"):
            raise ConfigError("expected 'api-key' or 'bearer'", path="options.auth")
        self.model = self.model.removeprefix("models/")

    def build_request(self, request: InferenceRequest, credential: Secret | None) -> HttpRequest:
        params = request.params
        system, messages = split_system(request.messages)
        payload: dict[str, Any] = {"contents": to_contents(messages)}
        if system:
            payload["systemInstruction"] = {"parts": [{"text": system}]}
        config = renamed_params(params, GENERATION_CONFIG, stop="stopSequences")
        if isinstance(params.get("n"), int) and params["n"] > 1:
            config["candidateCount"] = params["n"]
        if params.get("logprobs") or params.get("top_logprobs"):
            config["responseLogprobs"] = True
            if params.get("top_logprobs"):
                config["logprobs"] = params["top_logprobs"]
        if config:
            payload["generationConfig"] = config
        if params.get("tools"):
            payload["tools"] = [{"functionDeclarations": [
                {"name": t["name"], "description": t["description"], "parameters": t["parameters"]}
                for t in function_tools(params["tools"])]}]
        choice = tool_choice(params)
        if choice is not None:
            mode = {"mode": TOOL_MODES[choice[0]], **({"allowedFunctionNames": [choice[1]]} if choice[1] else {})}
            payload["toolConfig"] = {"functionCallingConfig": mode}
        if self.options["safety_settings"]:
            payload["safetySettings"] = self.options["safety_settings"]
        method = "streamGenerateContent?alt=sse" if request.stream else "generateContent"
        return self.post(self._url(method), self._auth(credential), payload, request.stream)

    def _url(self, method: str) -> str:
        return f"{self.endpoint}/models/{quote(self.model, safe='-._~')}:{method}"

    def _auth(self, credential: Secret | None) -> dict[str, str]:
        if credential is None:
            return {}
        key = credential.reveal()
        return {"authorization": f"Bearer {key}"} if self.options["auth"] == "bearer" else {"x-goog-api-key": key}

    def build_embed_request(self, texts: list[str], params: Any, credential: Secret | None) -> HttpRequest:
        extra: dict[str, Any] = {}
        if params.get("dimensions") is not None:
            extra["outputDimensionality"] = params["dimensions"]
        if params.get("task_type"):
            extra["taskType"] = params["task_type"]
        requests = [{"model": f"models/{self.model}", "content": {"parts": [{"text": t}]}, **extra} for t in texts]
        return self.post(self._url("batchEmbedContents"), self._auth(credential), {"requests": requests}, False)

    def parse_embed_response(self, body: bytes, texts: list[str]) -> Delta:
        doc = loads_json(body, self.provider)
        if "error" in doc:
            return Delta(error=self.stream_error(doc))
        meta = doc.get("usageMetadata") or {}
        # batchEmbedContents reports no usage today; a promptTokenCount is taken when present.
        usage = {"input_tokens": int(meta["promptTokenCount"])} if "promptTokenCount" in meta else None
        return Delta(embeddings=vectors_of(doc.get("embeddings"), len(texts), self.provider, key="values"),
                     usage=usage)

    def classify_error(self, status: int, headers: Mapping[str, str], body: bytes) -> InferenceError:
        error = super().classify_error(status, headers, body)
        if error.retry_after_s is None:
            error.retry_after_s = _retry_delay(body)
        return error

    def parse_response(self, body: bytes) -> Delta:
        delta = self._delta(loads_json(body, self.provider), {})
        delta.done = True
        return delta

    def translate(self, event: SseChunk, state: dict[str, Any]) -> list[Delta]:
        # Every event is a whole GenerateContentResponse; the stream ends without a marker.
        return [self._delta(loads_json(event.data, self.provider), state)]

    def _delta(self, doc: dict[str, Any], state: dict[str, Any]) -> Delta:
        if "error" in doc:
            return Delta(error=self.stream_error(doc))
        delta = Delta(usage=usage_fields(doc.get("usageMetadata")))
        blocked = (doc.get("promptFeedback") or {}).get("blockReason")
        if blocked:
            delta.error = ContentFiltered(f"the prompt was blocked: {blocked}", reason=blocked, provider=self.provider)
            return delta
        candidates = doc.get("candidates") or [{}]
        candidate = candidates[0]
        delta.logprobs = _logprob_items(candidate.get("logprobsResult"))
        for other in candidates[1:]:
            parts = (other.get("content") or {}).get("parts") or ()
            delta.choices.append(Choice(int(other.get("index", len(delta.choices) + 1)),
                                        "".join(p.get("text", "") for p in parts if not p.get("thought")),
                                        self.finish(other.get("finishReason"))[0] or "stop", [],
                                        _logprob_items(other.get("logprobsResult"))))
        for part in (candidate.get("content") or {}).get("parts") or ():
            if part.get("thought"):
                continue  # a thought summary, not the answer
            if "functionCall" in part:
                call, index = part["functionCall"], state.get("calls", 0)
                state["calls"] = index + 1
                # Gemini calls carry no id unless the API adds one; this one is stable across retries.
                delta.tool_calls.append(object_tool_call(index, call.get("id") or f"call_{index}_{call.get('name')}",
                                                         call.get("name"), call.get("args")))
            else:
                delta.text += part.get("text", "")
        delta.finish_reason, delta.raw_finish_reason = self.finish(candidate.get("finishReason"))
        if delta.finish_reason == "stop" and state.get("calls"):
            delta.finish_reason = "tool_calls"  # Gemini says STOP after a function call
        return delta
