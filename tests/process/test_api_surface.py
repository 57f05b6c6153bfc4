"""The APIs applications call (issue 24) with the real openai and anthropic SDKs and curl-like
requests, against one node whose deployments cover every provider family on the mock provider.

Every answer and every streamed event is validated against the SDKs' own types with strict
validation (``model_validate(..., strict=True)``), on the raw JSON the gateway sent, and the
OpenAI-shaped ones against OpenAI's OpenAPI schemas too (tests/openai_spec.py).
"""

from __future__ import annotations

import base64
import json
import struct

import anthropic
import openai
import pytest
import requests
from anthropic.types import Message, MessageTokensCount, ModelInfo
from anthropic.types import RawMessageStreamEvent
from openai.types import Completion, CreateEmbeddingResponse, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from actors.client import GatewayClient
from actors.ops.http_process import start_http
from actors.settings.loader import build, parse_config
from actors.settings.schema import HttpConfig
from actors.ops.system import start_node

from actors.core.tokens import count_messages

from conftest import deployment, free_port, fresh_period, wait_for
from openai_spec import check, check_event
from sse_events import sse_events

KEY = "sk-atomr-api-surface-0123456789"
ADMIN = "sk-atomr-api-surface-admin-abcd"
HI = [{"role": "user", "content": "hi there"}]
NO_RETRY = {"max_retries": 0, "base_delay_s": 0.05, "max_delay_s": 0.2}
CHAT = ["gpt", "azure", "llama", "resp", "claude", "gem", "coh", "bed"]
EMBED = ["e-openai", "e-azure", "e-llama", "e-gemini", "e-cohere", "e-titan", "e-bedcohere"]
UNREPORTED = {"e-llama", "e-gemini", "e-bedcohere"}   # upstreams that report no embeddings usage


def _deployments(url: str) -> list[dict]:
    one = {"workers": 1, "retry": NO_RETRY}
    chat = [deployment(url, "gpt", **one),
            deployment(url, "azure", provider="azure_openai", **one),
            deployment(url + "/mock:no_usage=1;string_content=1", "llama", provider="openai_compatible", **one),
            deployment(url, "resp", provider="openai_responses", **one),
            deployment(url, "claude", provider="anthropic", **one),
            deployment(url, "gem", provider="gemini", **one),
            deployment(url, "coh", provider="cohere", **one),
            deployment(url, "bed", provider="bedrock", **one)]
    embed = [deployment(url, "e-openai", upstream_model="text-embedding-3-small", **one),
             deployment(url, "e-azure", provider="azure_openai", upstream_model="mock-embed", **one),
             deployment(url + "/mock:no_usage=1", "e-llama", provider="openai_compatible", upstream_model="mock-embed",
                        **one),
             deployment(url, "e-gemini", provider="gemini", upstream_model="gemini-embedding-001", **one),
             deployment(url, "e-cohere", provider="cohere", upstream_model="embed-v4.0", **one),
             deployment(url, "e-titan", provider="bedrock", upstream_model="amazon.titan-embed-text-v2:0", **one),
             deployment(url, "e-bedcohere", provider="bedrock", upstream_model="cohere.embed-english-v3", **one)]
    return chat + embed + [deployment(url + "/mock:status=500", "broken", **one)]


@pytest.fixture(scope="module")
def spend_period():
    """The period of the budget on e-openai (one for the module's node)."""
    return fresh_period()


@pytest.fixture(scope="module")
def surface(tmp_path_factory, spend_period):
    from actors.testing.mock_provider import MockProcess

    tmp = tmp_path_factory.mktemp("surface")
    mock = MockProcess()
    started = []
    try:
        data = {"deployments": _deployments(mock.url),
                "node": {"admin_port": free_port(), "name": "api", "ledger": str(tmp / "ledger.db")},
                "budgets": [{"deployment": "e-openai", "usd": 1.0, "period": spend_period}]}
        node = start_node(parse_config(data, "<surface>"), log_file=str(tmp / "node.log"), console_log=False)
        started.append(node)
        section = {"listen": "127.0.0.1:0", "keys": [{"name": "team", "key": {"value": KEY}},
                                                     {"name": "ops", "key": {"value": ADMIN}, "admin": True}]}
        http = start_http(build(HttpConfig, section, "http"), node.admin_port,
                          models=[d["model"] for d in data["deployments"]], log_file=str(tmp / "http.log"),
                          upstreams={d["model"]: d["upstream_model"] for d in data["deployments"]})
        started.append(http)
        yield http.url, mock, node
    finally:
        for thing in reversed(started):
            thing.stop(timeout_s=10) if hasattr(thing, "url") else thing.stop(kill_after_s=10)
        mock.stop()


