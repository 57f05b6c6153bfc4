"""OpenAI Chat Completions, and the endpoints that speak it: Azure OpenAI and any
OpenAI-compatible gateway (LiteLLM proxy, vLLM, an internal gateway)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from actors.core.credentials import Secret
from actors.errors import ConfigError
from actors.types import InferenceRequest
from actors.providers.base import Delta, HttpRequest, SseRunner, loads_json
from actors.core.sse import SseChunk

# Generation parameters passed through unchanged when the caller sets them.
PASS_THROUGH = ("temperature", "top_p", "stop", "tools", "tool_choice", "seed", "presence_penalty",
                "frequency_penalty", "response_format", "user", "logit_bias", "parallel_tool_calls",
                "reasoning_effort", "metadata")

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


class OpenAIChatRunner(SseRunner):
    provider = "openai"
    family = "openai"
    finish_map = FINISH
    options_schema = {"organization": (str, None), "project": (str, None)}
    path = "/chat/completions"
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
        choice = (doc.get("choices") or [{}])[0]
        message = choice.get("message") or {}
        finish, raw = self.finish(choice.get("finish_reason"))
        return Delta(text=message.get("content") or "", tool_calls=tool_call_deltas(message.get("tool_calls")),
                     finish_reason=finish, raw_finish_reason=raw, usage=usage_fields(doc.get("usage")),
                     done=True)

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
            delta.finish_reason, delta.raw_finish_reason = self.finish(choice.get("finish_reason"))
        return [delta]


class OpenAICompatibleRunner(OpenAIChatRunner):
    """LiteLLM proxy, vLLM, an internal gateway: same wire format, configurable auth and path."""

    provider = "openai_compatible"
    family = None   # a gateway (LiteLLM, vLLM, ...) may serve any model
    max_tokens_field = "max_tokens"
    options_schema = {"auth_header": (str, "authorization"), "auth_scheme": (str, "Bearer"),
                      "path": (str, "/chat/completions")}

    def url(self) -> str:
        return self.endpoint + self.options["path"]

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

    def url(self) -> str:
        deployment = quote(self.options["azure_deployment"] or self.model, safe="")
        return (f"{self.endpoint}/openai/deployments/{deployment}/chat/completions"
                f"?api-version={quote(self.options['api_version'], safe='')}")

    def auth_headers(self, credential: Secret | None) -> dict[str, str]:
        if credential is None:
            return {}
        if self.options["auth"] == "bearer":
            return {"authorization": f"Bearer {credential.reveal()}"}
        return {"api-key": credential.reveal()}
