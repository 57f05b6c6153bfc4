"""Every provider end to end: client -> node -> engine -> worker -> HTTP -> the mock provider
speaking that provider's wire format, and back. One node serves all eight deployments."""

from __future__ import annotations

import json

import pytest

from actors import errors as E
from actors.providers import PROVIDERS
from actors.types import Completed

from conftest import deployment

HELLO = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello"}]
HELLO_DRIP = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello [[mock drip_ms=5]]"}]
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
                   "required": ["city"]}}}]
CREDENTIALS = {provider: f"sk-mock-{provider}" for provider in PROVIDERS} | {"bedrock": "AKIDMOCKBEDROCK:mock/secret+key"}
# The mock's Gemini imitates a thinking model: 7 hidden tokens, billed as output.
REASONING = {"gemini": 7}
# What each provider's in-stream error event means (the mock sends a typical one per provider).
IN_STREAM = {"openai": E.ServerError, "azure_openai": E.ServerError, "openai_compatible": E.ServerError,
             "openai_responses": E.ServerError, "anthropic": E.Overloaded, "gemini": E.Overloaded,
             "cohere": E.ServerError, "bedrock": E.RateLimited}


def msgs(text):
    return [{"role": "user", "content": text}]


def every_provider(mock_url):
    deployments = []
    for provider in PROVIDERS:
        dep = deployment(mock_url, provider, provider=provider, workers=1, coalesce_ms=0,
                         credentials={"value": CREDENTIALS[provider]})
        if provider == "bedrock":
            dep["options"] = {"region": "us-east-1"}
        deployments.append(dep)
    return deployments


def test_every_provider_streams_and_completes_with_equal_text_usage_and_cost(gateway, mock):
    node, client = gateway(every_provider(mock.url))
    for provider in PROVIDERS:
        # Tokens 5 ms apart, so the stream really is one (a burst may be coalesced into one chunk).
        whole = client.complete(provider, HELLO_DRIP, max_tokens=12)
        stream = client.stream(provider, HELLO_DRIP, max_tokens=12)
        chunks = list(stream)
        streamed = stream.result
        assert isinstance(whole, Completed) and whole.deployment == provider, provider
        assert whole.text.startswith("You said: Say hello") and whole.finish_reason == "stop", (provider, whole)
        assert "".join(c.text for c in chunks) == streamed.text == whole.text, provider
        assert streamed.usage == whole.usage, (provider, streamed.usage, whole.usage)
        assert whole.usage.input_tokens > 0, provider
        assert whole.usage.reasoning_tokens == REASONING.get(provider, 0), provider
        assert whole.usage.output_tokens == 12 + REASONING.get(provider, 0), provider
        assert whole.cost_usd is not None and whole.cost_usd > 0 and streamed.cost_usd == whole.cost_usd, provider
        assert len(chunks) > 1, f"{provider}: the stream arrived in one piece"
    seen = mock.stats()["keys_seen"]
    for provider in ("openai", "anthropic", "gemini", "cohere", "azure_openai"):
        assert any(CREDENTIALS[provider] in key for key in seen), provider
    assert any(key.startswith("AWS4-HMAC-SHA256 Credential=AKIDMOCKBEDROCK/") for key in seen)


def test_every_provider_completes_a_tool_call_round(gateway, mock):
    node, client = gateway(every_provider(mock.url))
    ask = msgs("What is the weather in Paris? [[tool]]")
    for provider in PROVIDERS:
        whole = client.complete(provider, ask, tools=TOOLS, max_tokens=6)
        stream = client.stream(provider, ask, tools=TOOLS, max_tokens=6)
        list(stream)
        for result in (whole, stream.result):
            assert result.finish_reason == "tool_calls", (provider, result)
            (call,) = result.tool_calls
            assert call.name == "get_weather" and call.id, (provider, call)
            assert json.loads(call.arguments) == {"city": "Paris", "unit": "c"}, (provider, call)
        assert stream.result.tool_calls[0].id == whole.tool_calls[0].id, provider
        assert stream.result.usage == whole.usage and stream.result.cost_usd == whole.cost_usd, provider
        call = whole.tool_calls[0]
        follow_up = ask + [
            {"role": "assistant", "content": whole.text,
             "tool_calls": [{"id": call.id, "type": "function",
                             "function": {"name": call.name, "arguments": call.arguments}}]},
            {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'}]
        answer = client.complete(provider, follow_up, tools=TOOLS, max_tokens=6)
        assert answer.finish_reason == "stop" and not answer.tool_calls and answer.text, (provider, answer)


def test_every_provider_turns_faults_into_typed_errors(gateway, mock):
    node, client = gateway(every_provider(mock.url))
    for provider in PROVIDERS:
        stream = client.stream(provider, msgs("[[mock error_after=3]] go"), max_tokens=8)
        with pytest.raises(E.InferenceError) as info:
            list(stream)
        assert type(info.value) is IN_STREAM[provider], (provider, info.value)
        assert info.value.provider == provider

        result = client.complete(provider, msgs(f"[[mock status=429 fail_times=1 key=r429-{provider}]] hi"),
                                 max_tokens=3)
        assert isinstance(result, Completed) and result.attempts == 2, provider

        with pytest.raises(E.BadRequest) as info:
            client.complete(provider, msgs("[[mock status=400]] bad"))
        assert info.value.status == 400 and info.value.provider == provider, (provider, info.value)

        for fault in ("malformed_after=2", "cut_after=2"):
            with pytest.raises(E.StreamError):
                list(client.stream(provider, msgs(f"[[mock {fault}]] go"), max_tokens=8))
