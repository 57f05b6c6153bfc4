"""The front door's pure parts: both dialects to the normalized call and back, errors, keys."""

from __future__ import annotations

import hashlib
import json

import pytest

from actors import errors as E
from actors.http import anthropic_dialect as ad
from actors.http import openai_dialect as od
from actors.http.errors import FrontDoorError, anthropic_body, http_error, openai_body
from actors.http.keys import KeyRing, new_key, presented_key
from actors.http.translate import Call, parse_json
from actors.providers.anthropic import to_anthropic_messages
from actors.settings.loader import build
from actors.settings.schema import HttpConfig
from actors.types import Completed, TokenChunk, ToolCall, Usage

HI = [{"role": "user", "content": "hi"}]
CALL = Call("m", HI)


def refused(parse, doc) -> FrontDoorError:
    with pytest.raises(FrontDoorError) as caught:
        parse(doc)
    assert caught.value.status == 400
    return caught.value


# --- OpenAI ---------------------------------------------------------------------------

def test_openai_request_to_the_normalized_call():
    call = od.parse({"model": "m", "messages": [{"role": "developer", "content": "be brief"}] + HI,
                     "max_completion_tokens": 9, "temperature": 0, "stream": True,
                     "stream_options": {"include_usage": True}, "tools": [{"type": "function",
                                                                        "function": {"name": "f"}}]})
    assert call.messages[0] == {"role": "system", "content": "be brief"}
    assert call.params == {"max_tokens": 9, "temperature": 0, "tools": [{"type": "function", "function": {"name": "f"}}]}
    assert call.stream and call.include_usage


@pytest.mark.parametrize("doc, param", [
    ({"model": "m", "messages": HI, "n": 2, "stream": True}, "n"),
    ({"model": "m", "messages": HI, "temperature": "hot"}, "temperature"),
    ({"model": "m", "messages": HI, "max_tokens": True}, "max_tokens"),
    ({"model": 3, "messages": HI}, "model"),
    ({"messages": HI}, "model"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id"),
    ({"model": "m", "messages": HI, "logprobs": "yes"}, "logprobs"),
])
def test_openai_bad_requests_name_the_field(doc, param):
    assert refused(od.parse, doc).param == param


def test_parse_json_refuses_what_is_not_an_object():
    for raw in (b"{", b"[1]", b"\xff", b"null"):
        assert refused(parse_json, raw).code == "invalid_json"


def test_openai_render_and_stream_frames():
    done = Completed("req_abc", "", "tool_calls", Usage(3, 4, cached_input_tokens=1),
                     tool_calls=[ToolCall(0, "call_1", "f", '{"a":1}')])
    doc = od.render(done, CALL)
    message = doc["choices"][0]["message"]
    assert doc["id"] == "chatcmpl-abc" and message["content"] is None
    assert message["tool_calls"] == [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}]
    assert doc["usage"]["total_tokens"] == 7 and doc["usage"]["prompt_tokens_details"]["cached_tokens"] == 1
    enc = od.StreamEncoder("req_abc", Call("m", HI, include_usage=True))
    frames = [enc.start(), enc.chunk(TokenChunk("req_abc", 0, "He")),
              enc.chunk(TokenChunk("req_abc", 1, tool_calls=[{"index": 0, "id": "c", "name": "f", "arguments": ""}])),
              *enc.end(Completed("req_abc", "He", "stop", Usage(1, 2)))]
    docs = [json.loads(f[len(b"data: "):]) for f in frames[:-1]]
    assert frames[-1] == b"data: [DONE]\n\n"
    assert docs[1]["choices"][0]["delta"] == {"content": "He"}
    assert docs[2]["choices"][0]["delta"]["tool_calls"][0] == {"index": 0, "id": "c", "type": "function",
                                                               "function": {"name": "f", "arguments": ""}}
    assert docs[3]["choices"][0]["finish_reason"] == "stop" and docs[3]["usage"] is None
    assert docs[4]["choices"] == [] and docs[4]["usage"]["completion_tokens"] == 2
    error = list(enc.error(http_error(E.StreamError("cut"))))
    assert json.loads(error[0][len(b"data: "):])["error"]["code"] == "upstream_stream_broken"


