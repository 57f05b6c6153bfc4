"""The built-in mock provider: a real HTTP server on 127.0.0.1 speaking providers' wire formats.

It speaks OpenAI Chat Completions (also as Azure and any compatible gateway), the OpenAI
Responses API, Anthropic Messages, Gemini, Cohere v2 Chat and Bedrock Converse (with the
binary event-stream framing and a check of the SigV4 Authorization header's structure).
It is the demo's upstream, the tests' upstream and the benchmarks' upstream. Replies are
deterministic (one token per word). Faults are scripted per request with a directive in
the last user message, e.g. ``[[mock status=429 retry_after=1]]``, or for the next
requests through ``POST /_mock/faults``. Directive keys:

- ``status``: answer with this HTTP status and the provider's error body
  (``retry_after``/``retry_after_ms`` add those headers);
- ``fail_times=N`` with ``key=K``: only the first N requests carrying key K fail;
- ``delay_ms``: wait before the first byte; ``drip_ms``: wait between streamed tokens;
- ``hold=NAME``: wait before answering until ``POST /_mock/release {"name": NAME}`` (at most 60 s);
- ``words``: reply length in tokens;
- ``cut_after=N``: drop the connection after N streamed tokens;
- ``malformed_after=N``: send a broken frame (SSE, or event-stream with a bad CRC) after N tokens;
- ``error_after=N``: send the provider's in-stream error event after N tokens;
- ``stall_after=N``: after N streamed tokens send nothing more, holding the connection open
  (up to ``stall_ms``, default 60 s, or until the client goes away);
- ``trickle_ms=T``: a non-streamed reply sent one byte every T ms (each read is satisfied);
- ``huge_line=B``: a stream whose first event is one data line of B bytes;
  ``huge_body=B``: a non-streamed body of B bytes (stats' ``last_bytes_sent`` says how much
  was written before the client stopped reading);
- ``empty=1``: 200 with an empty body (streamed or not);
- ``code=C``: the error body's ``code`` (with ``status``), e.g. ``content_filter``;
- ``context=N``: a prompt of more than N tokens is refused with 400 ``context_length_exceeded``;
- ``string_content=1``: a 500 for a message whose content is a list (llama.cpp's server);
- ``no_usage=1``: the OpenAI-compatible server reports no usage at all (llama.cpp's habit), and
  an embeddings answer carries none.

It also honours ``stop``/``stop_sequences`` (the answer ends before the first word holding one;
Anthropic reports which), ``n`` and ``logprobs``/``top_logprobs`` (OpenAI; ``candidateCount`` and
``responseLogprobs`` for Gemini; ``include: ["message.output_text.logprobs"]`` and ``top_logprobs``
for Responses; streamed too), and serves embeddings in each format that has them: OpenAI
``/embeddings`` (also Azure and compatible servers; ``encoding_format`` float or base64), Gemini
``:batchEmbedContents`` (no usage, as Google's), Cohere v2 ``/embed`` (``input_type`` required)
and Bedrock ``/invoke`` (Titan with its token count, Cohere Embed without). Vectors are
deterministic unit vectors of the text (8 numbers unless ``dimensions`` asks for more).
- ``body=STYLE`` (with ``status``): the error body a server of that style sends, not the
  provider's own: ``llama.cpp``, ``vllm`` or ``pydantic`` (servers that answer 500, with a
  message, to input they cannot handle), or a literal JSON object given through the API.

Faults by request shape: ``POST /_mock/rules`` with ``{"rules": [{"when": {FIELD: VALUE}, "fault":
{...}}]}`` applies ``fault`` to every request whose JSON body has each FIELD (a dotted path, list
indexes included: ``messages.-1.role``) equal to VALUE, or present at all when VALUE is ``"*"``:
one caller's request shape fails while everyone else is served. ``stats()["prompts"]`` counts requests by their last user message.
``GET /_mock/arrivals`` lists the last 100,000 chat requests as ``[unix time of arrival, last user message]``
(benchmarks count them per rate window, or against a deadline the prompt carries).

The same directives in a path segment ``/mock:key=value;key=value/`` before the API path
(``endpoint: http://127.0.0.1:PORT/mock:status=500/v1``) apply to every request on that
path: one mock server plays several deployments that fail in known ways, and ``stats()``
counts requests per path, so per deployment.

A request that offers tools and says ``[[tool]]`` gets one tool call (``get_weather``-like
arguments), unless the conversation already holds a tool result.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import threading
import time
import uuid
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Callable

from actors.providers.aws import encode_event

if TYPE_CHECKING:
    import requests

__all__ = ["MockProvider", "Fault"]

_DIRECTIVE = re.compile(r"\[\[mock\s+([^\]]*)\]\]")
_PATH_DIRECTIVE = re.compile(r"/mock:([^/]*)")
_WORDS = ("Hello", "from", "the", "mock", "provider.", "Streaming", "tokens", "arrive", "one", "by", "one,",
          "exactly", "as", "a", "real", "model", "would", "send", "them,", "with", "usage", "and", "a",
          "finish", "reason", "at", "the", "end.")
DEFAULT_WORDS = 24

Fault = dict[str, Any]


def _parse_directive(text: str) -> Fault:
    match = _DIRECTIVE.search(text)
    if not match:
        return {}
    fault: Fault = {}
    for item in match.group(1).split():
        key, _, value = item.partition("=")
        fault[key] = int(value) if value.lstrip("-").isdigit() else value
    return fault


def _path_directive(path: str) -> Fault:
    match = _PATH_DIRECTIVE.search(path)
    return _parse_directive(f"[[mock {match.group(1).replace(';', ' ')}]]") if match else {}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class _Reply:
    """What to say for one request, independent of the wire format."""

    def __init__(self, prompt_words: int, n_words: int, prompt: str, tool: dict | None,
                 stops: list[str] | None = None, fault: Fault | None = None) -> None:
        self.words = [_WORDS[i % len(_WORDS)] for i in range(n_words)]
        if prompt:
            self.words[:0] = ["You", "said:"] + prompt.split()[:4]
            self.words = self.words[:n_words]
        self.input_tokens = prompt_words
        self.tool = tool  # {"name":..., "arguments": "..."} when the request offered tools and asked for one
        self.fault = fault or {}
        self.stop_sequence: str | None = None  # the stop sequence the answer ended at, as the provider says
        for i, word in enumerate(self.words):
            hit = next((s for s in stops or () if s and s in word), None)
            if hit is not None:
                kept = word[:word.index(hit)]
                self.words = self.words[:i] + ([kept] if kept else [])
                self.stop_sequence = hit
                break

    @property
    def usage(self) -> bool:
        """False for ``no_usage=1``: a server that reports no usage at all (llama.cpp's habit)."""
        return not self.fault.get("no_usage")

    def logprob(self, i: int, token: str, top: int) -> dict[str, Any]:
        """A deterministic log probability for token ``i``, with ``top`` alternatives."""
        value = -round(0.05 * (i % 7 + 1), 4)
        item = {"token": token, "logprob": value, "bytes": list(token.encode())}
        alternatives = [{"token": f"alt{j}", "logprob": value - j, "bytes": list(f"alt{j}".encode())}
                        for j in range(1, top)]
        return {**item, "top_logprobs": ([item] if top else []) + alternatives}

    def variant(self, index: int) -> list[str]:
        """Choice ``index`` of an n > 1 answer: the same length, its own words."""
        if index == 0:
            return self.tokens
        words = [f"choice{index}"] + self.words[1:]
        return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]

    @property
    def tokens(self) -> list[str]:
        return [w + (" " if i < len(self.words) - 1 else "") for i, w in enumerate(self.words)]

    @property
    def output_tokens(self) -> int:
        return len(self.words) + (len(self.tool["arguments"]) // 4 + 1 if self.tool else 0)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # Python's http.server + requests stall 40 ms on delayed ACK without it
    server: "_Server"

    def log_message(self, *args: Any) -> None:  # quiet: tests and benches run thousands of requests
        pass

    # -- plumbing ----------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        head = [f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}",
                f"Content-Type: {content_type}", f"Content-Length: {len(body)}",
                f"x-request-id: mock-{uuid.uuid4().hex[:12]}"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)  # one write, one segment

    def _start_stream(self, content_type: str = "text/event-stream") -> None:
        self.wfile.write((f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
                          f"Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n"
                          f"x-request-id: mock-{uuid.uuid4().hex[:12]}\r\n\r\n").encode())

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def _cut(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def do_GET(self) -> None:
        if self.path == "/_mock/stats":
            self._send(200, json.dumps(self.server.stats()).encode())
        elif self.path == "/_mock/arrivals":
            self._send(200, json.dumps(self.server.arrived()).encode())
        else:
            self._send(404, b'{"error":{"message":"not found"}}')

    def do_POST(self) -> None:
        arrived = time.time()   # before the body is read: what the arrival record says
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        if path.startswith("/_mock/"):
            return self._control(path, raw)
        embedder = self.server.embed_route(path)
        if embedder is not None:
            return self._embed(embedder, raw)
        route = self.server.route(path)
        if route is None:
            return self._send(404, json.dumps({"error": {"message": f"no such route {path}"}}).encode())
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return self._send(400, b'{"error":{"message":"body is not JSON","type":"invalid_request_error"}}')
        wire, stream_path = route
        peer = self.client_address[1]
        self.server.begin(path, dict(self.headers), peer)
        try:
            self._serve(wire, body, stream_path, arrived)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            self.server.end(peer)

    def _embed(self, embedder: "EmbedWire", raw: bytes) -> None:
        try:
            body = json.loads(raw or b"{}")
            texts = embedder.texts(body)
        except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
            return self._send(400, json.dumps({"error": {"message": f"bad embeddings request: {exc}"}}).encode())
        peer = self.client_address[1]
        self.server.begin(self.path.split("?", 1)[0], dict(self.headers), peer)
        try:
            fault = {**self.server.next_fault(), **_path_directive(self.path), **_parse_directive(" ".join(texts))}
            chat = embedder.chat
            if chat.auth_problem(self.headers) or (self.server.accepted_keys is not None
                                                   and chat.key(self.headers) not in self.server.accepted_keys):
                fault = {"status": 401}
            problem = embedder.problem(body)
            if problem and "status" not in fault:
                fault = {"status": 400, "message": problem}
            if fault.get("delay_ms"):
                time.sleep(int(fault["delay_ms"]) / 1000)
            status = int(fault.get("status", 200))
            if status != 200:
                error = chat.error_body(status)
                if fault.get("message"):
                    nested = error.get("error")
                    inner: dict[str, Any] = nested if isinstance(nested, dict) else error
                    inner["message"] = fault["message"]
                headers = dict(chat.error_headers(status))
                if "retry_after" in fault:
                    headers["Retry-After"] = str(fault["retry_after"])
                return self._send(status, json.dumps(error).encode(), headers=headers)
            dims = embedder.dimensions(body) or 8
            vectors = [_vector(t, dims) for t in texts]
            tokens = sum(len(t.split()) for t in texts)
            self._send(200, json.dumps(embedder.answer(body, vectors, tokens, not fault.get("no_usage"))).encode())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            self.server.end(peer)

    def _control(self, path: str, raw: bytes) -> None:
        doc = json.loads(raw or b"{}")
        if path == "/_mock/faults":
            self.server.script(doc.get("faults", []))
        elif path == "/_mock/rules":
            self.server.rules = list(doc.get("rules") or [])
        elif path == "/_mock/release":
            self.server.gate(str(doc.get("name", ""))).set()
        elif path == "/_mock/keys":
            self.server.accepted_keys = set(doc.get("keys") or ()) or None
        elif path == "/_mock/reset":
            self.server.reset()
        self._send(200, b'{"ok":true}')

    # -- one request -----------------------------------------------------------------

    def _serve(self, wire: "Wire", body: dict[str, Any], stream_path: bool, arrived: float) -> None:
        prompt = wire.prompt(body)
        self.server.note_prompt(prompt, arrived)
        fault = {**self.server.next_fault(), **self.server.rule_fault(body), **_path_directive(self.path),
                 **_parse_directive(prompt)}
        context = fault.get("context")
        if isinstance(context, int) and wire.prompt_tokens(body) > context:
            fault = {**fault, "status": 400, "code": "context_length_exceeded",
                     "message": f"This model's maximum context length is {context} tokens. However, your "
                                f"messages resulted in {wire.prompt_tokens(body)} tokens."}
        if fault.get("string_content") and any(isinstance(m.get("content"), list) for m in wire.messages(body)):
            # llama.cpp's server on a list of content parts
            fault = {**fault, "status": 500, "code": "server_error",
                     "message": 'can only concatenate str (not "list") to str'}
        key = wire.key(self.headers)
        if fault.get("fail_times") is not None:
            if self.server.count_failure(str(fault.get("key", "")), int(fault["fail_times"])):
                fault = {k: v for k, v in fault.items() if k not in ("status",)}
        if wire.auth_problem(self.headers) or (
                self.server.accepted_keys is not None and key not in self.server.accepted_keys):
            fault = {"status": 401}
        if fault.get("delay_ms"):
            time.sleep(int(fault["delay_ms"]) / 1000)
        if fault.get("hold"):
            self.server.gate(str(fault["hold"])).wait(timeout=60)
        status = int(fault.get("status", 200))
        if status != 200:
            headers = {}
            if "retry_after" in fault:
                headers["Retry-After"] = str(fault["retry_after"])
            if "retry_after_ms" in fault:
                headers["retry-after-ms"] = str(fault["retry_after_ms"])
            headers.update(wire.error_headers(status))
            error = _styled_body(fault["body"], status) if "body" in fault else wire.error_body(status)
            inner = error.get("error") if isinstance(error.get("error"), dict) else None
            if inner is not None and "code" in fault:
                inner["code"] = str(fault["code"])
                inner["message"] = fault.get("message") or f"mock error {status} ({fault['code']})"
            return self._send(status, json.dumps(error).encode(), headers=headers)
        if self._misbehave(wire, body, fault, stream_path or bool(body.get("stream"))):
            return
        n_words = int(fault.get("words") or wire.max_tokens(body) or DEFAULT_WORDS)
        tool = None
        names = wire.tool_names(body)
        if names and "[[tool]]" in prompt and wire.result_marker not in json.dumps(body):
            tool = {"name": names[0], "arguments": json.dumps({"city": "Paris", "unit": "c"})}
        reply = _Reply(wire.prompt_tokens(body), min(n_words, 4096), _DIRECTIVE.sub("", prompt).strip(), tool,
                       wire.stops(body), fault)
        if not (stream_path or body.get("stream")):
            return self._send(200, json.dumps(wire.complete(body, reply)).encode())
        self._stream(wire, body, reply, fault)

    def _misbehave(self, wire: "Wire", body: dict[str, Any], fault: Fault, stream: bool) -> bool:
        """The size, trickle and empty faults; True when one of them answered."""
        if fault.get("empty"):
            if stream:
                self._start_stream(wire.stream_content_type)
                self._end_stream()
            else:
                self._send(200, b"")
            return True
        size = int(fault.get("huge_line" if stream else "huge_body") or 0)
        if size:
            piece = b"x" * 65536
            sent = 0
            try:
                if stream:
                    self._start_stream(wire.stream_content_type)
                    self._chunk(b"data: ")
                else:
                    self.wfile.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                     f"Content-Length: {size}\r\n\r\n".encode())
                while sent < size:
                    data = piece[:size - sent]
                    self._chunk(data) if stream else self.wfile.write(data)
                    sent += len(data)
                    self.server.note_bytes(sent)
                if stream:
                    self._chunk(b"\n\n")
                    self._end_stream()
            except OSError:
                self.close_connection = True
            return True
        trickle = int(fault.get("trickle_ms") or 0) / 1000
        if trickle and not stream:
            text = json.dumps(wire.complete(body, _Reply(wire.prompt_tokens(body), 3, "", None))).encode()
            self.wfile.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             f"Content-Length: {len(text)}\r\n\r\n".encode())
            try:
                for i in range(len(text)):
                    self.wfile.write(text[i:i + 1])
                    self.wfile.flush()
                    time.sleep(trickle)
            except OSError:
                self.close_connection = True
            return True
        return False

    def _stall(self, fault: Fault) -> None:
        """Send nothing, but keep the connection until the client leaves or the stall ends."""
        self.wfile.flush()
        until = time.monotonic() + int(fault.get("stall_ms") or 60000) / 1000
        self.connection.settimeout(0.1)
        while time.monotonic() < until:
            try:
                if self.connection.recv(1, socket.MSG_PEEK) == b"":
                    break  # the client closed its side
            except socket.timeout:
                continue
            except OSError:
                break
        self.close_connection = True

    def _stream(self, wire: "Wire", body: dict[str, Any], reply: _Reply, fault: Fault) -> None:
        drip = int(fault.get("drip_ms") or 0) / 1000 or self.server.drip_s
        self._start_stream(wire.stream_content_type)
        state: dict[str, Any] = {}
        for frame in wire.stream_head(body, reply, state):
            self._chunk(frame)
        for i, token in enumerate(reply.tokens):
            if i == fault.get("cut_after"):
                return self._cut()
            if i == fault.get("stall_after"):
                return self._stall(fault)
            if i == fault.get("malformed_after"):
                self._chunk(wire.malformed())
                self._end_stream()
                return
            if i == fault.get("error_after"):
                for frame in wire.stream_error(state):
                    self._chunk(frame)
                self._end_stream()
                return
            if drip and i:
                time.sleep(drip)
            self._chunk(wire.stream_token(token, i, state))
        for frame in wire.stream_tail(body, reply, state):
            self._chunk(frame)
        self._end_stream()


