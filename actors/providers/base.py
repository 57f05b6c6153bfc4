"""The provider runner contract, and the shared machinery every runner reuses.

A runner is thin: it turns an :class:`InferenceRequest` into an :class:`HttpRequest`,
a response body into a :class:`Delta`, and stream events into Deltas. Transport,
retries, breakers, limits, sessions and SSE framing live in the core.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from actors.core.classify import classify_error_body, classify_http_status, redact
from actors.settings.schema import DeploymentConfig
from actors.core.pricing import Price
from actors.core.credentials import Secret
from actors.errors import BadRequest, ConfigError, InferenceError, StreamError
from actors.types import Choice, InferenceRequest, ToolCall, Usage
from actors.core.sse import SseChunk, SseDecoder

__all__ = [
    "HttpRequest", "Delta", "StreamDecoder", "ModelRunner", "SseRunner", "StreamAccumulator", "FramedStream",
    "FINISH_REASONS", "json_body", "loads_json", "split_system", "text_of", "compact_json", "plain_text",
    "function_tools", "tool_arguments", "tool_choice", "fold_turns", "tool_index", "object_tool_call",
    "renamed_params", "json_or_none", "bare_message", "bare_message_error",
]

FINISH_REASONS = ("stop", "length", "tool_calls", "content_filter", "error")


@dataclass
class HttpRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    stream: bool

    def __repr__(self) -> str:
        # Headers carry credentials: never show them.
        return f"HttpRequest({self.method} {self.url}, stream={self.stream}, {len(self.body)} bytes)"


@dataclass
class Delta:
    """A normalised piece of output. ``usage`` holds the totals reported so far (absolute, not increments)."""

    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str | None = None
    raw_finish_reason: str | None = None
    usage: dict[str, int] | None = None
    error: InferenceError | None = None
    done: bool = False
    logprobs: list[dict[str, Any]] | None = None     # OpenAI's logprobs.content items for this text
    choices: list[Choice] = field(default_factory=list)   # choices 1..n-1 (n > 1, whole responses only)
    embeddings: list[list[float]] | None = None      # an embeddings response: one vector per input
    stop_sequence: str | None = None                 # the stop sequence the answer ended at, when told


class StreamDecoder(Protocol):
    def feed(self, data: bytes) -> list[Delta]: ...

    def close(self) -> list[Delta]: ...


def json_body(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def loads_json(data: bytes | str, provider: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise StreamError(f"{provider} sent a body that is not JSON", provider=provider) from None


def text_of(content: Any) -> str:
    """Plain text of an OpenAI-style message content (string or list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") in ("text", None))
    return "" if content is None else str(content)


def split_system(messages: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """Providers that take the system prompt as a separate field (Anthropic, Gemini, Bedrock)."""
    system = [text_of(m.get("content")) for m in messages if m.get("role") in ("system", "developer")]
    rest = [m for m in messages if m.get("role") not in ("system", "developer")]
    return ("\n".join(system) if system else None), rest


def compact_json(value: Any) -> str:
    """Tool-call arguments that a provider returns as an object, as the JSON text callers get.

    Streamed arguments are the provider's own text, so compare them parsed, not as strings.
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def json_or_none(body: bytes | str) -> Any:
    """A body parsed as JSON, or None when it is not JSON (error bodies may be anything)."""
    try:
        return json.loads(body)
    except ValueError:
        return None


def renamed_params(params: Mapping[str, Any], names: tuple[tuple[str, str], ...],
                   stop: str | None = None) -> dict[str, Any]:
    """The generation parameters the caller set (OpenAI names), under the provider's ``names``;
    ``stop`` (a string or a list) becomes a list under the provider's ``stop`` name."""
    out = {theirs: params[ours] for ours, theirs in names if params.get(ours) is not None}
    if stop and params.get("stop"):
        out[stop] = [params["stop"]] if isinstance(params["stop"], str) else list(params["stop"])
    return out


def plain_text(content: Any, provider: str) -> str:
    """The text of a message for providers that take text only; other parts are a BadRequest."""
    if isinstance(content, list):
        kinds = sorted({str(p.get("type")) for p in content if isinstance(p, dict) and p.get("type") != "text"})
        if kinds:
            raise BadRequest(f"{provider} runner sends text only; got content parts of type {', '.join(kinds)}",
                             provider=provider)
    return text_of(content)


def function_tools(tools: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """OpenAI-style tool definitions as ``{name, description, parameters, strict}``."""
    out = []
    for tool in tools or ():
        function = tool.get("function", tool)
        out.append({"name": function.get("name", ""), "description": function.get("description", ""),
                    "parameters": function.get("parameters") or {"type": "object", "properties": {}},
                    "strict": bool(function.get("strict", False))})
    return out


def tool_arguments(call: dict[str, Any], provider: str) -> dict[str, Any]:
    """The arguments of an OpenAI-style assistant tool call, parsed for providers that want an object."""
    function = call.get("function") or {}
    try:
        args = json.loads(function.get("arguments") or "{}")
    except ValueError:
        args = None
    if not isinstance(args, dict):
        raise BadRequest(f"tool call {function.get('name')!r} has arguments that are not a JSON object",
                         provider=provider)
    return args


def tool_choice(params: Mapping[str, Any]) -> tuple[str, str | None] | None:
    """``params["tool_choice"]`` as (mode, function name): mode is auto, none, required or function."""
    choice = params.get("tool_choice")
    if choice is None:
        return None
    if isinstance(choice, dict):
        name = (choice.get("function") or choice).get("name")
        return ("function", name) if name else ("required", None)
    if choice in ("auto", "none", "required"):
        return choice, None
    raise BadRequest(f"tool_choice must be auto, none, required or a function, got {choice!r}")


def fold_turns(messages: list[dict[str, Any]], blocks: Callable[[dict[str, Any]], list[dict[str, Any]]], *,
               assistant: str = "assistant", key: str = "content") -> list[dict[str, Any]]:
    """Chat messages (system already split off) -> alternating user/assistant turns of blocks.

    ``blocks(message)`` converts one message. Tool results are user-side, so consecutive
    results, and a result followed by a user message, share one turn: Anthropic, Gemini
    and Bedrock expect the turns to alternate.
    """
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = assistant if message.get("role") == "assistant" else "user"
        converted = blocks(message)
        if turns and turns[-1]["role"] == role:
            turns[-1][key].extend(converted)
        else:
            turns.append({"role": role, key: converted})
    return turns


def object_tool_call(index: int, call_id: str | None, name: str | None, arguments: Any) -> dict[str, Any]:
    """A whole tool call whose arguments came as an object (Anthropic, Gemini, Bedrock)."""
    return {"index": index, "id": call_id, "name": name, "arguments": compact_json(arguments or {})}


def tool_index(state: dict[str, Any], key: Any) -> int:
    """The dense 0-based index of a streamed tool call, whatever the provider numbers it by."""
    tools = state.setdefault("tool_index", {})
    return tools.setdefault(key, len(tools))


def bare_message(body: bytes) -> str | None:
    """The message of a ``{"message": ...}`` error body (AWS also spells it ``Message``), else None."""
    doc = json_or_none(body)
    message = (doc.get("message") or doc.get("Message")) if isinstance(doc, dict) else None
    return message if isinstance(message, str) else None


def bare_message_error(status: int | None, headers: Mapping[str, str] | None, message: str, provider: str,
                       cls: type[InferenceError] | None = None) -> InferenceError:
    """A typed error from a bare message (Cohere and Bedrock bodies, Bedrock stream exceptions).

    ``cls`` (else the HTTP status) decides the type; the message is kept. A bad request that
    complains about the context length or the key becomes that error, as with other providers.
    """
    error: InferenceError | None
    if status is not None:
        error = classify_http_status(status, headers, message or f"HTTP {status}", provider=provider)
        assert error is not None, "a status given here is an error's (non-2xx), as in classify_error"
    else:
        error = (cls or StreamError)(redact(message), provider=provider)
    if cls is not None and type(error) is not cls:
        error = cls(error.message, provider=provider, status=status, retry_after_s=error.retry_after_s,
                    request_id=error.request_id)
    if type(error) is BadRequest:
        refined = classify_error_body({"error": {"message": message}}, status, provider,
                                      retry_after_s=error.retry_after_s, request_id=error.request_id)
        if refined is not None:
            return refined
    return error


class ModelRunner:
    """Base of every provider runner. Subclasses set ``provider``, ``family`` and ``finish_map``."""

    provider: ClassVar[str]         # the deployment's ``provider:``, registered in actors/providers/__init__.py
    family: ClassVar[str | None]    # the price and context-window table of its models; None: any table
    finish_map: ClassVar[Mapping[str, str]] = {}
    # Option name -> (type, default). Unknown options are configuration errors.
    options_schema: ClassVar[Mapping[str, tuple[type, Any]]] = {}
    # What the provider's API can do beyond one plain answer: "logprobs", "n" (several choices).
    # A request asking for one the provider lacks is a BadRequest that never leaves the node.
    features: ClassVar[frozenset[str]] = frozenset()
    # The most texts one embeddings call takes; 0: the provider has no embeddings API here.
    embed_batch: ClassVar[int] = 0

    def __init__(self, deployment: DeploymentConfig) -> None:
        self.deployment = deployment
        self.model = deployment.provider_model
        self.endpoint = deployment.endpoint.rstrip("/")
        self.options = self._check_options(deployment.options)

    def _check_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        options = {}
        for name, value in given.items():
            if name not in self.options_schema:
                allowed = ", ".join(sorted(self.options_schema)) or "none"
                raise ConfigError(f"unknown option {name!r} for provider {self.provider}; allowed: {allowed}",
                                  path=f"options.{name}")
            tp, _ = self.options_schema[name]
            if not isinstance(value, tp) or (tp is not bool and isinstance(value, bool)):
                raise ConfigError(f"expected {tp.__name__}, got {type(value).__name__}", path=f"options.{name}")
            options[name] = value
        for name, (_, default) in self.options_schema.items():
            options.setdefault(name, default)
        return options

    # -- to be provided by each runner ---------------------------------------------------

    def build_request(self, request: InferenceRequest, credential: Secret | None) -> HttpRequest:
        raise NotImplementedError

    def parse_response(self, body: bytes) -> Delta:
        raise NotImplementedError

    def stream_decoder(self) -> StreamDecoder:
        raise NotImplementedError

    def build_embed_request(self, texts: list[str], params: Mapping[str, Any],
                            credential: Secret | None) -> HttpRequest:
        """The provider's embeddings call for ``texts`` (at most ``embed_batch`` of them)."""
        raise BadRequest(f"{self.provider} has no embeddings API behind this gateway", provider=self.provider)

    def parse_embed_response(self, body: bytes, texts: list[str]) -> Delta:
        raise NotImplementedError

    def embed_batch_for(self) -> int:
        """``embed_batch`` for this deployment (a model may take fewer texts than its provider)."""
        return self.embed_batch

    # -- shared ------------------------------------------------------------------------

    def for_request(self, request: InferenceRequest) -> Any:
        """What the worker builds and parses this request with: the runner itself for a chat
        call, an :class:`actors.providers.embeddings.EmbeddingCall` for embeddings. A
        feature the provider lacks is refused here, before anything is sent."""
        params = request.params
        wanted = [name for name, on in (("logprobs", params.get("logprobs") or params.get("top_logprobs")),
                                        ("n", isinstance(params.get("n"), int) and params["n"] > 1)) if on]
        for name in wanted:
            if name not in self.features:
                raise BadRequest(f"{name}: {self.provider} deployments cannot return "
                                 f"{'log probabilities' if name == 'logprobs' else 'several choices'}",
                                 provider=self.provider)
        if "n" in wanted and request.stream:
            raise BadRequest("n: several choices are served whole, not streamed", provider=self.provider)
        if getattr(request, "operation", "chat") == "embed":
            from actors.providers.embeddings import EmbeddingCall

            return EmbeddingCall(self, request)
        return self

    def headers(self, auth: Mapping[str, str]) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "application/json"}
        headers.update(self.deployment.headers)
        headers.update(auth)
        return headers

    def post(self, url: str, auth: Mapping[str, str], payload: Mapping[str, Any], stream: bool,
             stream_type: str = "text/event-stream") -> HttpRequest:
        """A JSON POST with the deployment's headers and ``auth``; a stream accepts ``stream_type``."""
        headers = self.headers(auth)
        if stream:
            headers["accept"] = stream_type
        return HttpRequest("POST", url, headers, json_body(payload), stream)

    def finish(self, raw: str | None) -> tuple[str | None, str | None]:
        """(normalised, raw) finish reason; an unknown raw value normalises to ``stop``."""
        if raw is None:
            return None, None
        return self.finish_map.get(raw, "stop"), raw

    def classify_error(self, status: int, headers: Mapping[str, str], body: bytes) -> InferenceError:
        error = classify_http_status(status, headers, body, provider=self.provider)
        assert error is not None, "classify_error is only called for non-2xx"
        return error

    def stream_error(self, payload: Any) -> InferenceError:
        """A typed error from an error event that arrived mid-stream."""
        return classify_error_body(payload, None, self.provider) or StreamError(
            f"{self.provider} stream error: {str(payload)[:200]}", provider=self.provider)

    def price(self) -> Price | None:
        from actors.core.pricing import lookup_price

        return self.deployment.pricing or lookup_price(self.family, self.model)


class SseRunner(ModelRunner):
    """Runners whose streams are Server-Sent Events implement :meth:`translate`."""

    def translate(self, event: SseChunk, state: dict[str, Any]) -> list[Delta]:
        raise NotImplementedError

    def stream_decoder(self) -> StreamDecoder:
        return FramedStream(SseDecoder(self.deployment.response_limits.max_line_bytes), self.translate)


class FramedStream:
    """A :class:`StreamDecoder` from a framing decoder (bytes -> events) and a runner's
    ``translate(event, state)`` (event -> Deltas); ``state`` lives as long as the stream."""

    __slots__ = ("_decoder", "_translate", "_state")

    def __init__(self, decoder: Any, translate: Callable[[Any, dict[str, Any]], list[Delta]]) -> None:
        self._decoder = decoder
        self._translate = translate
        self._state: dict[str, Any] = {}

    def feed(self, data: bytes) -> list[Delta]:
        out: list[Delta] = []
        for event in self._decoder.feed(data):
            out.extend(self._translate(event, self._state))
        return out

    def close(self) -> list[Delta]:
        out: list[Delta] = []
        for event in self._decoder.close():
            out.extend(self._translate(event, self._state))
        return out


class StreamAccumulator:
    """Folds Deltas into the final result, and into per-flush TokenChunk payloads."""

    def __init__(self) -> None:
        self.text_parts: list[str] = []
        self.usage_fields: dict[str, int] = {}
        self.finish_reason: str | None = None
        self.raw_finish_reason: str | None = None
        self.error: InferenceError | None = None
        self.done = False
        self._tools: dict[int, dict[str, Any]] = {}
        self._pending_text: list[str] = []
        self._pending_tools: list[dict[str, Any]] = []
        self.logprobs: list[dict[str, Any]] | None = None
        self._pending_logprobs: list[dict[str, Any]] = []
        self.choices: list[Choice] = []
        self.embeddings: list[list[float]] | None = None
        self.stop_sequence: str | None = None

    def add(self, delta: Delta) -> None:
        if delta.text:
            self.text_parts.append(delta.text)
            self._pending_text.append(delta.text)
        for tc in delta.tool_calls:
            self._pending_tools.append(tc)
            slot = self._tools.setdefault(int(tc.get("index", 0)), {"id": "", "name": "", "arguments": ""})
            if tc.get("id"):
                slot["id"] = tc["id"]
            if tc.get("name"):
                slot["name"] = tc["name"]
            slot["arguments"] += tc.get("arguments") or ""
        if delta.usage:
            self.usage_fields.update({k: v for k, v in delta.usage.items() if v is not None})
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason
            self.raw_finish_reason = delta.raw_finish_reason
        if delta.error is not None and self.error is None:
            self.error = delta.error
        self.done = self.done or delta.done
        if delta.logprobs:
            self.logprobs = (self.logprobs or []) + delta.logprobs
            self._pending_logprobs.extend(delta.logprobs)
        if delta.choices:
            self.choices.extend(delta.choices)
        if delta.stop_sequence:
            self.stop_sequence = delta.stop_sequence
        if delta.embeddings is not None:
            self.embeddings = delta.embeddings
            self.produced = True

    @property
    def complete(self) -> bool:
        return self.done or self.finish_reason is not None

    @property
    def has_pending(self) -> bool:
        return bool(self._pending_text or self._pending_tools)

    def take_pending_logprobs(self) -> list[dict[str, Any]] | None:
        """The log probabilities of the text taken with the last ``take_pending`` (None: none asked)."""
        taken, self._pending_logprobs = self._pending_logprobs, []
        return taken or None

    def take_pending(self) -> tuple[str, list[dict[str, Any]]]:
        text, tools = "".join(self._pending_text), self._pending_tools
        self._pending_text, self._pending_tools = [], []
        return text, tools

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    @property
    def usage(self) -> Usage:
        return Usage.from_fields(self.usage_fields)

    def tool_calls(self) -> list[ToolCall]:
        return [ToolCall(i, t["id"], t["name"], t["arguments"]) for i, t in sorted(self._tools.items())]