def oai(url):
    return openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=30)


def ant(url):
    return anthropic.Anthropic(base_url=url, api_key=KEY, max_retries=0, timeout=30)


def post(url, path, doc, stream=False, anthropic_style=False):
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"} if anthropic_style else \
        {"Authorization": f"Bearer {KEY}"}
    return requests.post(url + path, json=doc, headers=headers, timeout=30, stream=stream)


def sse(reply) -> list[tuple[str | None, dict | str]]:
    return sse_events(reply.text)


# --- embeddings ------------------------------------------------------------------------

@pytest.mark.parametrize("model", EMBED)
def test_embeddings_with_the_openai_sdk_on_every_family(surface, model):
    url, _, _ = surface
    texts = ["the first text", "a second one", "third"]
    default = oai(url).embeddings.create(model=model, input=texts)            # the SDK asks for base64
    floats = oai(url).embeddings.create(model=model, input=texts, encoding_format="float")
    assert [x for d in default.data for x in d.embedding] == pytest.approx(
        [x for d in floats.data for x in d.embedding], abs=1e-6)
    assert [d.index for d in floats.data] == [0, 1, 2] and all(len(d.embedding) == 8 for d in floats.data)
    assert len({tuple(d.embedding) for d in floats.data}) == 3      # each text its own vector
    assert floats.usage.prompt_tokens > 0 and floats.usage.total_tokens == floats.usage.prompt_tokens
    counted = (floats.usage.model_extra or {}).get("counted_by")
    assert (counted == "gateway:o200k_base") == (model in UNREPORTED)
    raw = post(url, "/v1/embeddings", {"model": model, "input": "one text", "dimensions": 16,
                                       "encoding_format": "base64"})
    if model == "e-bedcohere":   # a fixed size: refused, naming the field, before anything is sent
        assert raw.status_code == 400 and raw.json()["error"]["message"].startswith("dimensions")
        raw = post(url, "/v1/embeddings", {"model": model, "input": "one text", "encoding_format": "base64"})
        assert len(base64.b64decode(raw.json()["data"][0]["embedding"])) == 8 * 4
    else:
        assert raw.status_code == 200, raw.text
        assert len(struct.unpack("<16f", base64.b64decode(raw.json()["data"][0]["embedding"]))) == 16
    doc = CreateEmbeddingResponse.model_validate(
        post(url, "/v1/embeddings", {"model": model, "input": ["one text"]}).json(), strict=True)
    assert raw.headers["x-atomr-deployment"] == model and raw.headers["x-atomr-fallback"] == "false"
    assert raw.headers["x-atomr-usage"] == ("counted; tokenizer=o200k_base" if model in UNREPORTED else "reported")
    assert doc.model == model


def test_embeddings_refused_where_there_are_none_and_batched_where_limited(surface):
    url, mock, node = surface
    with pytest.raises(openai.BadRequestError) as caught:
        oai(url).embeddings.create(model="claude", input="x")
    assert "no embeddings API" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        oai(url).embeddings.create(model="e-openai", input=[[1, 2, 3]])
    assert caught.value.body["param"] == "input[0]"
    with GatewayClient(node.admin_port, timeout_s=30) as gw:
        before = mock.stats()["requests"]
        titan = gw.embed("e-titan", ["a b", "c d e", "f"])              # Titan takes one text per call
        cohere = gw.embed("e-cohere", [f"text {i}" for i in range(100)])   # Cohere takes 96
        after = mock.stats()["requests"]
    assert len(titan.calls) == 3 and len(titan.embeddings) == 3 and titan.usage.input_tokens == 6
    assert titan.usage.reported and titan.cost_usd == pytest.approx(6 * 0.02 / 1e6)
    assert [len(c.embeddings) for c in cohere.calls] == [96, 4] and len(cohere.embeddings) == 100
    invoked = sum(n for p, n in after.items() if p.endswith("/invoke")) - sum(
        n for p, n in before.items() if p.endswith("/invoke"))
    assert invoked == 3