def _styled_body(style: Any, status: int) -> dict[str, Any]:
    """An error body as a given kind of OpenAI-compatible server writes it (or a literal one)."""
    if isinstance(style, dict):
        return style
    if style == "llama.cpp":  # llama.cpp's server: format_error_response
        return {"error": {"code": status, "message": "JSON schema conversion failed: unrecognized schema type 'foo'",
                          "type": "server_error"}}
    if style == "vllm":       # vLLM's ErrorResponse, not nested
        return {"object": "error", "message": "1 validation error for ChatCompletionRequest: logit_bias: "
                "token ids must be integers", "type": "InternalServerError", "param": None, "code": status}
    # A FastAPI server whose pydantic validation error surfaced as a 500.
    return {"detail": [{"type": "missing", "loc": ["body", "messages", 1, "tool_call_id"], "msg": "Field required",
                        "input": {"role": "tool"}}]}


def _matches(body: Any, when: dict[str, Any]) -> bool:
    for path, expected in when.items():
        value: Any = body
        for part in str(path).split("."):
            if isinstance(value, list) and part.lstrip("-").isdigit() and -len(value) <= int(part) < len(value):
                value = value[int(part)]
            elif isinstance(value, dict) and part in value:
                value = value[part]
            else:
                return False
        if expected != "*" and value != expected:
            return False
    return True