# --- Anthropic ------------------------------------------------------------------------

CONVERSATION = [
    {"role": "user", "content": "weather?"},
    {"role": "assistant", "content": [{"type": "text", "text": "checking"},
                                      {"type": "tool_use", "id": "tu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "tu_1", "content": "18C"},
                                 {"type": "text", "text": "and tomorrow?"}]},
]


def test_anthropic_request_to_openai_turns_and_back_unchanged():
    call = ad.parse({"model": "m", "max_tokens": 10, "system": [{"type": "text", "text": "brief"}],
                     "messages": CONVERSATION, "stop_sequences": ["END"], "tool_choice": {"type": "any"},
                     "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
                     "metadata": {"user_id": "u1"}})
    assert call.messages[0] == {"role": "system", "content": "brief"}
    assert call.messages[2]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert call.messages[3] == {"role": "tool", "tool_call_id": "tu_1", "content": "18C"}
    assert call.params == {"max_tokens": 10, "stop": ["END"], "tool_choice": "required", "user": "u1",
                           "tools": [{"type": "function", "function": {"name": "get_weather", "description": "",
                                                                       "parameters": {"type": "object"}}}]}
    # Served by an Anthropic deployment, the turns become the very blocks the caller sent.
    again = to_anthropic_messages(call.messages[1:])
    assert again[1]["content"] == CONVERSATION[1]["content"]
    assert again[2]["content"] == [{"type": "tool_result", "tool_use_id": "tu_1", "content": "18C"},
                                   {"type": "text", "text": "and tomorrow?"}]


@pytest.mark.parametrize("doc, param", [
    ({"model": "m", "messages": HI}, "max_tokens"),
    ({"model": "m", "max_tokens": 0, "messages": HI}, "max_tokens"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
    ({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "image"}]}]},
     "messages[0].content[0]"),
    ({"model": "m", "max_tokens": 5, "messages": HI, "tool_choice": {"type": "sometimes"}}, "tool_choice"),
])
def test_anthropic_bad_requests_name_the_field(doc, param):
    assert refused(ad.parse, doc).param == param


def _events(frames: list[bytes]) -> list[tuple[str, dict]]:
    out = []
    for frame in b"".join(frames).decode().split("\n\n"):
        if frame:
            head, data = frame.split("\n")
            out.append((head[len("event: "):], json.loads(data[len("data: "):])))
    return out


def test_anthropic_stream_blocks_text_then_a_tool_call():
    enc = ad.StreamEncoder("req_x", CALL)
    frames = [enc.start(), enc.chunk(TokenChunk("req_x", 0, "Hel")), enc.chunk(TokenChunk("req_x", 1, "lo")),
              enc.chunk(TokenChunk("req_x", 2, tool_calls=[{"index": 0, "id": "t", "name": "f", "arguments": '{"a"'}])),
              enc.chunk(TokenChunk("req_x", 3, tool_calls=[{"index": 0, "arguments": ":1}"}])),
              *enc.end(Completed("req_x", "Hello", "tool_calls", Usage(5, 6)))]
    events = _events(frames)
    assert [name for name, _ in events] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta", "content_block_stop",
        "message_delta", "message_stop"]
    assert all(doc["type"] == name for name, doc in events)
    assert events[5][1] == {"type": "content_block_start", "index": 1,
                            "content_block": {"type": "tool_use", "id": "t", "name": "f", "input": {}}}
    assert "".join(d["delta"]["partial_json"] for n, d in events[6:8]) == '{"a":1}'
    assert events[9][1]["delta"]["stop_reason"] == "tool_use" and events[9][1]["usage"]["output_tokens"] == 6
    assert _events(list(enc.error(http_error(E.Overloaded("busy")))))[0] == (
        "error", {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}})


def test_anthropic_render_reports_cache_reads_apart():
    doc = ad.render(Completed("req_y", "hi", "length", Usage(10, 2, cached_input_tokens=4)), CALL)
    assert doc["stop_reason"] == "max_tokens" and doc["content"] == [{"type": "text", "text": "hi"}]
    assert doc["usage"]["input_tokens"] == 6 and doc["usage"]["cache_read_input_tokens"] == 4


