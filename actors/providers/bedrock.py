"""Amazon Bedrock Converse and ConverseStream: SigV4-signed JSON requests; the stream is the
AWS binary event-stream framing, not SSE, and its failures arrive as exception messages.

The credential is an AWS key pair (see :func:`aws.aws_credentials` for the accepted forms);
the signature is made per attempt, so a retry is never sent with a stale date.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from actors.core.classify import header
from actors.core.credentials import Secret
from actors.errors import (AuthenticationError, BadRequest, ConfigError, InferenceError, NotFound, Overloaded, PermissionDenied, RateLimited, ServerError, StreamError, Timeout)
from actors.types import InferenceRequest
from actors.providers.embeddings import vectors_of
from actors.providers.base import (Delta, FramedStream, HttpRequest, ModelRunner, StreamDecoder, bare_message, bare_message_error, fold_turns, function_tools, loads_json, object_tool_call, plain_text, renamed_params, split_system, tool_arguments, tool_choice, tool_index)
from actors.providers.aws import EventStreamDecoder, amz_date, aws_credentials, sign_v4

PROVIDER = "bedrock"
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
          "model_context_window_exceeded": "length", "tool_use": "tool_calls",
          "guardrail_intervened": "content_filter", "content_filtered": "content_filter"}
INFERENCE_CONFIG = (("max_tokens", "maxTokens"), ("temperature", "temperature"), ("top_p", "topP"))
TOOL_CHOICE: dict[str, dict[str, dict[str, Any]]] = {"auto": {"auto": {}}, "required": {"any": {}}}
# Error types by name: x-amzn-errortype on HTTP errors ("ThrottlingException:http://..."), and
# :exception-type in the stream ("throttlingException"); compared with a lower-case first letter.
EXCEPTIONS: dict[str, type[InferenceError]] = {
    "throttlingException": RateLimited,
    "serviceQuotaExceededException": RateLimited,
    "serviceUnavailableException": Overloaded,
    "modelNotReadyException": Overloaded,
    "internalServerException": ServerError,
    "modelErrorException": ServerError,
    "modelStreamErrorException": StreamError,
    "modelTimeoutException": Timeout,
    "validationException": BadRequest,
    "accessDeniedException": PermissionDenied,
    "resourceNotFoundException": NotFound,
    "unrecognizedClientException": AuthenticationError,
    "invalidSignatureException": AuthenticationError,
    "expiredTokenException": AuthenticationError,
}
# A spent account quota does not come back by retrying.
NOT_RETRYABLE = {"serviceQuotaExceededException"}


def usage_fields(usage: dict[str, Any] | None) -> dict[str, int] | None:
    """Bedrock's inputTokens leaves out cache reads and writes; ours is the whole prompt."""
    if not usage:
        return None
    cached = usage.get("cacheReadInputTokens") or 0
    return {"input_tokens": (usage.get("inputTokens") or 0) + cached + (usage.get("cacheWriteInputTokens") or 0),
            "output_tokens": usage.get("outputTokens") or 0, "cached_input_tokens": cached}


def _blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    """One chat message as Converse content blocks."""
    text = plain_text(message.get("content"), PROVIDER)
    if message.get("role") == "tool":
        return [{"toolResult": {"toolUseId": message.get("tool_call_id", ""), "content": [{"text": text}]}}]
    blocks: list[dict[str, Any]] = [{"text": text}] if text else []  # Converse rejects blank text blocks
    if message.get("role") == "assistant":
        for call in message.get("tool_calls") or ():
            name = (call.get("function") or {}).get("name", "")
            blocks.append({"toolUse": {"toolUseId": call.get("id", ""), "name": name,
                                       "input": tool_arguments(call, PROVIDER)}})
    return blocks


def _exception_name(name: str) -> str:
    name = name.split(":", 1)[0]
    return name[:1].lower() + name[1:]