def _sse(data: Any, event: str | None = None) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return (f"event: {event}\n" if event else "").encode() + f"data: {text}\n\n".encode()


class Wire:
    """One provider's wire format. Subclasses fill in the shapes."""

    stream_content_type = "text/event-stream"
    # How a tool result looks in a request body (json.dumps separators): after one, the reply is text.
    result_marker = '"role": "tool"'

    def messages(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        """The conversation as {role, content} turns (content: a string or a list of text parts)."""
        return body.get("messages", [])

    def system(self, body: dict[str, Any]) -> Any:
        return body.get("system")

    def prompt(self, body: dict[str, Any]) -> str:
        user = [m for m in self.messages(body) if m.get("role") == "user"]
        return _text_of(user[-1].get("content")) if user else ""

    def all_text(self, body: dict[str, Any]) -> str:
        parts = [_text_of(m.get("content")) for m in self.messages(body)]
        system = self.system(body)
        if system:
            parts.append(_text_of(system))
        return " ".join(parts)

    def prompt_tokens(self, body: dict[str, Any]) -> int:
        return len(self.all_text(body).split()) + 3 * max(1, len(self.messages(body)))

    def max_tokens(self, body: dict[str, Any]) -> int | None:
        return body.get("max_tokens") or body.get("max_completion_tokens")

    def tool_names(self, body: dict[str, Any]) -> list[str]:
        return [(tool.get("function") or tool).get("name", "tool") for tool in body.get("tools") or ()]

    def stops(self, body: dict[str, Any]) -> list[str]:
        stop = body.get("stop")
        return [stop] if isinstance(stop, str) else list(stop or [])

    def key(self, headers: Any) -> str | None:
        auth = headers.get("authorization") or ""
        return auth[7:] if auth.lower().startswith("bearer ") else headers.get("api-key")

    def auth_problem(self, headers: Any) -> str | None:
        """Why the request's authentication is malformed (whatever the key), or None."""
        return None

    def error_headers(self, status: int) -> dict[str, str]:
        return {}

    def malformed(self) -> bytes:
        return b"data: {\"this is not\": json\n\n"

    # The shapes each subclass writes (the state is one stream's, from its head to its tail).

    def error_body(self, status: int) -> dict[str, Any]:
        raise NotImplementedError

    def complete(self, body: dict[str, Any], reply: _Reply) -> dict[str, Any]:
        raise NotImplementedError

    def stream_head(self, body: dict[str, Any], reply: _Reply, state: dict[str, Any]) -> list[bytes]:
        raise NotImplementedError

    def stream_token(self, token: str, i: int, state: dict[str, Any]) -> bytes:
        raise NotImplementedError

    def stream_tail(self, body: dict[str, Any], reply: _Reply, state: dict[str, Any]) -> list[bytes]:
        raise NotImplementedError

    def stream_error(self, state: dict[str, Any]) -> list[bytes]:
        raise NotImplementedError


class OpenAIChatWire(Wire):
    def error_body(self, status: int) -> dict[str, Any]:
        kinds = {400: "invalid_request_error", 401: "invalid_request_error", 429: "rate_limit_exceeded"}
        return {"error": {"message": f"mock error {status}", "type": kinds.get(status, "server_error"),
                          "param": None, "code": "invalid_api_key" if status == 401 else None}}

    def _usage(self, reply: _Reply) -> dict[str, Any]:
        return {"prompt_tokens": reply.input_tokens, "completion_tokens": reply.output_tokens,
                "total_tokens": reply.input_tokens + reply.output_tokens,
                "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}

    def _tool_calls(self, reply: _Reply) -> list[dict[str, Any]]:
        tool = reply.tool
        assert tool is not None, "asked only for a reply that calls a tool"
        return [{"index": 0, "id": "call_mock1", "type": "function",
                 "function": {"name": tool["name"], "arguments": tool["arguments"]}}]

    def _logprobs(self, body: dict[str, Any], reply: _Reply, tokens: list[str]) -> dict[str, Any] | None:
        if not body.get("logprobs"):
            return None
        return {"content": [reply.logprob(i, t, int(body.get("top_logprobs") or 0)) for i, t in enumerate(tokens)],
                "refusal": None}

    def complete(self, body: dict[str, Any], reply: _Reply) -> dict[str, Any]:
        choices = []
        for index in range(int(body.get("n") or 1)):
            tokens = reply.variant(index)
            message: dict[str, Any] = {"role": "assistant", "content": "".join(tokens)}
            if reply.tool:
                message["tool_calls"] = self._tool_calls(reply)
            choices.append({"index": index, "message": message, "logprobs": self._logprobs(body, reply, tokens),
                            "finish_reason": "tool_calls" if reply.tool else "stop"})
        doc = {"id": "chatcmpl-mock", "object": "chat.completion", "created": int(time.time()),
               "model": body.get("model"), "choices": choices}
        if reply.usage:
            doc["usage"] = self._usage(reply)
        return doc

    def _chunk(self, body_model: str, delta: dict[str, Any], finish: str | None = None,
               logprobs: dict[str, Any] | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        if logprobs is not None:
            choice["logprobs"] = logprobs
        return _sse({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0, "model": body_model,
                     "choices": [choice], "usage": None})

    def stream_head(self, body, reply, state):
        state["model"] = body.get("model", "")
        state["body"], state["reply"] = body, reply
        return [self._chunk(state["model"], {"role": "assistant", "content": ""})]

    def stream_token(self, token, i, state):
        body, reply = state["body"], state["reply"]
        logprobs = ({"content": [reply.logprob(i, token, int(body.get("top_logprobs") or 0))]}
                    if body.get("logprobs") else None)
        return self._chunk(state["model"], {"content": token}, logprobs=logprobs)

    def stream_tail(self, body, reply, state):
        frames = []
        if reply.tool:
            call = self._tool_calls(reply)[0]
            args = call["function"]["arguments"]
            first = {**call, "function": {"name": call["function"]["name"], "arguments": args[:5]}}
            frames.append(self._chunk(state["model"], {"tool_calls": [first]}))
            frames.append(self._chunk(state["model"], {"tool_calls": [{"index": 0, "function": {"arguments": args[5:]}}]}))
        frames.append(self._chunk(state["model"], {}, "tool_calls" if reply.tool else "stop"))
        if (body.get("stream_options") or {}).get("include_usage") and reply.usage:
            frames.append(_sse({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 0,
                                "model": state["model"], "choices": [], "usage": self._usage(reply)}))
        frames.append(_sse("[DONE]"))
        return frames

    def stream_error(self, state):
        return [_sse({"error": {"message": "The server had an error while processing your request.",
                                "type": "server_error", "code": None}})]


class AnthropicWire(Wire):
    result_marker = '"type": "tool_result"'

    def stops(self, body):
        return list(body.get("stop_sequences") or [])

    @staticmethod
    def _stop_reason(reply: _Reply) -> str:
        return "tool_use" if reply.tool else "stop_sequence" if reply.stop_sequence else "end_turn"

    def key(self, headers: Any) -> str | None:
        return headers.get("x-api-key")

    def error_body(self, status: int) -> dict[str, Any]:
        kinds = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 429: "rate_limit_error", 529: "overloaded_error"}
        return {"type": "error", "error": {"type": kinds.get(status, "api_error"), "message": f"mock error {status}"},
                "request_id": "req_mock"}

    def complete(self, body, reply):
        content: list[dict[str, Any]] = [{"type": "text", "text": "".join(reply.tokens)}]
        if reply.tool:
            content.append({"type": "tool_use", "id": "toolu_mock1", "name": reply.tool["name"],
                            "input": json.loads(reply.tool["arguments"])})
        return {"id": "msg_mock", "type": "message", "role": "assistant", "model": body.get("model"),
                "content": content, "stop_reason": self._stop_reason(reply), "stop_sequence": reply.stop_sequence,
                "usage": {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens,
                          "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}}

    def stream_head(self, body, reply, state):
        start = {"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant",
                 "model": body.get("model"), "content": [], "stop_reason": None, "stop_sequence": None,
                 "usage": {"input_tokens": reply.input_tokens, "output_tokens": 1,
                           "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}}}
        return [_sse(start, "message_start"),
                _sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                     "content_block_start"),
                _sse({"type": "ping"}, "ping")]

    def stream_token(self, token, i, state):
        return _sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": token}},
                    "content_block_delta")

    def stream_tail(self, body, reply, state):
        frames = [_sse({"type": "content_block_stop", "index": 0}, "content_block_stop")]
        if reply.tool:
            args = reply.tool["arguments"]
            frames += [
                _sse({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use",
                      "id": "toolu_mock1", "name": reply.tool["name"], "input": {}}}, "content_block_start"),
                _sse({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta",
                      "partial_json": args[:5]}}, "content_block_delta"),
                _sse({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta",
                      "partial_json": args[5:]}}, "content_block_delta"),
                _sse({"type": "content_block_stop", "index": 1}, "content_block_stop")]
        frames += [_sse({"type": "message_delta", "delta": {"stop_reason": self._stop_reason(reply),
                         "stop_sequence": reply.stop_sequence}, "usage": {"output_tokens": reply.output_tokens}},
                        "message_delta"),
                   _sse({"type": "message_stop"}, "message_stop")]
        return frames

    def stream_error(self, state):
        return [_sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "error")]