def test_embeddings_go_through_budgets_the_ledger_and_metrics(surface, spend_period):
    url, _, node = surface
    budget = f"deployment=e-openai/{spend_period}"
    from test_metrics import scrape, value

    def now():
        s = scrape(url, ADMIN)
        return (value(s, "atomr_requests_total", deployment="e-openai", outcome="completed", error_kind="")
                if any(n == "atomr_requests_total" and ("deployment", "e-openai") in ls for (n, ls) in s) else 0,
                sum(v for (n, ls), v in s.items() if n == "atomr_spend_used_usd"
                    and ("budget", budget) in ls))
    calls0, spent0 = now()
    for _ in range(3):
        oai(url).embeddings.create(model="e-openai", input=["one two three", "four five"])

    def settled():
        s = scrape(url, ADMIN)
        calls = value(s, "atomr_requests_total", deployment="e-openai", outcome="completed", error_kind="")
        spent = value(s, "atomr_spend_used_usd", budget=budget)
        return (s, spent) if calls == calls0 + 3 and spent > spent0 + 2.9e-7 else None
    s, spent = wait_for(settled, timeout_s=10, message="the embeddings calls in the metrics and the budget")
    assert spent - spent0 == pytest.approx(3 * 5 * 0.02 / 1e6, rel=1e-6)   # 5 tokens each at $0.02 per million
    with GatewayClient(node.admin_port, timeout_s=30) as gw:
        def ledger_rows():
            rows = [r for r in gw.spend(0, by="deployment")[0].rows if r["group"] == "e-openai"]
            return rows if rows and rows[0]["requests"] >= calls0 + 3 else None
        (row,) = wait_for(ledger_rows, timeout_s=10, message="the ledger's rows")
    assert row["cost_usd"] == pytest.approx(spent, rel=1e-6)   # the ledger agrees with the budget


# --- Responses, Completions, models, count_tokens ---------------------------------------

EVENTS = TypeAdapter(ResponseStreamEvent)


@pytest.mark.parametrize("model", CHAT)
def test_responses_create_and_stream_on_every_family(surface, model):
    url, _, _ = surface
    client = oai(url)
    whole = client.responses.create(model=model, input="hi there", instructions="be brief", max_output_tokens=6)
    assert whole.output_text.startswith("You said:") and whole.status == "completed"
    assert whole.usage.output_tokens > 0 and whole.usage.input_tokens > 0
    with client.responses.stream(model=model, input=[{"role": "user", "content": "hi there"}],
                                 instructions="be brief", max_output_tokens=6) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert "response.output_text.delta" in kinds and final.output_text == whole.output_text
    assert final.usage.model_dump() == whole.usage.model_dump()     # streamed and whole usage agree
    raw = post(url, "/v1/responses", {"model": model, "input": "hi there", "max_output_tokens": 6, "stream": True})
    events = sse(raw)
    assert [e["sequence_number"] for _, e in events] == list(range(len(events)))
    for name, event in events:
        assert EVENTS.validate_python(event, strict=True).type == name
    doc = post(url, "/v1/responses", {"model": model, "input": "hi there", "max_output_tokens": 6}).json()
    Response.model_validate(doc, strict=True)


