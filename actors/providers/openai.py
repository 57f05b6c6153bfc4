"""OpenAI Chat Completions, and the endpoints that speak it: Azure OpenAI and any
OpenAI-compatible gateway (LiteLLM proxy, vLLM, an internal gateway)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar
from urllib.parse import quote

from actors.core.credentials import Secret
from actors.errors import ConfigError
from actors.types import Choice, InferenceRequest, ToolCall
from actors.providers.base import Delta, HttpRequest, SseRunner, loads_json
from actors.providers.embeddings import vectors_of
from actors.core.sse import SseChunk

# Generation parameters passed through unchanged when the caller sets them.
PASS_THROUGH = ("temperature", "top_p", "stop", "tools", "tool_choice", "seed", "presence_penalty",
                "frequency_penalty", "response_format", "user", "logit_bias", "parallel_tool_calls",
                "reasoning_effort", "metadata", "logprobs", "top_logprobs", "n")
EMBED_PASS_THROUGH = ("dimensions", "user")

FINISH = {"stop": "stop", "length": "length", "tool_calls": "tool_calls", "function_call": "tool_calls",
          "content_filter": "content_filter"}


def usage_fields(usage: dict[str, Any] | None, input_key: str = "prompt_tokens",
                 output_key: str = "completion_tokens") -> dict[str, int] | None:
    """OpenAI counts cached tokens inside the prompt and reasoning inside the output, as we do.

    Chat Completions names them prompt/completion_tokens, the Responses API input/output_tokens.
    """
    if not usage:
        return None
    return {
        "input_tokens": usage.get(input_key) or 0,
        "output_tokens": usage.get(output_key) or 0,
        "cached_input_tokens": (usage.get(input_key + "_details") or {}).get("cached_tokens") or 0,
        "reasoning_tokens": (usage.get(output_key + "_details") or {}).get("reasoning_tokens") or 0,
    }


def tool_call_deltas(calls: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    out = []
    for i, call in enumerate(calls or ()):
        function = call.get("function") or {}
        out.append({"index": call.get("index", i), "id": call.get("id"), "name": function.get("name"),
                    "arguments": function.get("arguments") or ""})
    return out


def logprob_items(logprobs: dict[str, Any] | None) -> list[dict[str, Any]] | None:
    """A choice's ``logprobs.content`` (one item per token), or None when there are none."""
    content = (logprobs or {}).get("content") if isinstance(logprobs, dict) else None
    return [item for item in content if isinstance(item, dict)] or None if isinstance(content, list) else None


def stop_named(choice: dict[str, Any]) -> str | None:
    """The stop string that ended a choice, where the server says which (vLLM's ``stop_reason``;
    OpenAI itself never does, and an integer there is a stop token, not a sequence)."""
    named = choice.get("stop_reason")
    return named if choice.get("finish_reason") == "stop" and isinstance(named, str) and named else None


class OpenAIChatRunner(SseRunner):
    provider = "openai"
    family: ClassVar[str | None] = "openai"   # None in OpenAICompatibleRunner
    finish_map = FINISH
    options_schema = {"organization": (str, None), "project": (str, None)}
    path = "/chat/completions"
    embeddings_path = "/embeddings"
    features = frozenset({"logprobs", "n"})
    embed_batch = 2048   # OpenAI: at most 2048 inputs per embeddings request
    # OpenAI deprecated max_tokens for max_completion_tokens; compatible servers still want the old name.
    max_tokens_field = "max_completion_tokens"

    def url(self) -> str:
        return self.endpoint + self.path

    def auth_headers(self, credential: Secret | None) -> dict[str, str]:
        headers = {}
        if credential is not None:
            headers["authorization"] = f"Bearer {credential.reveal()}"
        if self.options.get("organization"):
            headers["openai-organization"] = self.options["organization"]
        if self.options.get("project"):
            headers["openai-project"] = self.options["project"]
        return headers

    def build_request(self, request: InferenceRequest, credential: Secret | None) -> HttpRequest:
        params = request.params
        payload: dict[str, Any] = {"model": self.model, "messages": request.messages, "stream": request.stream}
        if request.stream:
            payload["stream_options"] = {"include_usage": True}  # without it, streams carry no usage
        max_tokens = params.get("max_tokens", params.get("max_completion_tokens"))
        if max_tokens is not None:
            payload[self.max_tokens_field] = max_tokens
        payload.update({k: params[k] for k in PASS_THROUGH if k in params})
        return self.post(self.url(), self.auth_headers(credential), payload, request.stream)

    def parse_response(self, body: bytes) -> Delta:
        doc = loads_json(body, self.provider)
        if "error" in doc:
            return Delta(error=self.stream_error(doc))
        choices = sorted(doc.get("choices") or [{}], key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0)
        choice = choices[0]
        message = choice.get("message") or {}
        finish, raw = self.finish(choice.get("finish_reason"))
        more: list[Choice] = []
        for other in choices[1:]:
            said = other.get("message") or {}
            calls = [ToolCall(int(c.get("index", i)), c.get("id") or "", c.get("name") or "", c.get("arguments") or "")
                     for i, c in enumerate(tool_call_deltas(said.get("tool_calls")))]
            more.append(Choice(int(other.get("index", len(more) + 1)), said.get("content") or "",
                               self.finish(other.get("finish_reason"))[0] or "stop", calls,
                               logprob_items(other.get("logprobs"))))
        return Delta(text=message.get("content") or "", tool_calls=tool_call_deltas(message.get("tool_calls")),
                     finish_reason=finish, raw_finish_reason=raw, usage=usage_fields(doc.get("usage")),
                     done=True, logprobs=logprob_items(choice.get("logprobs")), choices=more,
                     stop_sequence=stop_named(choice))

    def embeddings_url(self) -> str:
        return self.endpoint + self.embeddings_path

    def embed_encoding(self) -> str:
        """How vectors are asked for upstream: base64 (little-endian float32) is half the bytes of
        JSON numbers and far cheaper to read; the answer is read either way (vectors_of)."""
        return "base64"

    def build_embed_request(self, texts: list[str], params: Any, credential: Secret | None) -> HttpRequest:
        payload: dict[str, Any] = {"model": self.model, "input": texts, "encoding_format": self.embed_encoding()}
        payload.update({k: params[k] for k in EMBED_PASS_THROUGH if params.get(k) is not None})
        return self.post(self.embeddings_url(), self.auth_headers(credential), payload, False)

    def parse_embed_response(self, body: bytes, texts: list[str]) -> Delta:
        doc = loads_json(body, self.provider)
        if not isinstance(doc, dict):
            return Delta(error=self.stream_error({"error": {"message": "not an embeddings response"}}))
        if "error" in doc:
            return Delta(error=self.stream_error(doc))
        data = sorted(doc.get("data") or [], key=lambda d: d.get("index", 0) if isinstance(d, dict) else 0)
        return Delta(embeddings=vectors_of(data, len(texts), self.provider),
                     usage=usage_fields(doc.get("usage")))

    def translate(self, event: SseChunk, state: dict[str, Any]) -> list[Delta]:
        if event.data == "[DONE]":
            return [Delta(done=True)]
        doc = loads_json(event.data, self.provider)
        if "error" in doc:
            return [Delta(error=self.stream_error(doc))]
        delta = Delta(usage=usage_fields(doc.get("usage")))
        for choice in doc.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue  # n > 1 is not supported; choice 0 is the answer
            part = choice.get("delta") or {}
            delta.text = part.get("content") or ""
            delta.tool_calls = tool_call_deltas(part.get("tool_calls"))
            delta.logprobs = logprob_items(choice.get("logprobs"))
            delta.finish_reason, delta.raw_finish_reason = self.finish(choice.get("finish_reason"))
            delta.stop_sequence = stop_named(choice)
        return [delta]