class ResponsesWire(OpenAIChatWire):
    """OpenAI Responses API: input items, and named events that all carry a sequence_number."""

    result_marker = '"type": "function_call_output"'

    def messages(self, body):
        items = body.get("input") or []
        if isinstance(items, str):
            return [{"role": "user", "content": items}]
        return [item for item in items if item.get("role")]

    def system(self, body):
        return body.get("instructions")

    def max_tokens(self, body):
        return body.get("max_output_tokens")

    def _usage(self, reply):
        return {"input_tokens": reply.input_tokens, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": reply.output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": reply.input_tokens + reply.output_tokens}

    def _message(self, text: str, status: str = "completed", logprobs: list | None = None) -> dict[str, Any]:
        part = {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}
        return {"type": "message", "id": "msg_mock", "status": status, "role": "assistant",
                "content": [part] if status == "completed" else []}

    @staticmethod
    def _output_logprobs(body, reply, tokens, start: int = 0) -> list[dict[str, Any]]:
        """``include: ["message.output_text.logprobs"]``: each token's, with ``top_logprobs`` alternatives."""
        if "message.output_text.logprobs" not in (body.get("include") or ()):
            return []
        return [reply.logprob(start + i, t, int(body.get("top_logprobs") or 0)) for i, t in enumerate(tokens)]

    def _call(self, reply, arguments: str, status: str = "completed") -> dict[str, Any]:
        return {"type": "function_call", "id": "fc_mock1", "call_id": "call_mock1", "name": reply.tool["name"],
                "arguments": arguments, "status": status}

    def complete(self, body, reply):
        output = [self._message("".join(reply.tokens), logprobs=self._output_logprobs(body, reply, reply.tokens))]
        if reply.tool:
            output.append(self._call(reply, reply.tool["arguments"]))
        return {"id": "resp_mock", "object": "response", "created_at": int(time.time()), "status": "completed",
                "model": body.get("model"), "output": output, "usage": self._usage(reply), "error": None,
                "incomplete_details": None}

    def _event(self, kind: str, state: dict[str, Any], **fields: Any) -> bytes:
        state["seq"] = state.get("seq", -1) + 1
        return _sse({"type": kind, "sequence_number": state["seq"], **fields}, kind)

    def stream_head(self, body, reply, state):
        state["body"], state["reply"] = body, reply
        created = {"id": "resp_mock", "object": "response", "status": "in_progress", "model": body.get("model"),
                   "output": [], "usage": None}
        return [self._event("response.created", state, response=created),
                self._event("response.in_progress", state, response=created),
                self._event("response.output_item.added", state, output_index=0,
                            item=self._message("", "in_progress")),
                self._event("response.content_part.added", state, item_id="msg_mock", output_index=0,
                            content_index=0, part={"type": "output_text", "text": "", "annotations": [],
                                                   "logprobs": []})]

    def stream_token(self, token, i, state):
        # Stream events carry each token's figures without its bytes, as the API's do.
        logprobs = [{k: v for k, v in x.items() if k != "bytes"} | {"top_logprobs": [
                        {"token": t["token"], "logprob": t["logprob"]} for t in x["top_logprobs"]]}
                    for x in self._output_logprobs(state["body"], state["reply"], [token], i)]
        return self._event("response.output_text.delta", state, item_id="msg_mock", output_index=0,
                           content_index=0, delta=token, logprobs=logprobs)

    def stream_tail(self, body, reply, state):
        text = "".join(reply.tokens)
        logprobs = self._output_logprobs(body, reply, reply.tokens)
        frames = [self._event("response.output_text.done", state, item_id="msg_mock", output_index=0,
                              content_index=0, text=text, logprobs=logprobs),
                  self._event("response.output_item.done", state, output_index=0,
                              item=self._message(text, logprobs=logprobs))]
        if reply.tool:
            args = reply.tool["arguments"]
            frames += [self._event("response.output_item.added", state, output_index=1,
                                   item=self._call(reply, "", "in_progress")),
                       self._event("response.function_call_arguments.delta", state, item_id="fc_mock1",
                                   output_index=1, delta=args[:5]),
                       self._event("response.function_call_arguments.delta", state, item_id="fc_mock1",
                                   output_index=1, delta=args[5:]),
                       self._event("response.function_call_arguments.done", state, item_id="fc_mock1",
                                   output_index=1, arguments=args),
                       self._event("response.output_item.done", state, output_index=1, item=self._call(reply, args))]
        frames.append(self._event("response.completed", state, response=self.complete(body, reply)))
        return frames

    def stream_error(self, state):
        return [self._event("error", state, code="server_error", param=None,
                            message="The server had an error while processing your request.")]


