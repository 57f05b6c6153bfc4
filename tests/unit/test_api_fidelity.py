"""Fidelity of the existing dialects and the runners behind them (issue 24), as pure code: usage
the gateway counts itself and marks (``counted_by``), content blocks flattened for servers that
take strings, ``stop_sequence`` as Anthropic reports it, log probabilities from each provider's
shape to each dialect's, refusals of what a deployment cannot do, and embeddings on each
provider's wire with GatewayClient.embed's batching."""

from __future__ import annotations

import base64
import json
import struct

import pytest
from anthropic.types import Message, RawMessageStreamEvent
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import TypeAdapter

from actors import errors as E
from actors.client import DEFAULT_EMBED_BATCH, embed_batch_of, embed_batches, merged_embeddings
from actors.core.sse import SseChunk
from actors.core.tokens import count_messages, count_text
from actors.http import anthropic_dialect as ad
from actors.http import openai_dialect as od
from actors.http.translate import Call, Served
from actors.http.usage import COUNTED_BY, shown_usage, usage_header
from actors.providers.base import StreamAccumulator
from actors.providers.embeddings import EmbeddingCall
from actors.runtime.protocol import WorkerResult
from actors.runtime.protocol.routing import RouteEntry
from actors.types import Choice, Completed, InferenceRequest, TokenChunk, ToolCall, Usage

from harness import Rig
from sse_events import sse_events
from test_providers_wire import body_of, credential, runner_for

HI = [{"role": "user", "content": "hello world"}]
UNREPORTED = Usage(0, 0, reported=False)
STREAM_EVENTS = TypeAdapter(RawMessageStreamEvent)


def event(name: str, doc: dict) -> SseChunk:
    return SseChunk(name, json.dumps(doc), "", None)


# --- the gateway's own token counts and their marker --------------------------------------------

def test_o200k_counts_are_the_real_tokenizers():
    assert count_text("") == 0
    assert count_text("hello world") == 2 and count_text("the quick brown fox") == 4
    # OpenAI's chat accounting: 3 per message (role counted as text) and 3 to prime the reply.
    assert count_messages(HI) == 3 + (3 + count_text("user") + 2)
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert count_messages(HI, tools) == count_messages(HI) + count_text(json.dumps(tools, separators=(",", ":")))


def test_every_part_of_a_chat_prompt_is_counted_once():
    c = count_text
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "look at "}, {"type": "image_url", "image_url": {}},
                                     {"type": "text", "text": "this"}, "stray", {"type": "text", "text": 5}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
            {"id": "c2", "type": "function"}]},
        {"role": "tool", "content": "18C", "tool_call_id": "c1"},
        {"content": "no role"},
    ]
    expected = (3 + (3 + c("system") + c("be brief")) + (3 + c("user") + c("look at this"))
                + (3 + c("assistant") + c("get_weather") + c('{"city":"Paris"}')) + (3 + c("tool") + c("18C"))
                + (3 + c("no role")))
    assert count_messages(messages) == expected
    assert count_messages([]) == 3 and count_messages(messages, tools=[]) == expected


def test_reported_usage_is_shown_as_reported_and_unmarked():
    usage = Usage(11, 7, cached_input_tokens=2)
    shown = shown_usage(Completed("r", "some answer", "stop", usage), HI)
    assert shown.usage is usage and shown.counted_by is None and shown.mark({}) == {}
    assert usage_header(shown) == ("x-atomr-usage", "reported")


def test_unreported_usage_is_counted_over_the_prompt_and_every_part_of_the_answer():
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    result = Completed("r", "It is warm", "tool_calls", UNREPORTED,
                       tool_calls=[ToolCall(0, "c1", "get_weather", '{"city":"Paris"}')],
                       choices=[Choice(1, "Another answer", "stop")])
    shown = shown_usage(result, HI, {"tools": tools})
    assert shown.counted_by == COUNTED_BY == "gateway:o200k_base"
    assert shown.usage.input_tokens == count_messages(HI, tools)
    assert shown.usage.output_tokens == count_text('It is warmget_weather{"city":"Paris"}Another answer')
    assert usage_header(shown) == ("x-atomr-usage", "counted; tokenizer=o200k_base")
    # Never a made-up zero for an answer that had text.
    assert shown.usage.input_tokens > 0 and shown.usage.output_tokens > 0