def _flattened(message: dict[str, Any]) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return {**message, "content": "\n\n".join(str(p.get("text", "")) for p in content)}
    return message


class OpenAICompatibleRunner(OpenAIChatRunner):
    """LiteLLM proxy, vLLM, an internal gateway: same wire format, configurable auth and path."""

    provider = "openai_compatible"
    family = None   # a gateway (LiteLLM, vLLM, ...) may serve any model
    max_tokens_field = "max_tokens"
    options_schema = {"auth_header": (str, "authorization"), "auth_scheme": (str, "Bearer"),
                      "path": (str, "/chat/completions"), "embeddings_path": (str, "/embeddings"),
                      "embed_batch": (int, 2048), "embeddings_encoding": (str, "float")}

    def __init__(self, deployment) -> None:
        super().__init__(deployment)
        if self.options["embeddings_encoding"] not in ("float", "base64"):
            raise ConfigError(f"expected 'float' or 'base64', got {self.options['embeddings_encoding']!r}",
                              path="options.embeddings_encoding")
        if self.options["embed_batch"] < 1:
            raise ConfigError(f"expected a positive number of texts, got {self.options['embed_batch']}",
                              path="options.embed_batch")

    def url(self) -> str:
        return self.endpoint + self.options["path"]

    def embed_encoding(self) -> str:
        # Not every compatible server takes base64 (it is the faster choice where one does).
        return self.options["embeddings_encoding"]

    def embeddings_url(self) -> str:
        return self.endpoint + self.options["embeddings_path"]

    def embed_batch_for(self) -> int:
        return self.options["embed_batch"]

    def build_request(self, request: InferenceRequest, credential: Secret | None) -> HttpRequest:
        # Many compatible servers (llama.cpp's among them) take a message's content as a string
        # only: text parts are joined; a list with other parts is passed on as it is.
        messages = [_flattened(m) for m in request.messages]
        if any(a is not b for a, b in zip(messages, request.messages)):
            request = dataclasses.replace(request, messages=messages)
        return super().build_request(request, credential)

    def auth_headers(self, credential: Secret | None) -> dict[str, str]:
        if credential is None:
            return {}
        scheme = self.options["auth_scheme"]
        value = f"{scheme} {credential.reveal()}" if scheme else credential.reveal()
        return {self.options["auth_header"].lower(): value}


class AzureOpenAIRunner(OpenAIChatRunner):
    """Azure routes by deployment name in the URL and authenticates with ``api-key`` or an Entra token."""

    provider = "azure_openai"
    family = "openai"
    max_tokens_field = "max_tokens"
    options_schema = {"api_version": (str, "2024-10-21"), "azure_deployment": (str, None),
                      "auth": (str, "api-key")}

    def __init__(self, deployment) -> None:
        super().__init__(deployment)
        if self.options["auth"] not in ("api-key", "bearer"):
            raise ConfigError("expected 'api-key' or 'bearer'", path="options.auth")

    def url(self, operation: str = "chat/completions") -> str:
        deployment = quote(self.options["azure_deployment"] or self.model, safe="")
        return (f"{self.endpoint}/openai/deployments/{deployment}/{operation}"
                f"?api-version={quote(self.options['api_version'], safe='')}")

    def embeddings_url(self) -> str:
        return self.url("embeddings")

    def auth_headers(self, credential: Secret | None) -> dict[str, str]:
        if credential is None:
            return {}
        if self.options["auth"] == "bearer":
            return {"authorization": f"Bearer {credential.reveal()}"}
        return {"api-key": credential.reveal()}