class GeminiWire(Wire):
    """Gemini generateContent; the stream (alt=sse) is whole responses with running usage totals."""

    result_marker = '"functionResponse"'
    THOUGHTS = 7  # a thinking model's hidden tokens, billed as output
    STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
              429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}

    def messages(self, body):
        return [{"role": c.get("role"), "content": c.get("parts")} for c in body.get("contents") or ()]

    def system(self, body):
        return (body.get("systemInstruction") or {}).get("parts")

    def max_tokens(self, body):
        return (body.get("generationConfig") or {}).get("maxOutputTokens")

    def stops(self, body):
        return list((body.get("generationConfig") or {}).get("stopSequences") or [])

    def tool_names(self, body):
        return [d.get("name", "tool") for t in body.get("tools") or () for d in t.get("functionDeclarations") or ()]

    @staticmethod
    def _logprobs(body, reply, tokens) -> dict[str, Any] | None:
        config = body.get("generationConfig") or {}
        if not config.get("responseLogprobs"):
            return None
        return GeminiWire._logprobs_result([reply.logprob(i, t, int(config.get("logprobs") or 0))
                                            for i, t in enumerate(tokens)])

    @staticmethod
    def _logprobs_result(items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"chosenCandidates": [{"token": x["token"], "logProbability": x["logprob"]} for x in items],
                "topCandidates": [{"candidates": [{"token": t["token"], "logProbability": t["logprob"]}
                                                  for t in x["top_logprobs"]]} for x in items]}

    def key(self, headers):
        return headers.get("x-goog-api-key") or super().key(headers)

    def error_body(self, status):
        return {"error": {"code": status, "message": f"mock error {status}",
                          "status": self.STATUS.get(status, "UNKNOWN")}}

    def _usage(self, reply, candidates: int) -> dict[str, Any]:
        return {"promptTokenCount": reply.input_tokens, "candidatesTokenCount": candidates,
                "thoughtsTokenCount": self.THOUGHTS,
                "totalTokenCount": reply.input_tokens + candidates + self.THOUGHTS}

    def _response(self, parts, usage, finish: str | None = None) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
        if finish:
            candidate["finishReason"] = finish
        return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": "mock-gemini",
                "responseId": "mock-response"}

    def _tool_parts(self, reply) -> list[dict[str, Any]]:
        if not reply.tool:
            return []
        return [{"functionCall": {"name": reply.tool["name"], "args": json.loads(reply.tool["arguments"])}}]

    def complete(self, body, reply):
        doc = self._response([{"text": "".join(reply.tokens)}] + self._tool_parts(reply),
                             self._usage(reply, reply.output_tokens), "STOP")
        count = int((body.get("generationConfig") or {}).get("candidateCount") or 1)
        doc["candidates"] = [{"content": {"parts": [{"text": "".join(reply.variant(i))}], "role": "model"},
                              "index": i, "finishReason": "STOP"} for i in range(count)]
        doc["candidates"][0]["content"]["parts"] += self._tool_parts(reply)
        for i, candidate in enumerate(doc["candidates"]):
            logprobs = self._logprobs(body, reply, reply.variant(i))
            if logprobs is not None:
                candidate["logprobsResult"] = logprobs
        return doc

    def stream_head(self, body, reply, state):
        state["reply"], state["body"] = reply, body  # every chunk reports the usage so far
        return []

    def stream_token(self, token, i, state):
        doc = self._response([{"text": token}], self._usage(state["reply"], i + 1))
        config = state["body"].get("generationConfig") or {}
        if config.get("responseLogprobs"):   # each chunk carries the log probabilities of its own tokens
            item = state["reply"].logprob(i, token, int(config.get("logprobs") or 0))
            doc["candidates"][0]["logprobsResult"] = self._logprobs_result([item])
        return _sse(doc)

    def stream_tail(self, body, reply, state):
        parts = self._tool_parts(reply) or [{"text": ""}]
        return [_sse(self._response(parts, self._usage(reply, reply.output_tokens), "STOP"))]

    def stream_error(self, state):
        return [_sse({"error": {"code": 503, "message": "The model is overloaded. Please try again later.",
                                "status": "UNAVAILABLE"}})]