def test_responses_tools_round_trip_and_stateful_fields_are_refused(surface):
    url, _, _ = surface
    tools = [{"type": "function", "name": "get_weather", "description": "weather",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
    for model in ("gpt", "claude", "gem"):
        first = oai(url).responses.create(model=model, input="weather? [[tool]]", tools=tools)
        (call,) = [item for item in first.output if item.type == "function_call"]
        assert call.name == "get_weather" and json.loads(call.arguments)["city"] == "Paris"
        back = [{"role": "user", "content": "weather? [[tool]]"}, call.model_dump(exclude_none=True),
                {"type": "function_call_output", "call_id": call.call_id, "output": "18C"}]
        assert oai(url).responses.create(model=model, input=back, tools=tools).output_text
        with oai(url).responses.stream(model=model, input="weather? [[tool]]", tools=tools) as stream:
            final = stream.get_final_response()
        assert [json.loads(i.arguments) for i in final.output if i.type == "function_call"] == [
            json.loads(call.arguments)]
    for field, value in (("previous_response_id", "resp_1"), ("conversation", "conv_1"), ("background", True)):
        with pytest.raises(openai.BadRequestError) as caught:
            oai(url).responses.create(model="gpt", input="x", **{field: value})
        assert caught.value.body["param"] == field and "stateless" in caught.value.message


@pytest.mark.parametrize("model", ["gpt", "claude", "llama"])
def test_completions_models_and_count_tokens(surface, model):
    url, _, _ = surface
    whole = oai(url).completions.create(model=model, prompt="hi there", max_tokens=5)
    assert whole.choices[0].text.startswith("You said:") and whole.usage.completion_tokens > 0
    Completion.model_validate(post(url, "/v1/completions", {"model": model, "prompt": "x", "max_tokens": 3}).json(),
                              strict=True)
    pieces = list(oai(url).completions.create(model=model, prompt="hi there", max_tokens=5, stream=True,
                                              stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in pieces if c.choices) == whole.choices[0].text
    assert pieces[-1].usage.completion_tokens == whole.usage.completion_tokens
    card = oai(url).models.retrieve(model)
    Model.model_validate(card.model_dump(), strict=True)
    assert card.id == model and card.created > 1_600_000_000
    assert ant(url).models.retrieve(model).created_at.year >= 2021
    with pytest.raises(openai.NotFoundError):
        oai(url).models.retrieve("no-such-model")
    count = ant(url).messages.count_tokens(model=model, messages=HI, system="be brief")
    MessageTokensCount.model_validate(count.model_dump(), strict=True)
    assert count.input_tokens == count_messages([{"role": "system", "content": "be brief"}, *HI])


def test_real_creation_dates_where_known(surface):
    url, _, _ = surface
    assert oai(url).models.retrieve("e-openai").created == 1706140800   # text-embedding-3-small, 2024-01-25
    listing = requests.get(url + "/v1/models", headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
                           timeout=10).json()
    for card in listing["data"]:
        assert ModelInfo.model_validate(card).created_at.year > 1970


# --- fidelity in Chat Completions and Messages -------------------------------------------

@pytest.mark.parametrize("model", ["gpt", "azure", "llama", "gem", "resp"])
def test_logprobs_and_n_where_the_provider_has_them(surface, model):
    url, _, _ = surface
    whole = oai(url).chat.completions.create(model=model, messages=HI, max_tokens=5, logprobs=True, top_logprobs=2)
    items = whole.choices[0].logprobs.content
    assert "".join(i.token for i in items) == whole.choices[0].message.content
    assert all(len(i.top_logprobs) == 2 and i.logprob < 0 for i in items)
    streamed = oai(url).chat.completions.create(model=model, messages=HI, max_tokens=5, logprobs=True, top_logprobs=2,
                                                stream=True)
    tokens = [i.token for c in streamed if c.choices and c.choices[0].logprobs for i in c.choices[0].logprobs.content]
    assert tokens == [i.token for i in items]
    if model == "resp":   # the Responses API has log probabilities but no n
        return
    two = oai(url).chat.completions.create(model=model, messages=HI, max_tokens=4, n=2)
    assert [c.index for c in two.choices] == [0, 1] and two.choices[0].message.content != two.choices[1].message.content
    ChatCompletion.model_validate(post(url, "/v1/chat/completions", {"model": model, "messages": HI, "n": 2,
                                                                       "logprobs": True, "max_tokens": 3}).json(),
                                  strict=True)


@pytest.mark.parametrize("model, refused", [("claude", ("logprobs", "n")), ("coh", ("logprobs", "n")),
                                            ("bed", ("logprobs", "n")), ("resp", ("n",))])
def test_logprobs_and_n_refused_only_where_the_deployment_cannot(surface, model, refused):
    url, mock, _ = surface
    assert oai(url).chat.completions.create(model=model, messages=HI, max_tokens=3, logprobs=False).choices
    for kw in [{"logprobs": True} if name == "logprobs" else {"n": 2} for name in refused]:
        with pytest.raises(openai.BadRequestError) as caught:
            oai(url).chat.completions.create(model=model, messages=HI, max_tokens=3, **kw)
        assert caught.value.body["message"].startswith(next(iter(kw)))


@pytest.mark.parametrize("model", ["gpt", "resp", "gem"])
def test_responses_logprobs_with_include(surface, model):
    url, _, _ = surface
    ask = {"include": ["message.output_text.logprobs"], "top_logprobs": 2, "max_output_tokens": 5}
    whole = oai(url).responses.create(model=model, input="hi there", **ask)
    part = whole.output[0].content[0]
    assert "".join(p.token for p in part.logprobs) == part.text == whole.output_text
    assert all(len(p.top_logprobs) == 2 and p.logprob < 0 for p in part.logprobs)
    raw = post(url, "/v1/responses", {"model": model, "input": "hi there", "stream": True, **ask})
    events = sse(raw)
    for name, event in events:
        assert EVENTS.validate_python(event, strict=True).type == name
    streamed = [x["token"] for name, e in events if name == "response.output_text.delta" for x in e["logprobs"]]
    assert streamed == [p.token for p in part.logprobs]
    plain = oai(url).responses.create(model=model, input="hi there", max_output_tokens=5, top_logprobs=2)
    assert plain.output[0].content[0].logprobs == []      # as the API: top_logprobs alone asks for none
    with pytest.raises(openai.BadRequestError) as caught:
        oai(url).responses.create(model="claude", input="hi there", **ask)
    assert caught.value.body["message"].startswith("logprobs")


def test_usage_is_never_a_made_up_zero(surface):
    url, _, _ = surface
    whole = oai(url).chat.completions.create(model="llama", messages=HI, max_tokens=6)
    assert whole.usage.prompt_tokens > 0 and whole.usage.completion_tokens > 0
    assert whole.usage.model_extra["counted_by"] == "gateway:o200k_base"
    chunks = list(oai(url).chat.completions.create(model="llama", messages=HI, max_tokens=6, stream=True,
                                                   stream_options={"include_usage": True}))
    for chunk in chunks:
        ChatCompletionChunk.model_validate(chunk.model_dump(exclude_unset=True), strict=True)
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert chunks[0].system_fingerprint and chunks[0].system_fingerprint == whole.system_fingerprint
    message = ant(url).messages.create(model="llama", max_tokens=6, messages=HI)
    with ant(url).messages.stream(model="llama", max_tokens=6, messages=HI) as stream:
        events = list(stream)
        final = stream.get_final_message()
    start = events[0]
    assert start.type == "message_start" and start.message.usage.input_tokens > 0
    assert final.usage.input_tokens == message.usage.input_tokens > 0
    assert final.usage.output_tokens == message.usage.output_tokens > 0


@pytest.mark.parametrize("model", CHAT)
def test_anthropic_streams_carry_the_input_count_at_start_and_validate(surface, model):
    url, _, _ = surface
    raw = post(url, "/v1/messages", {"model": model, "max_tokens": 6, "messages": HI, "stream": True},
               anthropic_style=True)
    events = sse(raw)
    adapter = TypeAdapter(RawMessageStreamEvent)
    for name, event in events:
        assert adapter.validate_python(event, strict=True).type == name
    assert events[0][1]["message"]["usage"]["input_tokens"] > 0
    whole = post(url, "/v1/messages", {"model": model, "max_tokens": 6, "messages": HI}, anthropic_style=True).json()
    Message.model_validate(whole, strict=True)
    assert events[-2][1]["usage"]["input_tokens"] == whole["usage"]["input_tokens"]
    assert events[-2][1]["usage"]["output_tokens"] == whole["usage"]["output_tokens"] > 0


def test_stop_sequences_reported_as_anthropic_does(surface):
    url, _, _ = surface
    ask = [{"role": "user", "content": "tell me"}]
    message = ant(url).messages.create(model="claude", max_tokens=20, messages=ask, stop_sequences=["mock"])
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "mock")
    assert "mock" not in message.content[0].text
    with ant(url).messages.stream(model="claude", max_tokens=20, messages=ask, stop_sequences=["mock"]) as stream:
        final = stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "mock")
    plain = ant(url).messages.create(model="claude", max_tokens=3, messages=ask, stop_sequences=["never"])
    assert (plain.stop_reason, plain.stop_sequence) == ("end_turn", None)   # no sequence met: none named


def test_text_blocks_are_flattened_for_servers_that_take_strings(surface):
    url, _, _ = surface
    two = [{"role": "user", "content": [{"type": "text", "text": "first part"}, {"type": "text", "text": "second"}]}]
    assert ant(url).messages.create(model="llama", max_tokens=6, messages=two).content[0].text
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert oai(url).chat.completions.create(model="llama", messages=parts, max_tokens=4).choices[0].message.content


def test_a_fallback_is_named_in_the_headers(surface):
    url, _, _ = surface
    reply = post(url, "/v1/chat/completions", {"model": "broken", "messages": HI, "max_tokens": 3,
                                               "fallbacks": ["gpt"]})
    assert reply.status_code == 200
    assert (reply.headers["x-atomr-deployment"], reply.headers["x-atomr-fallback"]) == ("gpt", "true")
    direct = post(url, "/v1/chat/completions", {"model": "gpt", "messages": HI, "max_tokens": 3, "stream": True})
    assert (direct.headers["x-atomr-deployment"], direct.headers["x-atomr-fallback"]) == ("gpt", "false")


# --- OpenAI's OpenAPI document -------------------------------------------------------------

WEATHER_TOOL = {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}


@pytest.mark.parametrize("model", CHAT)
def test_what_every_family_answers_matches_openais_schemas(surface, model):
    url, _, _ = surface
    ask = [{"role": "user", "content": "weather? [[tool]]"}]
    chat_tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    check("CreateChatCompletionResponse", post(url, "/v1/chat/completions", {"model": model, "messages": HI,
                                                                              "max_tokens": 5}).json())
    check("CreateChatCompletionResponse", post(url, "/v1/chat/completions", {"model": model, "messages": ask,
                                                                              "tools": chat_tools}).json())
    frames = sse(post(url, "/v1/chat/completions", {"model": model, "messages": ask, "tools": chat_tools,
                                                    "stream": True, "stream_options": {"include_usage": True}}))
    assert frames[-1] == (None, "[DONE]")
    for _, chunk in frames[:-1]:
        check("CreateChatCompletionStreamResponse", chunk)
    check("CreateCompletionResponse", post(url, "/v1/completions", {"model": model, "prompt": "hi there",
                                                                    "max_tokens": 4}).json())
    check("Response", post(url, "/v1/responses", {"model": model, "input": "weather? [[tool]]",
                                                  "tools": [WEATHER_TOOL]}).json())
    events = sse(post(url, "/v1/responses", {"model": model, "input": "weather? [[tool]]", "tools": [WEATHER_TOOL],
                                             "stream": True}))
    assert events[-1][0] == "response.completed"
    for _, event in events:
        check_event(event)
    check("Model", requests.get(f"{url}/v1/models/{model}", headers={"Authorization": f"Bearer {KEY}"},
                                timeout=10).json())
    refused = post(url, "/v1/responses", {"model": model, "input": "x", "previous_response_id": "resp_1"})
    assert refused.status_code == 400
    check("ErrorResponse", refused.json())


@pytest.mark.parametrize("model", EMBED)
def test_embeddings_match_openais_schema(surface, model):
    url, _, _ = surface
    check("CreateEmbeddingResponse", post(url, "/v1/embeddings", {"model": model, "input": ["a text", "another"],
                                                                  "encoding_format": "float"}).json())
