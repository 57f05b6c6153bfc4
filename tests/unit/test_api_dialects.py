"""The dialects issue 24 added, as pure translations: the Responses API, legacy Completions,
Embeddings, count_tokens and model cards. Requests to the normalized call (and the 400s that
name the field), results back to each API's JSON and streamed events, validated with the SDKs'
own types in strict mode."""

from __future__ import annotations

import base64
import datetime as dt
import struct

import pytest
from anthropic.types import MessageTokensCount, ModelInfo
from openai.types import Completion, CreateEmbeddingResponse, Model
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from actors.core.tokens import count_messages, count_text
from actors.http import completions_dialect as cd
from actors.http import embeddings_dialect as ed
from actors.http import models as cards
from actors.http import responses_dialect as rd
from actors.http.errors import FrontDoorError, HttpError
from actors.http.keys import Caller
from actors.http.translate import Served
from actors.types import Choice, Completed, EmbeddingResult, TokenChunk, ToolCall, Usage

from sse_events import sse_events
from test_http_dialects import refused

EVENTS = TypeAdapter(ResponseStreamEvent)
WEATHER = {"type": "function", "name": "get_weather", "description": "weather",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
# Two tokens with their alternatives, as the runners hand them on (OpenAI's logprobs.content items).
LOGPROBS = [{"token": "He", "logprob": -0.25, "bytes": [72, 101],
             "top_logprobs": [{"token": "He", "logprob": -0.25, "bytes": [72, 101]},
                              {"token": "Hi", "logprob": -1.5, "bytes": [72, 105]}]},
            {"token": "llo", "logprob": -0.5, "bytes": None,
             "top_logprobs": [{"token": "llo", "logprob": -0.5, "bytes": None}]}]


# --- Responses: request -> normalized call ------------------------------------------------

def test_responses_string_input_with_instructions_and_options():
    call = rd.parse({"model": "m", "input": "hi", "instructions": "be brief", "max_output_tokens": 7,
                     "temperature": 0.5, "top_p": 1, "user": "u1", "reasoning": {"effort": "low"},
                     "parallel_tool_calls": False, "metadata": {"k": "v"}, "store": True, "stream": True})
    assert call.messages == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert call.params == {"max_tokens": 7, "temperature": 0.5, "top_p": 1, "user": "u1",
                           "reasoning_effort": "low", "parallel_tool_calls": False}
    assert call.stream and not call.logprobs


def test_responses_items_become_chat_turns_with_parallel_calls_in_one_assistant_turn():
    call = rd.parse({"model": "m", "input": [
        {"role": "developer", "content": "rules"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "weather in "},
                                                        {"type": "input_text", "text": "Paris and Rome?"}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call", "call_id": "c2", "name": "get_weather"},
        {"type": "function_call_output", "call_id": "c1", "output": "18C"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "21C"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Warm."}]}],
        "tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_weather"}})
    assert call.messages == [
        {"role": "system", "content": "rules"},
        {"role": "user", "content": "weather in Paris and Rome?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18C"},
        {"role": "tool", "tool_call_id": "c2", "content": "21C"},
        {"role": "assistant", "content": "Warm."}]
    assert call.params["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "weather", "parameters": WEATHER["parameters"]}}]
    assert call.params["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


def test_responses_text_format_is_chats_response_format():
    schema = {"type": "json_schema", "name": "city", "schema": {"type": "object"}, "strict": True}
    assert rd.parse({"model": "m", "input": "x", "text": {"format": schema}}).params["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "city", "schema": {"type": "object"}, "strict": True}}
    assert rd.parse({"model": "m", "input": "x", "text": {"format": {"type": "json_object"}}}).params[
        "response_format"] == {"type": "json_object"}
    assert "response_format" not in rd.parse({"model": "m", "input": "x", "text": {"format": {"type": "text"}}}).params


def test_responses_logprobs_are_asked_with_include_and_top_logprobs_alone_asks_nothing():
    asked = rd.parse({"model": "m", "input": "x", "include": ["message.output_text.logprobs"], "top_logprobs": 3})
    assert asked.logprobs and asked.params["logprobs"] is True and asked.params["top_logprobs"] == 3
    alone = rd.parse({"model": "m", "input": "x", "top_logprobs": 3})
    assert not alone.logprobs and "logprobs" not in alone.params and "top_logprobs" not in alone.params


@pytest.mark.parametrize("field, value", [("previous_response_id", "resp_1"), ("conversation", "conv_1"),
                                          ("background", True), ("prompt", {"id": "pmpt_1"})])
def test_responses_stateful_fields_are_refused_naming_the_field(field, value):
    err = refused(rd.parse, {"model": "m", "input": "x", field: value})
    assert err.param == field and "stateless" in err.message


@pytest.mark.parametrize("doc, param", [
    ({"model": "m"}, "input"),
    ({"model": "m", "input": []}, "input"),
    ({"input": "x"}, "model"),
    ({"model": "m", "input": "x", "modalities": ["text"]}, "modalities"),
    ({"model": "m", "input": "x", "include": ["file_search_call.results"]}, "include[0]"),
    ({"model": "m", "input": "x", "include": ["message.output_text.logprobs", "reasoning.encrypted_content"]},
     "include[1]"),
    ({"model": "m", "input": "x", "top_logprobs": 21}, "top_logprobs"),
    ({"model": "m", "input": "x", "truncation": "auto"}, "truncation"),
    ({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"model": "m", "input": "x", "tools": [WEATHER, {"type": "function"}]}, "tools[1].name"),
    ({"model": "m", "input": "x", "tool_choice": "sometimes"}, "tool_choice"),
    ({"model": "m", "input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type"),
    ({"model": "m", "input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
    ({"model": "m", "input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
    ({"model": "m", "input": ["x"]}, "input[0]"),
    ({"model": "m", "input": [{"role": "user", "content": [{"type": "input_text", "text": "a"},
                                                             {"type": "input_image", "image_url": "u"}]}]},
     "input[0].content[1]"),
    ({"model": "m", "input": [{"type": "function_call", "name": "f"}]}, "input[0]"),
    ({"model": "m", "input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
])
def test_responses_bad_requests_name_the_field(doc, param):
    assert refused(rd.parse, doc).param == param


# --- Responses: results -> Response JSON and typed events -----------------------------------

def _responses_call(**extra):
    return rd.parse({"model": "m", "input": "weather?", "instructions": "be brief", "tools": [WEATHER],
                     "max_output_tokens": 50, "metadata": {"team": "a"}, **extra})


def test_responses_render_text_and_a_call_validates_strictly_and_echoes_the_request():
    call = _responses_call()
    result = Completed("req_abc", "Checking.", "tool_calls", Usage(12, 5, cached_input_tokens=4, reasoning_tokens=2),
                       tool_calls=[ToolCall(0, "call_1", "get_weather", '{"city":"Paris"}')])
    doc = rd.render(result, call)
    response = Response.model_validate(doc, strict=True)
    assert response.id == "resp_abc" and response.status == "completed" and response.store is False
    assert [item.type for item in response.output] == ["message", "function_call"]
    assert response.output_text == "Checking."
    fc = response.output[1]
    assert (fc.call_id, fc.name, fc.arguments) == ("call_1", "get_weather", '{"city":"Paris"}')
    assert response.output[0].content[0].logprobs == []         # not asked for: none shown
    assert (response.instructions, response.max_output_tokens, response.metadata) == ("be brief", 50, {"team": "a"})
    assert response.tools[0].name == "get_weather"
    u = response.usage
    assert (u.input_tokens, u.output_tokens, u.total_tokens) == (12, 5, 17)
    assert (u.input_tokens_details.cached_tokens, u.output_tokens_details.reasoning_tokens) == (4, 2)
    assert "counted_by" not in doc["usage"]


@pytest.mark.parametrize("finish, status, reason", [("length", "incomplete", "max_output_tokens"),
                                                    ("content_filter", "incomplete", "content_filter"),
                                                    ("stop", "completed", None)])
def test_responses_status_follows_the_finish_reason(finish, status, reason):
    doc = rd.render(Completed("req_1", "cut", finish, Usage(3, 2)), _responses_call())
    response = Response.model_validate(doc, strict=True)
    assert response.status == status
    assert (response.incomplete_details.reason if response.incomplete_details else None) == reason


def test_responses_logprobs_in_the_output_text_part_when_asked():
    result = Completed("req_1", "Hello", "stop", Usage(3, 2), logprobs=LOGPROBS)
    doc = rd.render(result, _responses_call(include=["message.output_text.logprobs"], top_logprobs=2))
    part = Response.model_validate(doc, strict=True).output[0].content[0]
    assert [(p.token, p.logprob) for p in part.logprobs] == [("He", -0.25), ("llo", -0.5)]
    assert part.logprobs[1].bytes == list(b"llo")          # a token without bytes gets its UTF-8 bytes
    assert [(t.token, t.logprob) for t in part.logprobs[0].top_logprobs] == [("He", -0.25), ("Hi", -1.5)]
    unasked = rd.render(result, _responses_call())
    assert unasked["output"][0]["content"][0]["logprobs"] == []


def _stream(call, chunks, result) -> list[tuple[str | None, dict | str]]:
    enc = rd.StreamEncoder("req_s", call)
    body = enc.start() + b"".join(enc.chunk(c) for c in chunks) + b"".join(enc.end(result))
    return sse_events(body)


def test_responses_stream_text_then_a_call_is_typed_sequenced_and_ends_with_the_whole_response():
    call = _responses_call()
    chunks = [TokenChunk("req_s", 0, "Check"), TokenChunk("req_s", 1, "ing."),
              TokenChunk("req_s", 2, tool_calls=[{"index": 0, "id": "call_1", "name": "get_weather", "arguments": ""}]),
              TokenChunk("req_s", 3, tool_calls=[{"index": 0, "arguments": '{"city":'}]),
              TokenChunk("req_s", 4, tool_calls=[{"index": 0, "arguments": '"Paris"}'}])]
    result = Completed("req_s", "Checking.", "tool_calls", Usage(12, 5),
                       tool_calls=[ToolCall(0, "call_1", "get_weather", '{"city":"Paris"}')])
    got = _stream(call, chunks, result)
    for name, event in got:
        assert EVENTS.validate_python(event, strict=True).type == name
    assert [e["sequence_number"] for _, e in got] == list(range(len(got)))
    assert [name for name, _ in got] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    by_name = {}
    for name, event in got:
        by_name.setdefault(name, []).append(event)
    assert by_name["response.created"][0]["response"]["status"] == "in_progress"
    assert [e["output_index"] for e in by_name["response.output_item.added"]] == [0, 1]
    assert by_name["response.output_text.done"][0]["text"] == "Checking."
    assert by_name["response.function_call_arguments.done"][0]["arguments"] == '{"city":"Paris"}'
    final = Response.model_validate(by_name["response.completed"][0]["response"], strict=True)
    whole = Response.model_validate(rd.render(result, call), strict=True)
    assert [i.model_dump(exclude={"id"}) for i in final.output] == [i.model_dump(exclude={"id"}) for i in whole.output]
    assert final.usage == whole.usage and final.id == "resp_s"


def test_responses_stream_carries_logprobs_on_deltas_and_in_the_finished_part():
    call = _responses_call(include=["message.output_text.logprobs"], top_logprobs=2)
    got = _stream(call, [TokenChunk("req_s", 0, "He", logprobs=LOGPROBS[:1]),
                         TokenChunk("req_s", 1, "llo", logprobs=LOGPROBS[1:])],
                  Completed("req_s", "Hello", "stop", Usage(3, 2), logprobs=LOGPROBS))
    for name, event in got:
        EVENTS.validate_python(event, strict=True)
    deltas = [e for n, e in got if n == "response.output_text.delta"]
    assert [[x["token"] for x in d["logprobs"]] for d in deltas] == [["He"], ["llo"]]
    assert "bytes" not in deltas[0]["logprobs"][0]            # the stream events' ResponseLogProb shape
    assert [t["token"] for t in deltas[0]["logprobs"][0]["top_logprobs"]] == ["He", "Hi"]
    (done,) = [e for n, e in got if n == "response.output_text.done"]
    assert [x["token"] for x in done["logprobs"]] == ["He", "llo"]
    final = [e for n, e in got if n == "response.completed"][0]["response"]
    assert [x["token"] for x in final["output"][0]["content"][0]["logprobs"]] == ["He", "llo"]
    plain = _stream(_responses_call(), [TokenChunk("req_s", 0, "He", logprobs=LOGPROBS[:1])],
                    Completed("req_s", "He", "stop", Usage(3, 1)))
    assert [e["logprobs"] for n, e in plain if n == "response.output_text.delta"] == [[]]   # not asked: none shown


def test_responses_stream_that_hit_the_limit_ends_incomplete_and_an_error_is_an_error_event():
    got = _stream(_responses_call(), [TokenChunk("req_s", 0, "cut")], Completed("req_s", "cut", "length", Usage(3, 50)))
    name, last = got[-1]
    assert name == "response.incomplete" and last["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    EVENTS.validate_python(last, strict=True)
    enc = rd.StreamEncoder("req_s", _responses_call())
    (frame,) = list(enc.error(HttpError(502, "api_error", "api_error", "upstream_error", "upstream failed")))
    (name, event), = sse_events(frame)
    assert name == "error" and event["code"] == "upstream_error" and event["message"] == "upstream failed"
    EVENTS.validate_python(event, strict=True)


# --- legacy Completions ----------------------------------------------------------------------

def test_completions_prompt_is_one_user_turn_with_the_apis_defaults():
    call = cd.parse({"model": "m", "prompt": "Say hi", "temperature": 0, "stop": ["\n"], "seed": 3})
    assert call.messages == [{"role": "user", "content": "Say hi"}]
    assert call.params == {"max_tokens": 16, "temperature": 0, "stop": ["\n"], "seed": 3}   # 16: the API's default
    listed = cd.parse({"model": "m", "prompt": ["Say hi"], "max_tokens": 5, "logprobs": 2, "n": 3})
    assert listed.messages[0]["content"] == "Say hi"
    assert listed.params == {"max_tokens": 5, "logprobs": True, "top_logprobs": 2, "n": 3} and listed.logprobs


@pytest.mark.parametrize("doc, param", [
    ({"model": "m", "prompt": "x", "echo": True}, "echo"),
    ({"model": "m", "prompt": "x", "suffix": "end"}, "suffix"),
    ({"model": "m", "prompt": "x", "best_of": 2}, "best_of"),
    ({"model": "m", "prompt": ["a", "b"]}, "prompt"),
    ({"model": "m", "prompt": [[1, 2, 3]]}, "prompt"),
    ({"model": "m", "prompt": ""}, "prompt"),
    ({"model": "m"}, "prompt"),
    ({"model": "m", "prompt": "x", "logprobs": 6}, "logprobs"),
    ({"model": "m", "prompt": "x", "n": 2, "stream": True}, "n"),
    ({"model": "m", "prompt": "x", "functions": []}, "functions"),
])
def test_completions_bad_requests_name_the_field(doc, param):
    assert refused(cd.parse, doc).param == param


def test_completions_render_legacy_logprobs_and_several_choices():
    call = cd.parse({"model": "m", "prompt": "x", "logprobs": 2, "n": 2})
    result = Completed("req_c", "Hello", "tool_calls", Usage(4, 2), logprobs=LOGPROBS,
                       choices=[Choice(1, "Other", "length", logprobs=LOGPROBS[:1])])
    doc = cd.render(result, call, Served("dep-a"))
    completion = Completion.model_validate(doc, strict=True)
    assert completion.id == "cmpl-c" and completion.object == "text_completion"
    assert [(c.index, c.text, c.finish_reason) for c in completion.choices] == [(0, "Hello", "stop"),
                                                                               (1, "Other", "length")]
    lp = completion.choices[0].logprobs
    assert lp.tokens == ["He", "llo"] and lp.token_logprobs == [-0.25, -0.5]
    assert lp.top_logprobs == [{"He": -0.25, "Hi": -1.5}, {"llo": -0.5}]
    assert lp.text_offset == [0, 2]                       # where each token starts in the text
    assert completion.choices[1].logprobs.tokens == ["He"]
    assert completion.system_fingerprint == Served("dep-a").fingerprint()
    assert cd.render(result, cd.parse({"model": "m", "prompt": "x"}))["choices"][0]["logprobs"] is None


def test_completions_stream_frames_then_usage_then_done():
    call = cd.parse({"model": "m", "prompt": "x", "stream": True, "stream_options": {"include_usage": True},
                     "logprobs": 1})
    enc = cd.StreamEncoder("req_c", call, Served("dep-a"))
    body = (enc.start() + enc.chunk(TokenChunk("req_c", 0, "He", logprobs=LOGPROBS[:1]))
            + enc.chunk(TokenChunk("req_c", 1, tool_calls=[{"index": 0, "arguments": "{}"}]))   # no text: no frame
            + enc.chunk(TokenChunk("req_c", 2, "llo", logprobs=LOGPROBS[1:]))
            + b"".join(enc.end(Completed("req_c", "Hello", "stop", Usage(4, 2)))))
    got = sse_events(body)
    assert got[-1] == (None, "[DONE]")
    # The API streams "finish_reason": null until the last text frame, which its own schema (and
    # so the SDK's type) does not allow: those frames are checked with the reason filled in.
    assert [d["choices"][0]["finish_reason"] for _, d in got[:2]] == [None, None]
    docs = [Completion.model_validate({**d, "choices": [{**c, "finish_reason": c["finish_reason"] or "stop"}
                                                        for c in d["choices"]]}, strict=True) for _, d in got[:-1]]
    assert [d.choices[0].text for d in docs[:2]] == ["He", "llo"]
    assert [d.choices[0].logprobs.tokens for d in docs[:2]] == [["He"], ["llo"]]
    assert docs[2].choices[0].finish_reason == "stop" and docs[2].choices[0].text == ""
    assert docs[3].choices == [] and (docs[3].usage.prompt_tokens, docs[3].usage.completion_tokens) == (4, 2)
    assert {d.id for d in docs} == {"cmpl-c"}


# --- Embeddings ------------------------------------------------------------------------------

def test_embeddings_request_shapes():
    one = ed.parse({"model": "e", "input": "one text"})
    assert (one.texts, one.base64, one.dimensions) == (["one text"], False, None)
    many = ed.parse({"model": "e", "input": ["a", "b"], "encoding_format": "base64", "dimensions": 16,
                     "user": "u", "input_type": "search_query", "fallbacks": ["e2"]})
    assert (many.texts, many.base64, many.dimensions, many.user) == (["a", "b"], True, 16, "u")
    assert many.extra == {"input_type": "search_query"} and many.fallbacks == ["e2"]
    assert many.messages == [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]


@pytest.mark.parametrize("doc, param", [
    ({"model": "e", "input": []}, "input"),
    ({"model": "e", "input": ["a", 3]}, "input[1]"),
    ({"model": "e", "input": [[1, 2]]}, "input[0]"),
    ({"model": "e", "input": ["a", ""]}, "input[1]"),
    ({"model": "e", "input": ["a"] * (ed.MAX_INPUTS + 1)}, "input"),
    ({"model": "e", "input": "a", "encoding_format": "int8"}, "encoding_format"),
    ({"model": "e", "input": "a", "dimensions": 0}, "dimensions"),
    ({"model": "e", "input": "a", "dimensions": "8"}, "dimensions"),
    ({"model": "e", "input": "a", "normalize": True}, "normalize"),
    ({"input": "a"}, "model"),
])
def test_embeddings_bad_requests_name_the_field(doc, param):
    assert refused(ed.parse, doc).param == param


VECTORS = [[0.5, -0.25, 0.125], [1.0, 0.0, -1.0]]


def test_embeddings_render_float_and_base64_agree():
    result = EmbeddingResult(VECTORS, Usage(7, 0), 1e-6)
    floats = CreateEmbeddingResponse.model_validate(ed.render(result, ed.parse({"model": "e", "input": ["a", "b"]})),
                                                    strict=True)
    assert [d.embedding for d in floats.data] == VECTORS and [d.index for d in floats.data] == [0, 1]
    assert (floats.usage.prompt_tokens, floats.usage.total_tokens) == (7, 7) and floats.model == "e"
    doc = ed.render(result, ed.parse({"model": "e", "input": ["a", "b"], "encoding_format": "base64"}))
    for item, vector in zip(doc["data"], VECTORS):
        raw = base64.b64decode(item["embedding"])
        assert raw == struct.pack("<3f", *vector)          # little-endian float32, as the openai SDK decodes
    assert "counted_by" not in doc["usage"]


def test_embeddings_usage_counted_when_the_provider_reports_none():
    texts = ["hello world", "the quick brown fox"]
    result = EmbeddingResult(VECTORS, Usage(0, 0, reported=False), None)
    call = ed.parse({"model": "e", "input": texts})
    doc = ed.render(result, call)
    CreateEmbeddingResponse.model_validate(doc, strict=True)
    expected = count_text("hello world") + count_text("the quick brown fox")
    assert doc["usage"] == {"prompt_tokens": expected, "total_tokens": expected, "counted_by": "gateway:o200k_base"}
    assert expected == 2 + 4      # o200k_base: "hello world" and "the quick brown fox"


# --- count_tokens and model cards -----------------------------------------------------------

TEAM = Caller("team", frozenset({"claude", "gpt"}))


def test_count_tokens_counts_the_prompt_as_it_would_be_sent():
    tools = [{"name": "get_weather", "description": "weather", "input_schema": {"type": "object"}}]
    doc = cards.count_tokens({"model": "claude", "system": "be brief", "tools": tools,
                              "messages": [{"role": "user", "content": [{"type": "text", "text": "hi there"}]}]},
                             ["claude", "gpt"], TEAM)
    MessageTokensCount.model_validate(doc, strict=True)
    chat_tools = [{"type": "function", "function": {"name": "get_weather", "description": "weather",
                                                    "parameters": {"type": "object"}}}]
    assert doc["input_tokens"] == count_messages([{"role": "system", "content": "be brief"},
                                                  {"role": "user", "content": "hi there"}], chat_tools)
    bare = cards.count_tokens({"model": "claude", "messages": [{"role": "user", "content": "hi there"}]},
                              ["claude"], TEAM)["input_tokens"]
    assert bare < doc["input_tokens"] and doc["counted_by"] == "gateway:o200k_base"


@pytest.mark.parametrize("doc, models, status, param", [
    ({"model": "nope", "messages": [{"role": "user", "content": "x"}]}, ["claude"], 404, "model"),
    ({"model": "other", "messages": [{"role": "user", "content": "x"}]}, ["other"], 403, "model"),
    ({"model": "claude", "messages": []}, ["claude"], 400, "messages"),
    ({"model": "claude", "messages": [{"role": "user", "content": [{"type": "image"}]}]}, ["claude"], 400,
     "messages[0].content[0]"),
])
def test_count_tokens_refusals(doc, models, status, param):
    with pytest.raises(FrontDoorError) as caught:
        cards.count_tokens(doc, models, TEAM)
    assert (caught.value.status, caught.value.param) == (status, param)


def test_model_cards_have_real_dates_or_the_serving_start_never_1970():
    started = 1_800_000_000
    deck = cards.ModelCards(["claude", "gpt", "mine"], {"gpt": "gpt-4o-mini-2024-07-18", "claude": "unknown-x",
                                                        "mine": "my-finetune"}, started_unix=started)
    assert cards.release_date("gpt-4o-mini-2024-07-18") == dt.date(2024, 7, 18)
    gpt = Model.model_validate(deck.card("gpt", TEAM, anthropic=False), strict=True)
    assert gpt.created == int(dt.datetime(2024, 7, 18, tzinfo=dt.timezone.utc).timestamp())
    claude = ModelInfo.model_validate(deck.card("claude", TEAM, anthropic=True))
    assert claude.created_at == dt.datetime.fromtimestamp(started, dt.timezone.utc)
    listing = deck.listing(TEAM, anthropic=False)
    assert [c["id"] for c in listing["data"]] == ["claude", "gpt"]          # the key's allow-list only
    assert deck.listing(TEAM, anthropic=True)["first_id"] == "claude"
    with pytest.raises(FrontDoorError) as caught:
        deck.card("mine", TEAM, anthropic=False)    # outside the allow-list reads as absent
    assert caught.value.status == 404