class CohereWire(Wire):
    """Cohere v2 chat; stream events are typed JSON objects, usage arrives in message-end."""

    TEMPLATE_TOKENS = 5  # Cohere counts its prompt template in "tokens" but bills only "billed_units"

    def error_body(self, status):
        return {"id": "mock-" + uuid.uuid4().hex[:8], "message": f"mock error {status}"}

    def _usage(self, reply) -> dict[str, Any]:
        return {"billed_units": {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens},
                "tokens": {"input_tokens": reply.input_tokens + self.TEMPLATE_TOKENS,
                           "output_tokens": reply.output_tokens}}

    def _tool_call(self, reply, arguments: str) -> dict[str, Any]:
        return {"id": "mock_tool_1", "type": "function",
                "function": {"name": reply.tool["name"], "arguments": arguments}}

    def complete(self, body, reply):
        message: dict[str, Any] = {"role": "assistant", "content": [{"type": "text", "text": "".join(reply.tokens)}]}
        if reply.tool:
            message["tool_plan"] = "I will call the tool."
            message["tool_calls"] = [self._tool_call(reply, reply.tool["arguments"])]
        return {"id": "mock-chat", "finish_reason": "TOOL_CALL" if reply.tool else "COMPLETE", "message": message,
                "usage": self._usage(reply)}

    def _event(self, kind: str, **fields: Any) -> bytes:
        return _sse({"type": kind, **fields}, kind)

    def stream_head(self, body, reply, state):
        return [self._event("message-start", id="mock-chat", delta={"message": {
                    "role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}),
                self._event("content-start", index=0, delta={"message": {"content": {"type": "text", "text": ""}}})]

    def stream_token(self, token, i, state):
        return self._event("content-delta", index=0, delta={"message": {"content": {"text": token}}})

    def stream_tail(self, body, reply, state):
        frames = [self._event("content-end", index=0)]
        if reply.tool:
            args = reply.tool["arguments"]

            def call(tool_calls: dict[str, Any]) -> dict[str, Any]:
                return {"message": {"tool_calls": tool_calls}}

            frames += [self._event("tool-plan-delta", delta={"message": {"tool_plan": "I will call the tool."}}),
                       self._event("tool-call-start", index=0, delta=call(self._tool_call(reply, ""))),
                       self._event("tool-call-delta", index=0, delta=call({"function": {"arguments": args[:5]}})),
                       self._event("tool-call-delta", index=0, delta=call({"function": {"arguments": args[5:]}})),
                       self._event("tool-call-end", index=0)]
        finish = "TOOL_CALL" if reply.tool else "COMPLETE"
        return frames + [self._event("message-end", delta={"finish_reason": finish, "usage": self._usage(reply)})]

    def stream_error(self, state):
        return [self._event("message-end", delta={"finish_reason": "ERROR", "error": "internal server error"})]


class BedrockWire(Wire):
    """Bedrock Converse; ConverseStream replies in the AWS binary event-stream framing."""

    stream_content_type = "application/vnd.amazon.eventstream"
    result_marker = '"toolResult"'
    ERRORS = {400: "ValidationException", 401: "UnrecognizedClientException", 403: "AccessDeniedException",
              404: "ResourceNotFoundException", 408: "ModelTimeoutException", 424: "ModelErrorException",
              429: "ThrottlingException", 500: "InternalServerException", 503: "ServiceUnavailableException"}
    _AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([A-Za-z0-9]+)/(\d{8})/[a-z0-9-]+/bedrock/aws4_request, "
                       r"SignedHeaders=([a-z0-9;-]+), Signature=[0-9a-f]{64}")

    def max_tokens(self, body):
        return (body.get("inferenceConfig") or {}).get("maxTokens")

    def tool_names(self, body):
        return [t.get("toolSpec", {}).get("name", "tool") for t in (body.get("toolConfig") or {}).get("tools") or ()]

    def key(self, headers):
        match = self._AUTH.fullmatch(headers.get("authorization") or "")
        return match.group(1) if match else None

    def auth_problem(self, headers):
        match = self._AUTH.fullmatch(headers.get("authorization") or "")
        if match is None:
            return "no SigV4 Authorization header"
        signed = match.group(3).split(";")
        if "host" not in signed or "x-amz-date" not in signed or signed != sorted(signed):
            return "SignedHeaders must be sorted and include host and x-amz-date"
        if not (headers.get("x-amz-date") or "").startswith(match.group(2)):
            return "the credential scope's date is not the x-amz-date's"
        return None

    def error_body(self, status):
        return {"message": f"mock error {status}"}

    def error_headers(self, status):
        return {"x-amzn-errortype": self.ERRORS.get(status, "InternalServerException")
                + ":http://internal.amazon.com/coral/com.amazon.bedrock/"}

    def _usage(self, reply) -> dict[str, Any]:
        return {"inputTokens": reply.input_tokens, "outputTokens": reply.output_tokens,
                "totalTokens": reply.input_tokens + reply.output_tokens}

    def complete(self, body, reply):
        content: list[dict[str, Any]] = [{"text": "".join(reply.tokens)}]
        if reply.tool:
            content.append({"toolUse": {"toolUseId": "tooluse_mock1", "name": reply.tool["name"],
                                        "input": json.loads(reply.tool["arguments"])}})
        return {"output": {"message": {"role": "assistant", "content": content}},
                "stopReason": "tool_use" if reply.tool else "end_turn", "usage": self._usage(reply),
                "metrics": {"latencyMs": 1}}

    def _event(self, kind: str, payload: dict[str, Any]) -> bytes:
        # Real ConverseStream events carry a padding field "p" against length side channels.
        data = json.dumps({**payload, "p": "abcdefghijkl"}).encode()
        return encode_event({":event-type": kind, ":content-type": "application/json", ":message-type": "event"}, data)

    def stream_head(self, body, reply, state):
        return [self._event("messageStart", {"role": "assistant"})]

    def stream_token(self, token, i, state):
        return self._event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": token}})

    def stream_tail(self, body, reply, state):
        frames = [self._event("contentBlockStop", {"contentBlockIndex": 0})]
        if reply.tool:
            args = reply.tool["arguments"]
            start = {"toolUse": {"toolUseId": "tooluse_mock1", "name": reply.tool["name"]}}
            frames += [self._event("contentBlockStart", {"contentBlockIndex": 1, "start": start})]
            frames += [self._event("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": part}}})
                       for part in (args[:5], args[5:])]
            frames.append(self._event("contentBlockStop", {"contentBlockIndex": 1}))
        return frames + [self._event("messageStop", {"stopReason": "tool_use" if reply.tool else "end_turn"}),
                         self._event("metadata", {"usage": self._usage(reply), "metrics": {"latencyMs": 1}})]

    def stream_error(self, state):
        return [encode_event({":exception-type": "throttlingException", ":content-type": "application/json",
                              ":message-type": "exception"},
                             b'{"message":"Too many tokens, please wait before trying again."}')]

    def malformed(self):
        frame = bytearray(self._event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "x"}}))
        frame[-1] ^= 0xFF  # a bad message CRC
        return bytes(frame)