def test_openai_whole_and_streamed_usage_agree_and_carry_the_marker():
    call = od.parse({"model": "m", "messages": HI, "stream": True, "stream_options": {"include_usage": True}})
    result = Completed("req_u", "Hi there", "stop", UNREPORTED)
    whole = od.render(result, call, Served("llama"))
    ChatCompletion.model_validate(whole, strict=True)
    assert whole["usage"]["counted_by"] == COUNTED_BY
    assert (whole["usage"]["prompt_tokens"], whole["usage"]["completion_tokens"]) == (count_messages(HI),
                                                                                       count_text("Hi there"))
    enc = od.StreamEncoder("req_u", call, Served("llama"))
    docs = [d for _, d in sse_events(enc.start() + enc.chunk(TokenChunk("req_u", 0, "Hi there"))
                                   + b"".join(enc.end(result)))]
    assert docs[-1] == "[DONE]"
    for doc in docs[:-1]:
        ChatCompletionChunk.model_validate(doc, strict=True)
    assert docs[-2]["choices"] == [] and docs[-2]["usage"] == whole["usage"]
    assert {d["system_fingerprint"] for d in docs[:-1]} == {whole["system_fingerprint"]}
    reported = od.render(Completed("req_u", "Hi there", "stop", Usage(9, 2)), call)
    assert "counted_by" not in reported["usage"] and reported["usage"]["total_tokens"] == 11


def test_anthropic_stream_starts_with_the_counted_prompt_and_ends_with_the_whole_answers_usage():
    call = ad.parse({"model": "m", "max_tokens": 20, "system": "be brief", "messages": HI, "stream": True})
    result = Completed("req_a", "Hi there", "stop", UNREPORTED)
    enc = ad.StreamEncoder("req_a", call)
    got = sse_events(enc.start() + enc.chunk(TokenChunk("req_a", 0, "Hi there")) + b"".join(enc.end(result)))
    for name, event in got:
        assert STREAM_EVENTS.validate_python(event, strict=True).type == name
    start = got[0][1]["message"]["usage"]
    prompt = count_messages([{"role": "system", "content": "be brief"}, *HI])
    assert start["input_tokens"] == prompt and start["counted_by"] == COUNTED_BY
    whole = ad.render(result, call)
    Message.model_validate(whole, strict=True)
    (delta,) = [e for n, e in got if n == "message_delta"]
    assert delta["usage"] == whole["usage"] and whole["usage"]["input_tokens"] == prompt
    assert whole["usage"]["output_tokens"] == count_text("Hi there")
    # The provider's figures when it reports them; the start is still the gateway's count, marked.
    reported = ad.render(Completed("req_a", "Hi there", "stop", Usage(30, 4, cached_input_tokens=10)), call)
    assert reported["usage"] == {"input_tokens": 20, "output_tokens": 4, "cache_read_input_tokens": 10,
                                 "cache_creation_input_tokens": 0}


# --- content blocks flattened for servers that take strings ------------------------------------

TWO_BLOCKS = {"model": "m", "max_tokens": 9, "messages": [{"role": "user", "content": [
    {"type": "text", "text": "first part"}, {"type": "text", "text": "second"}]}]}