# --- errors ---------------------------------------------------------------------------

@pytest.mark.parametrize("error, status, kind", [
    (E.BadRequest("x"), 400, "invalid_request_error"), (E.ContextLengthExceeded("x"), 400, "invalid_request_error"),
    (E.NotFound("x"), 404, "not_found_error"), (E.RateLimited("x", retry_after_s=7), 429, "rate_limit_error"),
    (E.QueueFull("x"), 429, "rate_limit_error"), (E.BudgetExceeded("x"), 429, "rate_limit_error"),
    (E.Overloaded("x"), 529, "overloaded_error"), (E.CircuitOpen("x"), 503, "overloaded_error"),
    (E.ServerError("x"), 502, "api_error"), (E.AuthenticationError("x"), 502, "api_error"),
    (E.DeadlineExceeded("x"), 504, "timeout_error"), (E.GatewayTimeout("x"), 504, "timeout_error"),
    (E.PermissionDenied("x"), 403, "permission_error"), (E.ShuttingDown("x", retryable=True), 503, "api_error"),
])
def test_typed_errors_map_to_the_status_the_sdks_expect(error, status, kind):
    err = http_error(error)
    assert (err.status, err.anthropic_type) == (status, kind)
    headers = dict(err.headers())
    assert ("retry-after" in headers) == (status in (429, 503, 529))
    if isinstance(error, E.RateLimited):
        assert headers["retry-after"] == "7" and headers["retry-after-ms"] == "7000"
    assert set(openai_body(err)["error"]) == {"message", "type", "code", "param"}
    assert anthropic_body(err) == {"type": "error", "error": {"type": kind, "message": "x"}}


def test_every_error_class_has_an_http_form_and_a_bug_shows_no_detail():
    for cls in E.ALL_ERROR_CLASSES:
        assert 400 <= http_error(cls("m")).status <= 599 or cls is E.Cancelled
    bug = http_error(KeyError("sk-secret"))
    assert bug.status == 500 and "sk-secret" not in bug.message


def test_a_refusal_the_sdk_cannot_fix_by_retrying_says_so():
    assert dict(http_error(E.ServerError("x", retryable=False)).headers())["x-should-retry"] == "false"
    assert dict(http_error(E.ServerError("x")).headers())["x-should-retry"] == "true"


# --- keys -----------------------------------------------------------------------------

def test_new_key_and_its_sha256_line():
    key, line = new_key()
    assert line == "sha256: " + hashlib.sha256(key.encode()).hexdigest() and key not in line
    assert new_key()[0] != key


def test_keyring_accepts_each_source_and_shows_no_key(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    config = build(HttpConfig, {"listen": "127.0.0.1:4000", "keys": [
        {"name": "a", "key": {"value": "from-value"}},
        {"name": "b", "key": {"env": "MY_KEY"}, "models": ["m1"]},
        {"name": "c", "key": {"file": str(key_file)}},
        {"name": "d", "key": {"sha256": hashlib.sha256(b"from-digest").hexdigest()}}]}, "http")
    ring = KeyRing(config, environ={"MY_KEY": "from-env"})
    assert [ring.check(k).name for k in ("from-value", "from-env", "from-file", "from-digest")] == list("abcd")
    assert ring.check("nope") is None and ring.check(None) is None
    assert ring.check("from-env").may_use("m1") and not ring.check("from-env").may_use("m2")
    assert "from" not in repr(ring) and "from" not in repr(config)


def test_auth_none_lets_anyone_in():
    ring = KeyRing(build(HttpConfig, {"listen": "127.0.0.1:4000", "auth": "none"}, "http"))
    assert ring.check(None).name == "anonymous" and ring.check("anything").name == "anonymous"


def test_presented_key_from_either_header():
    assert presented_key({"authorization": "Bearer sk-1"}) == "sk-1"
    assert presented_key({"authorization": "bearer  sk-2 "}) == "sk-2"
    assert presented_key({"x-api-key": "sk-3"}) == "sk-3"
    assert presented_key({"authorization": "Basic abc"}) is None