def _vector(text: str, dims: int) -> list[float]:
    """A deterministic unit vector for ``text``: the same text always embeds the same."""
    import hashlib
    import math

    seed = hashlib.sha256(text.encode()).digest()
    raw = [(seed[i % 32] + 7 * i) % 256 / 127.5 - 1.0 for i in range(dims)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [round(x / norm, 6) for x in raw]


class EmbedWire:
    """One provider's embeddings format: the texts in, the vectors (and usage) out."""

    chat: Wire

    def texts(self, body: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    def dimensions(self, body: dict[str, Any]) -> int | None:
        return None

    def problem(self, body: dict[str, Any]) -> str | None:
        return None

    def answer(self, body: dict[str, Any], vectors: list[list[float]], tokens: int, usage: bool) -> dict[str, Any]:
        raise NotImplementedError


class OpenAIEmbedWire(EmbedWire):
    chat = OpenAIChatWire()

    def texts(self, body):
        value = body["input"]
        return [value] if isinstance(value, str) else [str(t) for t in value]

    def dimensions(self, body):
        return body.get("dimensions")

    def problem(self, body):
        return None if body.get("encoding_format", "float") in ("float", "base64") else "bad encoding_format"

    def answer(self, body, vectors, tokens, usage):
        import base64
        import struct

        b64 = body.get("encoding_format") == "base64"
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(struct.pack(f"<{len(v)}f", *v)).decode() if b64 else v}
                for i, v in enumerate(vectors)]
        doc = {"object": "list", "data": data, "model": body.get("model")}
        if usage:
            doc["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return doc


class GeminiEmbedWire(EmbedWire):
    chat = GeminiWire()

    def texts(self, body):
        return ["".join(p.get("text", "") for p in r["content"]["parts"]) for r in body["requests"]]

    def dimensions(self, body):
        return (body.get("requests") or [{}])[0].get("outputDimensionality")

    def problem(self, body):
        return "at most 100 requests per batch" if len(body.get("requests") or ()) > 100 else None

    def answer(self, body, vectors, tokens, usage):
        return {"embeddings": [{"values": v} for v in vectors]}   # batchEmbedContents reports no usage


class CohereEmbedWire(EmbedWire):
    chat = CohereWire()

    def texts(self, body):
        return [str(t) for t in body["texts"]]

    def dimensions(self, body):
        return body.get("output_dimension")

    def problem(self, body):
        if not body.get("input_type"):
            return "invalid request: input_type is required for embed models v3 and higher."
        return "invalid request: too many texts (at most 96)" if len(body.get("texts") or ()) > 96 else None

    def answer(self, body, vectors, tokens, usage):
        doc = {"id": "mock-embed", "embeddings": {"float": vectors}, "texts": body.get("texts"),
               "response_type": "embeddings_by_type", "meta": {"api_version": {"version": "2"}}}
        if usage:
            doc["meta"]["billed_units"] = {"input_tokens": tokens}
        return doc


class BedrockEmbedWire(EmbedWire):
    """InvokeModel for embeddings: Titan (one text, with its token count) or Cohere Embed (no usage)."""

    chat = BedrockWire()

    def texts(self, body):
        return [body["inputText"]] if "inputText" in body else [str(t) for t in body["texts"]]

    def dimensions(self, body):
        return body.get("dimensions")

    def answer(self, body, vectors, tokens, usage):
        if "inputText" in body:
            return {"embedding": vectors[0], "inputTextTokenCount": tokens}
        return {"id": "mock-embed", "embeddings": {"float": vectors}, "texts": body.get("texts"),
                "response_type": "embeddings_by_type"}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up (a cancelled stream, a closed benchmark) is normal here.
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            super().handle_error(request, client_address)

    def __init__(self, address: tuple[str, int], words_per_second: float | None) -> None:
        super().__init__(address, _Handler)
        self.drip_s = 1 / words_per_second if words_per_second else 0.0
        self.accepted_keys: set[str] | None = None
        self._lock = threading.Lock()
        self.reset()
        gemini, bedrock = GeminiWire(), BedrockWire()
        self._embed_wires: dict[str, EmbedWire] = {"openai": OpenAIEmbedWire(), "gemini": GeminiEmbedWire(),
                                                   "cohere": CohereEmbedWire(), "bedrock": BedrockEmbedWire()}
        # (path matcher, wire, whether the URL itself asks for a stream)
        self.routes: list[tuple[Callable[[str], bool], Wire, bool]] = [
            (lambda p: p.endswith("/chat/completions"), OpenAIChatWire(), False),
            (lambda p: p.endswith("/messages"), AnthropicWire(), False),
            (lambda p: p.endswith("/responses"), ResponsesWire(), False),
            (lambda p: p.endswith(":streamGenerateContent"), gemini, True),
            (lambda p: p.endswith(":generateContent"), gemini, False),
            (lambda p: p.endswith("/chat"), CohereWire(), False),
            (lambda p: p.endswith("/converse-stream"), bedrock, True),
            (lambda p: p.endswith("/converse"), bedrock, False),
        ]

    def embed_route(self, path: str) -> EmbedWire | None:
        if path.endswith("/embeddings"):
            return self._embed_wires["openai"]
        if path.endswith(":batchEmbedContents"):
            return self._embed_wires["gemini"]
        if path.endswith("/embed"):
            return self._embed_wires["cohere"]
        if path.endswith("/invoke"):
            return self._embed_wires["bedrock"]
        return None

    def reset(self) -> None:
        with self._lock:
            self._faults: deque[Fault] = deque()
            self._failures: Counter[str] = Counter()
            self.requests: Counter[str] = Counter()
            self.in_flight = 0
            self.max_in_flight = 0
            self.keys_seen: Counter[str] = Counter()
            self.last_headers: dict[str, str] = {}
            self.peers: set[int] = set()  # client ports of requests in flight
            self.last_bytes_sent = 0
            self.rules: list[dict[str, Any]] = []
            self.gates: dict[str, threading.Event] = {}
            self.prompts: Counter[str] = Counter()
            self.arrivals: deque[tuple[float, str]] = deque(maxlen=100_000)

    def route(self, path: str) -> tuple[Wire, bool] | None:
        for match, wire, stream_path in self.routes:
            if match(path):
                return wire, stream_path
        return None

    def script(self, faults: list[Fault]) -> None:
        with self._lock:
            self._faults.extend(faults)

    def next_fault(self) -> Fault:
        with self._lock:
            return self._faults.popleft() if self._faults else {}

    def rule_fault(self, body: Any) -> Fault:
        for rule in self.rules:
            if _matches(body, rule.get("when") or {}):
                return dict(rule.get("fault") or {})
        return {}

    def gate(self, name: str) -> threading.Event:
        with self._lock:
            return self.gates.setdefault(name, threading.Event())

    def note_prompt(self, prompt: str, arrived: float) -> None:
        with self._lock:
            self.arrivals.append((arrived, prompt[:200]))
            if prompt in self.prompts or len(self.prompts) < 10_000:  # bounded: benches send many
                self.prompts[prompt] += 1

    def arrived(self) -> list[tuple[float, str]]:
        with self._lock:
            return list(self.arrivals)

    def count_failure(self, key: str, limit: int) -> bool:
        """True once ``key`` has already failed ``limit`` times (so this one succeeds)."""
        with self._lock:
            self._failures[key] += 1
            return self._failures[key] > limit

    def begin(self, path: str, headers: dict[str, str], peer: int) -> None:
        with self._lock:
            self.requests[path] += 1
            self.in_flight += 1
            self.peers.add(peer)
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.last_headers = headers
            for name in ("authorization", "x-api-key", "api-key", "x-goog-api-key"):
                for key, value in headers.items():
                    if key.lower() == name:
                        self.keys_seen[value] += 1

    def end(self, peer: int) -> None:
        with self._lock:
            self.in_flight -= 1
            self.peers.discard(peer)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": dict(self.requests), "total": sum(self.requests.values()),
                    "in_flight": self.in_flight, "max_in_flight": self.max_in_flight,
                    "keys_seen": dict(self.keys_seen), "last_headers": self.last_headers,
                    "faults_pending": len(self._faults), "peers_in_flight": sorted(self.peers),
                    "last_bytes_sent": self.last_bytes_sent, "prompts": dict(self.prompts)}

    def note_bytes(self, sent: int) -> None:
        self.last_bytes_sent = sent