def test_text_blocks_reach_a_compatible_server_as_one_string_and_others_as_parts():
    call = ad.parse(TWO_BLOCKS)
    assert call.messages == [{"role": "user", "content": [{"type": "text", "text": "first part"},
                                                          {"type": "text", "text": "second"}]}]
    request = InferenceRequest("m", call.messages, call.params)
    sent = json.loads(runner_for("openai_compatible").build_request(request, credential("openai_compatible")).body)
    assert sent["messages"] == [{"role": "user", "content": "first part\n\nsecond"}]
    assert request.messages == call.messages                # the request itself is left as it was
    kept = json.loads(runner_for("openai").build_request(request, credential("openai")).body)
    assert kept["messages"] == call.messages                # OpenAI takes parts: passed on as they are
    mixed = [{"role": "user", "content": [{"type": "text", "text": "look"},
                                          {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]
    assert body_of("openai_compatible", messages=mixed)["messages"] == mixed   # not all text: untouched


# --- stop_sequence as Anthropic reports it --------------------------------------------------------

def _stops(*stops: str) -> Call:
    return ad.parse({"model": "m", "max_tokens": 9, "messages": HI, "stop_sequences": list(stops)})


@pytest.mark.parametrize("result, call, expected", [
    (Completed("r", "a", "stop", Usage(1, 1), stop_sequence="END"), _stops("END", "STOP"), ("stop_sequence", "END")),
    (Completed("r", "a", "stop", Usage(1, 1), raw_finish_reason="STOP_SEQUENCE"), _stops("END"),
     ("stop_sequence", "END")),                       # Cohere and Bedrock say only that one was met: one was given
    (Completed("r", "a", "stop", Usage(1, 1), raw_finish_reason="stop_sequence"), _stops("END", "STOP"),
     ("end_turn", None)),                             # ...and with two given, which one is unknown
    (Completed("r", "a", "stop", Usage(1, 1)), _stops("END"), ("end_turn", None)),
    (Completed("r", "a", "length", Usage(1, 1), stop_sequence="END"), _stops("END"), ("max_tokens", None)),
    (Completed("r", "", "tool_calls", Usage(1, 1)), _stops(), ("tool_use", None)),
])
def test_stop_reason_and_sequence(result, call, expected):
    assert ad.stop_of(result, call) == expected
    rendered = ad.render(result, call)
    Message.model_validate(rendered, strict=True)
    assert (rendered["stop_reason"], rendered["stop_sequence"]) == expected
    enc = ad.StreamEncoder("r", call)
    (delta,) = [e for n, e in sse_events(enc.start() + b"".join(enc.end(result))) if n == "message_delta"]
    assert (delta["delta"]["stop_reason"], delta["delta"]["stop_sequence"]) == expected


def test_runners_read_which_stop_sequence_ended_the_answer():
    anthropic = runner_for("anthropic")
    whole = anthropic.parse_response(json.dumps({
        "content": [{"type": "text", "text": "1, 2, 3, 4, "}], "stop_reason": "stop_sequence", "stop_sequence": "5",
        "usage": {"input_tokens": 5, "output_tokens": 8}}).encode())
    assert (whole.finish_reason, whole.stop_sequence) == ("stop", "5")
    (delta,) = anthropic.translate(event("message_delta", {
        "type": "message_delta", "delta": {"stop_reason": "stop_sequence", "stop_sequence": "5"},
        "usage": {"output_tokens": 8}}), {})
    assert delta.stop_sequence == "5"
    vllm = runner_for("openai_compatible")
    named = vllm.parse_response(json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "1, 2"},
                                                         "finish_reason": "stop", "stop_reason": "5"}]}).encode())
    assert named.stop_sequence == "5"
    token = vllm.parse_response(json.dumps({"choices": [{"index": 0, "message": {"content": "x"},
                                                         "finish_reason": "stop", "stop_reason": 128009}]}).encode())
    assert token.stop_sequence is None                # a stop token id is not a stop sequence
    (streamed,) = vllm.translate(event("message", {"choices": [
        {"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "5"}]}), {})
    assert streamed.stop_sequence == "5"
    acc = StreamAccumulator()
    acc.add(streamed)
    assert acc.stop_sequence == "5"


# --- log probabilities: each provider's shape in, each dialect's out --------------------------

ITEMS = [{"token": "Hel", "logprob": -0.1, "bytes": [72, 101, 108],
          "top_logprobs": [{"token": "Hel", "logprob": -0.1, "bytes": [72, 101, 108]},
                           {"token": "Hi", "logprob": -2.5, "bytes": [72, 105]}]},
         {"token": "lo", "logprob": -0.3, "bytes": [108, 111],
          "top_logprobs": [{"token": "lo", "logprob": -0.3, "bytes": [108, 111]},
                           {"token": "p", "logprob": -3.0, "bytes": [112]}]}]


def test_chat_logprobs_rendered_in_their_place_only_when_asked():
    asked = od.parse({"model": "m", "messages": HI, "logprobs": True, "top_logprobs": 2, "n": 2})
    assert asked.params == {"logprobs": True, "top_logprobs": 2, "n": 2} and asked.logprobs
    result = Completed("req_l", "Hello", "stop", Usage(3, 2), logprobs=ITEMS,
                       choices=[Choice(1, "Help", "length", logprobs=ITEMS[:1])])
    doc = ChatCompletion.model_validate(od.render(result, asked), strict=True)
    assert [c.index for c in doc.choices] == [0, 1] and doc.choices[1].finish_reason == "length"
    assert [(i.token, i.logprob) for i in doc.choices[0].logprobs.content] == [("Hel", -0.1), ("lo", -0.3)]
    assert [t.token for t in doc.choices[0].logprobs.content[0].top_logprobs] == ["Hel", "Hi"]
    assert [i.token for i in doc.choices[1].logprobs.content] == ["Hel"]
    plain = od.parse({"model": "m", "messages": HI, "logprobs": False})
    assert "logprobs" not in plain.params                 # false is the default: not sent on
    assert od.render(result, plain)["choices"][0]["logprobs"] is None
    enc = od.StreamEncoder("req_l", od.parse({"model": "m", "messages": HI, "logprobs": True, "stream": True}))
    (chunk,) = [d for _, d in sse_events(enc.chunk(TokenChunk("req_l", 0, "Hel", logprobs=ITEMS[:1])))]
    ChatCompletionChunk.model_validate(chunk, strict=True)
    assert chunk["choices"][0]["logprobs"]["content"][0]["token"] == "Hel"
    quiet = od.StreamEncoder("req_l", od.parse({"model": "m", "messages": HI, "stream": True}))
    (chunk,) = [d for _, d in sse_events(quiet.chunk(TokenChunk("req_l", 0, "Hel", logprobs=ITEMS[:1])))]
    assert chunk["choices"][0]["logprobs"] is None


def test_top_logprobs_needs_logprobs():
    with pytest.raises(Exception) as caught:
        od.parse({"model": "m", "messages": HI, "top_logprobs": 2})
    assert caught.value.param == "top_logprobs" and caught.value.status == 400


def test_gemini_logprobs_and_candidates_whole_and_streamed():
    gemini = runner_for("gemini")
    config = body_of("gemini", messages=HI, logprobs=True, top_logprobs=2, n=2)["generationConfig"]
    assert (config["responseLogprobs"], config["logprobs"], config["candidateCount"]) == (True, 2, 2)
    assert "responseLogprobs" not in body_of("gemini", messages=HI).get("generationConfig", {})

    def result(tokens):
        return {"chosenCandidates": [{"token": t, "logProbability": p} for t, p in tokens],
                "topCandidates": [{"candidates": [{"token": t, "logProbability": p}, {"token": "x", "logProbability": -4.0}]}
                                  for t, p in tokens]}

    whole = gemini.parse_response(json.dumps({"candidates": [
        {"index": 0, "content": {"parts": [{"text": "Hello"}]}, "finishReason": "STOP",
         "logprobsResult": result([("Hel", -0.1), ("lo", -0.3)])},
        {"index": 1, "content": {"parts": [{"text": "Hi"}]}, "finishReason": "MAX_TOKENS",
         "logprobsResult": result([("Hi", -0.7)])}],
        "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 3}}).encode())
    assert [(i["token"], i["logprob"], i["bytes"]) for i in whole.logprobs] == [("Hel", -0.1, [72, 101, 108]),
                                                                                ("lo", -0.3, [108, 111])]
    assert [t["token"] for t in whole.logprobs[0]["top_logprobs"]] == ["Hel", "x"]
    (other,) = whole.choices
    assert (other.index, other.text, other.finish_reason) == (1, "Hi", "length")
    assert [i["token"] for i in other.logprobs] == ["Hi"]
    (delta,) = gemini.translate(event("message", {"candidates": [
        {"index": 0, "content": {"parts": [{"text": "lo"}]}, "logprobsResult": result([("lo", -0.3)])}]}), {})
    assert delta.text == "lo" and [i["token"] for i in delta.logprobs] == ["lo"]


def test_responses_runner_asks_with_include_and_reads_logprobs_whole_and_streamed():
    body = body_of("openai_responses", messages=HI, logprobs=True, top_logprobs=3)
    assert body["include"] == ["message.output_text.logprobs"] and body["top_logprobs"] == 3
    plain = body_of("openai_responses", messages=HI)
    assert "include" not in plain and "top_logprobs" not in plain
    runner = runner_for("openai_responses")
    whole = runner.parse_response(json.dumps({"status": "completed", "output": [{
        "type": "message", "role": "assistant", "content": [{
            "type": "output_text", "text": "Hello", "annotations": [], "logprobs": [
                {"token": "Hel", "logprob": -0.1, "bytes": [72, 101, 108],
                 "top_logprobs": [{"token": "Hi", "logprob": -2.5, "bytes": [72, 105]}]},
                {"token": "lo", "logprob": -0.3, "bytes": [108, 111], "top_logprobs": []}]}]}],
        "usage": {"input_tokens": 3, "output_tokens": 2}}).encode())
    assert [(i["token"], i["bytes"]) for i in whole.logprobs] == [("Hel", [72, 101, 108]), ("lo", [108, 111])]
    assert whole.logprobs[0]["top_logprobs"] == [{"token": "Hi", "logprob": -2.5, "bytes": [72, 105]}]
    none = runner.parse_response(json.dumps({"status": "completed", "output": [{
        "type": "message", "content": [{"type": "output_text", "text": "Hi", "logprobs": []}]}]}).encode())
    assert none.logprobs is None                      # the API's empty list when none were asked for
    (delta,) = runner.translate(event("response.output_text.delta", {
        "type": "response.output_text.delta", "delta": "Hel", "item_id": "m", "output_index": 0,
        "content_index": 0, "sequence_number": 4,
        "logprobs": [{"token": "Hel", "logprob": -0.1, "top_logprobs": [{"token": "Hi", "logprob": -2.5}]}]}), {})
    assert delta.text == "Hel"
    assert delta.logprobs == [{"token": "Hel", "logprob": -0.1, "bytes": [72, 101, 108],   # bytes derived
                               "top_logprobs": [{"token": "Hi", "logprob": -2.5, "bytes": [72, 105]}]}]


def test_chunks_hand_on_the_log_probabilities_of_their_own_text():
    acc = StreamAccumulator()
    runner = runner_for("openai")
    for token, item in (("Hel", ITEMS[0]), ("lo", ITEMS[1])):
        (delta,) = runner.translate(event("message", {"choices": [
            {"index": 0, "delta": {"content": token}, "logprobs": {"content": [item]}, "finish_reason": None}]}), {})
        acc.add(delta)
    assert acc.take_pending() == ("Hello", [])
    assert acc.take_pending_logprobs() == ITEMS and acc.take_pending_logprobs() is None
    assert acc.logprobs == ITEMS


@pytest.mark.parametrize("provider, params, stream, refused", [
    ("anthropic", {"logprobs": True}, False, "logprobs"),
    ("cohere", {"logprobs": True, "top_logprobs": 2}, False, "logprobs"),
    ("bedrock", {"top_logprobs": 1}, False, "logprobs"),
    ("openai_responses", {"n": 2}, False, "n"),
    ("anthropic", {"n": 3}, False, "n"),
    ("openai", {"n": 2}, True, "n"),
    ("gemini", {"n": 2}, True, "n"),
])
def test_what_a_deployment_cannot_do_is_refused_before_anything_is_sent(provider, params, stream, refused):
    request = InferenceRequest("m", HI, dict(params), stream=stream)
    with pytest.raises(E.BadRequest) as caught:
        runner_for(provider).for_request(request)
    assert caught.value.message.startswith(f"{refused}:")


@pytest.mark.parametrize("provider", ["openai", "azure_openai", "openai_compatible", "gemini", "openai_responses"])
def test_what_a_deployment_can_do_is_passed(provider):
    runner = runner_for(provider)
    assert runner.for_request(InferenceRequest("m", HI, {"logprobs": True, "top_logprobs": 2}, stream=True)) is runner
    assert runner.for_request(InferenceRequest("m", HI, {})) is runner


# --- embeddings on each provider's wire ----------------------------------------------------------

def _embed(provider: str, texts: list[str], **fields) -> EmbeddingCall:
    request = InferenceRequest("m", [{"role": "user", "content": t} for t in texts], operation="embed")
    return runner_for(provider, **fields).for_request(request)


@pytest.mark.parametrize("provider, fields, limit", [
    ("openai", {}, 2048), ("azure_openai", {"options": {"api_version": "2024-10-21"}}, 2048),
    ("openai_compatible", {}, 2048), ("openai_compatible", {"options": {"embed_batch": 32}}, 32),
    ("gemini", {}, 100), ("cohere", {}, 96),
    ("bedrock", {"model": "amazon.titan-embed-text-v2:0"}, 1), ("bedrock", {"model": "cohere.embed-english-v3"}, 96),
    ("bedrock", {}, 0), ("anthropic", {}, 0),
])
def test_each_deployment_says_how_many_texts_one_call_takes(provider, fields, limit):
    if provider == "bedrock":
        fields = {**fields, "options": {"region": "us-east-1"}}
    assert runner_for(provider, **fields).embed_batch_for() == limit


def test_an_embeddings_call_is_refused_when_too_big_streamed_or_where_there_is_no_api():
    with pytest.raises(E.BadRequest, match="at most 96 texts"):
        _embed("cohere", [f"t{i}" for i in range(97)])
    with pytest.raises(E.BadRequest, match="no embeddings API"):
        _embed("anthropic", ["x"])
    with pytest.raises(E.BadRequest, match=r"input\[1\]"):
        _embed("openai", ["x", ""])
    request = InferenceRequest("m", HI, {}, stream=True, operation="embed")
    with pytest.raises(E.BadRequest, match="not streamed"):
        runner_for("openai").for_request(request)


def test_openai_family_embeddings_on_the_wire():
    call = _embed("openai", ["a", "b"])
    http = call.build_request(InferenceRequest("m", [], {"dimensions": 16, "user": "u"}), credential("openai"))
    assert http.url == "https://api.openai.com/v1/embeddings"
    # OpenAI and Azure are asked for base64 (half the bytes, cheap to read); compatible servers
    # for JSON numbers unless configured, since not all of them take base64.
    assert json.loads(http.body) == {"model": "gpt-4o-mini", "input": ["a", "b"], "encoding_format": "base64",
                                     "dimensions": 16, "user": "u"}
    azure = _embed("azure_openai", ["a"], options={"api_version": "2024-10-21", "azure_deployment": "emb"})
    assert azure.build_request(InferenceRequest("m", []), credential("azure_openai")).url == (
        "https://contoso.openai.azure.com/openai/deployments/emb/embeddings?api-version=2024-10-21")
    compatible = _embed("openai_compatible", ["a"], options={"embeddings_path": "/v2/embed"})
    http = compatible.build_request(InferenceRequest("m", []), None)
    assert http.url == "http://litellm.internal:4000/v1/v2/embed"
    assert json.loads(http.body)["encoding_format"] == "float"
    packed_ok = _embed("openai_compatible", ["a"], options={"embeddings_encoding": "base64"})
    assert json.loads(packed_ok.build_request(InferenceRequest("m", []), None).body)["encoding_format"] == "base64"
    for options, field in (({"embeddings_encoding": "int8"}, "embeddings_encoding"), ({"embed_batch": 0}, "embed_batch")):
        with pytest.raises(E.ConfigError) as caught:
            runner_for("openai_compatible", options=options)
        assert field in str(caught.value)
    packed = base64.b64encode(struct.pack("<2f", 0.5, -1.0)).decode()
    delta = call.parse_response(json.dumps({"object": "list", "data": [   # out of order, one as base64
        {"object": "embedding", "index": 1, "embedding": packed},
        {"object": "embedding", "index": 0, "embedding": [1, 0.25]}],
        "usage": {"prompt_tokens": 2, "total_tokens": 2}}).encode())
    assert delta.embeddings == [[1.0, 0.25], [0.5, -1.0]] and delta.usage["input_tokens"] == 2
    assert delta.done and delta.finish_reason == "stop"
    with pytest.raises(E.StreamError, match="1 embeddings for 2 inputs"):
        call.parse_response(json.dumps({"data": [{"index": 0, "embedding": [1.0]}]}).encode())
    with pytest.raises(E.StreamError, match="not a list of numbers"):
        call.parse_response(json.dumps({"data": [{"embedding": [1.0]}, {"embedding": ["x"]}]}).encode())


def test_gemini_embeddings_on_the_wire():
    call = _embed("gemini", ["a", "b"])
    http = call.build_request(InferenceRequest("m", [], {"dimensions": 8, "task_type": "RETRIEVAL_QUERY"}),
                              credential("gemini"))
    assert http.url.endswith("/models/gemini-2.5-flash:batchEmbedContents")
    assert json.loads(http.body)["requests"] == [
        {"model": "models/gemini-2.5-flash", "content": {"parts": [{"text": t}]}, "outputDimensionality": 8,
         "taskType": "RETRIEVAL_QUERY"} for t in ("a", "b")]
    delta = call.parse_response(json.dumps({"embeddings": [{"values": [0.1, 0.2]}, {"values": [0.3, 0.4]}]}).encode())
    assert delta.embeddings == [[0.1, 0.2], [0.3, 0.4]] and delta.usage is None   # Google reports none


def test_cohere_embeddings_on_the_wire():
    call = _embed("cohere", ["a"])
    sent = json.loads(call.build_request(InferenceRequest("m", [], {"dimensions": 256}), credential("cohere")).body)
    assert sent == {"model": "command-r-08-2024", "texts": ["a"], "embedding_types": ["float"],
                    "input_type": "search_document", "output_dimension": 256}
    asked = json.loads(call.build_request(InferenceRequest("m", [], {"input_type": "search_query"}), None).body)
    assert asked["input_type"] == "search_query"
    delta = call.parse_response(json.dumps({"embeddings": {"float": [[0.5, 0.5]]},
                                            "meta": {"billed_units": {"input_tokens": 1}}}).encode())
    assert delta.embeddings == [[0.5, 0.5]] and delta.usage["input_tokens"] == 1


def test_bedrock_embeddings_on_the_wire():
    titan = _embed("bedrock", ["a"], model="amazon.titan-embed-text-v2:0", options={"region": "us-east-1"})
    http = titan.build_request(InferenceRequest("m", [], {"dimensions": 256}), credential("bedrock"))
    assert http.url.endswith("/model/amazon.titan-embed-text-v2%3A0/invoke")
    assert json.loads(http.body) == {"inputText": "a", "dimensions": 256}
    assert http.headers["authorization"].startswith("AWS4-HMAC-SHA256 ")
    delta = titan.parse_response(json.dumps({"embedding": [0.1, 0.2], "inputTextTokenCount": 1}).encode())
    assert delta.embeddings == [[0.1, 0.2]] and delta.usage == {"input_tokens": 1}
    cohere = _embed("bedrock", ["a", "b"], model="cohere.embed-english-v3", options={"region": "us-east-1"})
    assert json.loads(cohere.build_request(InferenceRequest("m", []), credential("bedrock")).body) == {
        "texts": ["a", "b"], "input_type": "search_document", "embedding_types": ["float"]}
    with pytest.raises(E.BadRequest, match="dimensions"):
        cohere.build_request(InferenceRequest("m", [], {"dimensions": 256}), credential("bedrock"))
    delta = cohere.parse_response(json.dumps({"embeddings": {"float": [[1.0], [2.0]]}}).encode())
    assert delta.embeddings == [[1.0], [2.0]] and delta.usage is None


# --- GatewayClient.embed's batches ----------------------------------------------------------------

def _entry(name: str, embed_batch: int) -> RouteEntry:
    return RouteEntry(name, "e", None, "n1", embed_batch=embed_batch)


def test_the_batch_is_the_smallest_limit_among_the_deployments_that_may_serve_it():
    assert embed_batch_of([_entry("a", 2048), _entry("b", 96), _entry("chat-only", 0)]) == 96
    assert embed_batch_of([_entry("chat-only", 0)]) == DEFAULT_EMBED_BATCH == 2048
    assert embed_batch_of([]) == DEFAULT_EMBED_BATCH


def test_texts_are_cut_in_order_and_each_call_gets_its_own_request_id():
    texts = [f"t{i}" for i in range(7)]
    assert embed_batches(texts, 3, "req_x") == [("req_x-0", ["t0", "t1", "t2"]), ("req_x-1", ["t3", "t4", "t5"]),
                                                ("req_x-2", ["t6"])]
    assert embed_batches(texts, 7, "req_x") == [("req_x", texts)]          # one call keeps the caller's id
    assert embed_batches(texts[:2], 1) == [(None, ["t0"]), (None, ["t1"])]
    with pytest.raises(ValueError):
        embed_batches(texts, 0)


def test_batches_merge_into_one_result_in_order():
    calls = [Completed("a", "", "stop", Usage(5, 0), cost_usd=1e-7, embeddings=[[1.0], [2.0]]),
             Completed("b", "", "stop", Usage(3, 0), cost_usd=2e-7, embeddings=[[3.0]], deployment="e-2")]
    merged = merged_embeddings(calls)
    assert merged.embeddings == [[1.0], [2.0], [3.0]] and merged.usage.input_tokens == 8 and merged.usage.reported
    assert merged.cost_usd == pytest.approx(3e-7) and merged.deployment == "e-2" and merged.calls == calls
    partly = merged_embeddings([calls[0], Completed("c", "", "stop", UNREPORTED, embeddings=[[4.0]])])
    assert not partly.usage.reported and partly.cost_usd is None     # one unknown part makes the whole unknown


def test_an_embeddings_call_is_estimated_as_its_input_alone():
    rig = Rig()
    rig.submit("chat", params={})
    rig.report("chat", usage=UNREPORTED)
    rig.submit("embed", params={}, operation="embed")
    rig.report("embed", usage=UNREPORTED)
    chat, embed = rig.terminal("chat"), rig.terminal("embed")
    # Same messages: the chat call's estimate adds the deployment's expected output; an embedding has none.
    assert chat.charged_tokens - embed.charged_tokens == rig.dep.estimate_output_tokens
    assert embed.charged_tokens > 0


def test_messages_carrying_vectors_or_logprobs_keep_them_out_of_their_repr():
    """Thespian formats every message it sends or receives (``str()``, for a debug line): a repr
    holding 32 vectors of 1536 numbers cost ~10 ms each time, several times a call."""
    vectors = [[0.123456789] * 1536 for _ in range(32)]
    done = Completed("req_1", "", "stop", Usage(5, 0), embeddings=vectors, logprobs=[{"token": "x"}] * 1000)
    result = WorkerResult(request_id="req_1", attempt=1, worker_index=0, embeddings=vectors, logprobs=[{"t": 1}] * 99)
    for message in (done, result, TokenChunk("req_1", 0, "x", logprobs=[{"token": "x"}] * 1000)):
        shown = repr(message)
        assert len(shown) < 1000 and "0.123456789" not in shown and "'token'" not in shown
    assert "req_1" in repr(done) and done.embeddings is vectors      # the rest is shown; the data is all there


def test_a_tool_calls_name_and_arguments_are_counted_as_written():
    c = count_text
    call = {"role": "assistant", "tool_calls": [
        {"function": {"name": "lookup_current_weather_in_city", "arguments": '{"city":"Paris"}'}}]}
    assert count_messages([call]) == 3 + 3 + c("assistant") + c("lookup_current_weather_in_city") + c('{"city":"Paris"}')
    parts = {"role": "user", "content": [{"type": "text", "text": "ab"}, {"type": "text", "text": "cd"}]}
    assert count_messages([parts]) == 3 + 3 + c("user") + c("abcd")