class BedrockRunner(ModelRunner):
    provider = PROVIDER
    family = "bedrock"
    finish_map = FINISH
    options_schema = {"region": (str, None)}

    def __init__(self, deployment) -> None:
        super().__init__(deployment)
        if not self.options["region"]:
            raise ConfigError("bedrock needs the AWS region that requests are signed for, e.g. us-east-1",
                              path="options.region")

    def build_request(self, request: InferenceRequest, credential: Secret | None) -> HttpRequest:
        credentials = aws_credentials(credential, self.provider)
        params = request.params
        system, messages = split_system(request.messages)
        payload: dict[str, Any] = {"messages": fold_turns(messages, _blocks)}
        if system:
            payload["system"] = [{"text": system}]
        config = renamed_params(params, INFERENCE_CONFIG, stop="stopSequences")
        if config:
            payload["inferenceConfig"] = config
        choice = tool_choice(params)
        # Converse has no "none": leaving the tools out is how a model is kept from calling one.
        if params.get("tools") and (choice is None or choice[0] != "none"):
            tools = [{"toolSpec": {"name": t["name"], "description": t["description"],
                                   "inputSchema": {"json": t["parameters"]}}} for t in function_tools(params["tools"])]
            payload["toolConfig"] = {"tools": tools}
            if choice is not None:
                forced = {"tool": {"name": choice[1]}} if choice[1] else TOOL_CHOICE[choice[0]]
                payload["toolConfig"]["toolChoice"] = forced
        action = "converse-stream" if request.stream else "converse"
        http = self.post(f"{self.endpoint}/model/{quote(self.model, safe='')}/{action}", {}, payload, request.stream,
                         "application/vnd.amazon.eventstream")
        # Host is among the headers signed and set, so the host signed is the host sent.
        http.headers.update(sign_v4("POST", http.url, http.body, credentials, self.options["region"], "bedrock",
                                    amz_date()))
        return http

    def _titan(self) -> bool:
        return "titan-embed" in self.model

    def embed_batch_for(self) -> int:
        # Titan embeds one text per InvokeModel call; Cohere's Embed on Bedrock takes 96.
        return 1 if self._titan() else 96 if "embed" in self.model else 0

    def build_embed_request(self, texts: list[str], params: Any, credential: Secret | None) -> HttpRequest:
        credentials = aws_credentials(credential, self.provider)
        if self._titan():
            payload: dict[str, Any] = {"inputText": texts[0]}
            if params.get("dimensions") is not None:
                payload["dimensions"] = params["dimensions"]
        else:
            if params.get("dimensions") is not None:
                raise BadRequest("dimensions: Cohere Embed on Bedrock has a fixed size", provider=self.provider)
            payload = {"texts": texts, "input_type": params.get("input_type") or "search_document",
                       "embedding_types": ["float"]}
        http = self.post(f"{self.endpoint}/model/{quote(self.model, safe='')}/invoke", {}, payload, False)
        http.headers.update(sign_v4("POST", http.url, http.body, credentials, self.options["region"], "bedrock",
                                    amz_date()))
        return http

    def parse_embed_response(self, body: bytes, texts: list[str]) -> Delta:
        doc = loads_json(body, self.provider)
        if self._titan():
            count = doc.get("inputTextTokenCount")
            return Delta(embeddings=vectors_of([doc.get("embedding")], len(texts), self.provider),
                         usage={"input_tokens": int(count)} if isinstance(count, int) else None)
        vectors = doc.get("embeddings")
        if isinstance(vectors, dict):
            vectors = vectors.get("float")
        return Delta(embeddings=vectors_of(vectors, len(texts), self.provider))   # no usage in the body

    def parse_response(self, body: bytes) -> Delta:
        doc = loads_json(body, self.provider)
        text: list[str] = []
        tools: list[dict[str, Any]] = []
        for block in ((doc.get("output") or {}).get("message") or {}).get("content") or ():
            if "text" in block:
                text.append(block["text"])
            elif "toolUse" in block:
                use = block["toolUse"]
                tools.append(object_tool_call(len(tools), use.get("toolUseId"), use.get("name"), use.get("input")))
        finish, raw = self.finish(doc.get("stopReason"))
        return Delta(text="".join(text), tool_calls=tools, finish_reason=finish, raw_finish_reason=raw,
                     usage=usage_fields(doc.get("usage")), done=True)

    def stream_decoder(self) -> StreamDecoder:
        return FramedStream(EventStreamDecoder(self.provider, self.deployment.response_limits.max_line_bytes),
                            self.translate)

    def translate(self, message: tuple[dict[str, Any], bytes], state: dict[str, Any]) -> list[Delta]:
        headers, payload = message
        kind = headers.get(":message-type")
        if kind == "exception":
            return [Delta(error=self.error_of(headers.get(":exception-type", ""), bare_message(payload) or ""))]
        if kind == "error":  # a failure of the stream itself, named in headers
            return [Delta(error=self.error_of(headers.get(":error-code", ""), headers.get(":error-message", "")))]
        doc = loads_json(payload, self.provider)
        event = headers.get(":event-type")
        if event == "contentBlockStart":
            use = (doc.get("start") or {}).get("toolUse")
            if use:
                return [Delta(tool_calls=[{"index": tool_index(state, doc.get("contentBlockIndex", 0)),
                                           "id": use.get("toolUseId"), "name": use.get("name"), "arguments": ""}])]
        elif event == "contentBlockDelta":
            part = doc.get("delta") or {}
            if "text" in part:
                return [Delta(text=part["text"])]
            if "toolUse" in part:
                return [Delta(tool_calls=[{"index": tool_index(state, doc.get("contentBlockIndex", 0)),
                                           "arguments": part["toolUse"].get("input") or ""}])]
        elif event == "messageStop":
            finish, raw = self.finish(doc.get("stopReason"))
            return [Delta(finish_reason=finish, raw_finish_reason=raw)]
        elif event == "metadata":
            return [Delta(usage=usage_fields(doc.get("usage")), done=True)]
        # messageStart, contentBlockStop and reasoning deltas carry no answer.
        return []

    def error_of(self, name: str, message: str, status: int | None = None,
                 headers: Mapping[str, str] | None = None) -> InferenceError:
        """A typed error from an AWS error type name (HTTP or in-stream) and its message."""
        name = _exception_name(name)
        error = bare_message_error(status, headers, message or name or "bedrock error", self.provider,
                                   EXCEPTIONS.get(name))
        if name in NOT_RETRYABLE:
            error.retryable = False
        return error

    def classify_error(self, status: int, headers: Mapping[str, str], body: bytes) -> InferenceError:
        name = header(headers, "x-amzn-errortype") or ""
        message = bare_message(body)
        if message is None and not name:
            return super().classify_error(status, headers, body)
        return self.error_of(name, message or "", status, headers)