class MockProvider:
    """Runs the mock server on a daemon thread of this process."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, words_per_second: float | None = None) -> None:
        self._server = _Server((host, port), words_per_second)
        bound, self.port = self._server.server_address[:2]
        assert isinstance(bound, str), "a bound IP socket's address is a str (bytes only when given as bytes)"
        self.host = bound
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def server(self) -> _Server:
        return self._server

    def start(self) -> "MockProvider":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="mock-provider", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> "MockProvider":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class MockProcess:
    """The mock provider in a child process, driven over its HTTP control endpoints.

    Tests and benchmarks use it so the upstream competes with neither the client nor
    the gateway for the GIL, exactly like a real remote provider would not.
    """

    def __init__(self, words_per_second: float | None = None, host: str = "127.0.0.1") -> None:
        import subprocess
        import sys

        cmd = [sys.executable, "-m", "actors.testing.mock_provider", "--host", host, "--port", "0"]
        if words_per_second:
            cmd += ["--words-per-second", str(words_per_second)]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        out = self._proc.stdout
        assert out is not None, "stdout=PIPE"
        self._out = out
        line = out.readline().strip()
        if not line.startswith("mock provider listening on "):
            self._proc.kill()
            raise RuntimeError(f"mock provider did not start: {line!r}")
        self.url = line.rsplit(" ", 1)[1]
        self._session: requests.Session | None = None

    def _control(self, path: str, doc: dict[str, Any] | None = None) -> dict[str, Any]:
        import requests

        if self._session is None:
            self._session = requests.Session()
        if doc is None:
            return self._session.get(self.url + path, timeout=5).json()
        return self._session.post(self.url + path, json=doc, timeout=5).json()

    def stats(self) -> dict[str, Any]:
        return self._control("/_mock/stats")

    def arrivals(self) -> list[tuple[float, str]]:
        """When each chat request arrived (unix time) and its last user message, oldest first."""
        rows: Any = self._control("/_mock/arrivals")   # a JSON list, not the object the other endpoints answer
        return [(float(t), str(p)) for t, p in rows]

    def script(self, faults: list[Fault]) -> None:
        self._control("/_mock/faults", {"faults": faults})

    def rules(self, rules: list[dict[str, Any]]) -> None:
        """Faults by request shape: [{"when": {"response_format": "*"}, "fault": {"status": 500, "body": "vllm"}}]."""
        self._control("/_mock/rules", {"rules": rules})

    def release(self, name: str) -> None:
        """Let every request held by ``hold=NAME`` answer, and the next ones pass."""
        self._control("/_mock/release", {"name": name})

    def accept_keys(self, keys: list[str] | None) -> None:
        self._control("/_mock/keys", {"keys": keys or []})

    def reset(self) -> None:
        self._control("/_mock/reset", {})

    def stop(self) -> None:
        if self._session is not None:
            self._session.close()
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except Exception:  # noqa: BLE001
            self._proc.kill()
            self._proc.wait(timeout=5)
        self._out.close()

    def __enter__(self) -> "MockProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the built-in mock LLM provider.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--words-per-second", type=float, default=None)
    args = parser.parse_args(argv)
    mock = MockProvider(args.host, args.port, args.words_per_second)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    mock.start()
    print(f"mock provider listening on {mock.url}", flush=True)
    stop.wait()
    mock.stop()


if __name__ == "__main__":
    main()
