"""Runners on the wire: what each sends (body, URL, auth) through the worker's own HTTP session
on the in-memory transport (actors/testing/mock_transport.py), how it reads whole responses and
error bodies, and typed errors for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from actors import errors as E
from actors.providers import PROVIDERS
from actors.settings.loader import parse_config
from actors.core.credentials import Secret
from actors.types import InferenceRequest
from actors.providers import make_runner
from actors.providers.aws import sign_v4
from actors.providers.base import StreamAccumulator

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ENDPOINTS = {"openai": "https://api.openai.com/v1", "openai_responses": "https://api.openai.com/v1",
             "azure_openai": "https://contoso.openai.azure.com", "openai_compatible": "http://litellm.internal:4000/v1",
             "anthropic": "https://api.anthropic.com/v1", "gemini": "https://generativelanguage.googleapis.com/v1beta",
             "cohere": "https://api.cohere.com/v2", "bedrock": "https://bedrock-runtime.us-east-1.amazonaws.com"}
MODELS = {"anthropic": "claude-3-5-haiku-20241022", "gemini": "gemini-2.5-flash", "cohere": "command-r-08-2024",
          "bedrock": "anthropic.claude-3-5-sonnet-20240620-v1:0"}
KEY = "sk-secret-key-0123456789"
AWS_KEY = {"access_key_id": "AKIAIOSFODNN7EXAMPLE", "secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
           "session_token": "FwoGZXIvYXdzEBYaDtoken"}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "Checking.", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21}'},
    {"role": "user", "content": "And tomorrow?"},
]


def runner_for(provider: str, **fields):
    dep = {"name": "d", "model": MODELS.get(provider, "gpt-4o-mini"), "provider": provider,
           "endpoint": ENDPOINTS[provider], **fields}
    if provider == "bedrock":
        dep.setdefault("options", {"region": "us-east-1"})
    return make_runner(parse_config({"deployments": [dep]}).deployments[0])


def credential(provider: str) -> Secret:
    return Secret(AWS_KEY if provider == "bedrock" else KEY)


def body_of(provider: str, messages=CONVERSATION, stream=False, **params) -> dict:
    http = runner_for(provider).build_request(InferenceRequest("m", messages, params, stream=stream),
                                              credential(provider))
    return json.loads(http.body)


# --- the HTTP layer -------------------------------------------------------------------------

EXPECTED_URL = {
    "openai": "https://api.openai.com/v1/chat/completions",
    "openai_responses": "https://api.openai.com/v1/responses",
    "azure_openai": "https://contoso.openai.azure.com/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21",
    "openai_compatible": "http://litellm.internal:4000/v1/chat/completions",
    "anthropic": "https://api.anthropic.com/v1/messages",
    "gemini": "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
    "cohere": "https://api.cohere.com/v2/chat",
    "bedrock": "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream",
}
EXPECTED_AUTH = {
    "openai": {"authorization": f"Bearer {KEY}"}, "openai_responses": {"authorization": f"Bearer {KEY}"},
    "azure_openai": {"api-key": KEY}, "openai_compatible": {"authorization": f"Bearer {KEY}"},
    "anthropic": {"x-api-key": KEY, "anthropic-version": "2023-06-01"}, "gemini": {"x-goog-api-key": KEY},
    "cohere": {"authorization": f"Bearer {KEY}"},
    "bedrock": {"x-amz-security-token": AWS_KEY["session_token"], "host": "bedrock-runtime.us-east-1.amazonaws.com"},
}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_streamed_call_reaches_the_provider_url_with_its_auth_headers(provider):
    from actors.runtime.upstream_session import http_session
    from actors.testing.mock_transport import MockResponse, MockTransport

    runner = runner_for(provider, headers={"x-team": "search"})
    http = runner.build_request(InferenceRequest("m", CONVERSATION, {"max_tokens": 5}, stream=True),
                                credential(provider))
    network = MockTransport(lambda request: MockResponse(200))
    session = http_session(ENDPOINTS[provider], network)    # the worker's session: its adapter, its transport
    session.request(http.method, http.url, data=http.body, headers=http.headers, timeout=5).close()
    session.close()
    (sent,) = network.requests
    assert sent.url == EXPECTED_URL[provider]
    headers = sent.headers
    for name, value in EXPECTED_AUTH[provider].items():
        assert headers[name] == value, name
    assert headers["x-team"] == "search" and headers["content-type"] == "application/json"
    assert KEY not in sent.url and KEY not in repr(http) and AWS_KEY["secret_access_key"] not in repr(http)
    if provider != "gemini":
        assert "x-goog-api-key" not in headers
    if provider == "bedrock":
        assert headers["accept"] == "application/vnd.amazon.eventstream"
        # Re-sign what was actually sent: the URL (with ':' as %3A), host, date and body all match.
        resigned = sign_v4("POST", sent.url, sent.body, runner_credentials(), "us-east-1", "bedrock",
                           headers["x-amz-date"])
        assert headers["authorization"] == resigned["authorization"]
        assert headers["authorization"].startswith(
            f"AWS4-HMAC-SHA256 Credential={AWS_KEY['access_key_id']}/{headers['x-amz-date'][:8]}/us-east-1/bedrock/"
            "aws4_request, SignedHeaders=host;x-amz-date;x-amz-security-token, Signature=")
    else:
        assert headers["accept"] == "text/event-stream"


def runner_credentials():
    from actors.providers.aws import aws_credentials

    return aws_credentials(Secret(AWS_KEY))


def test_gemini_never_puts_the_key_in_the_url_and_can_use_a_bearer_token_for_vertex():
    runner = runner_for("gemini", endpoint="https://us-central1-aiplatform.googleapis.com/v1/projects/p/locations/"
                                           "us-central1/publishers/google", options={"auth": "bearer"})
    http = runner.build_request(InferenceRequest("m", CONVERSATION), Secret("ya29.token"))
    assert http.url.endswith("/publishers/google/models/gemini-2.5-flash:generateContent")
    assert http.headers["authorization"] == "Bearer ya29.token" and "x-goog-api-key" not in http.headers
    assert "key=" not in http.url


def test_openai_compatible_takes_its_auth_header_scheme_and_path_from_options():
    runner = runner_for("openai_compatible", options={"auth_header": "X-Api-Key", "auth_scheme": "", "path": "/chat"})
    http = runner.build_request(InferenceRequest("m", CONVERSATION, {"max_tokens": 7}), Secret(KEY))
    assert http.url == "http://litellm.internal:4000/v1/chat" and http.headers["x-api-key"] == KEY
    assert "authorization" not in http.headers and json.loads(http.body)["max_tokens"] == 7


def test_azure_can_authenticate_with_an_entra_token_and_a_named_deployment():
    runner = runner_for("azure_openai", options={"auth": "bearer", "azure_deployment": "prod gpt",
                                                 "api_version": "2025-01-01-preview"})
    http = runner.build_request(InferenceRequest("m", CONVERSATION), Secret("eyJ0eXAi"))
    assert http.url.endswith("/openai/deployments/prod%20gpt/chat/completions?api-version=2025-01-01-preview")
    assert http.headers["authorization"] == "Bearer eyJ0eXAi" and "api-key" not in http.headers
    with pytest.raises(E.ConfigError, match="options.auth"):
        runner_for("azure_openai", options={"auth": "basic"})


# --- request bodies -----------------------------------------------------------------------

def test_responses_request_uses_input_items_and_instructions():
    body = body_of("openai_responses", tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},
                   max_tokens=50, reasoning_effort="low", temperature=0.2)
    assert body["instructions"] == "Be brief." and body["max_output_tokens"] == 50 and body["store"] is False
    assert body["input"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Checking."},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": '{"temperature": 21}'},
        {"role": "user", "content": "And tomorrow?"}]
    assert body["tools"] == [{"type": "function", "name": "get_weather", "description": "Weather in a city.",
                              "parameters": TOOLS[0]["function"]["parameters"], "strict": False}]
    assert body["tool_choice"] == {"type": "function", "name": "get_weather"}
    assert body["reasoning"] == {"effort": "low"} and body["temperature"] == 0.2
    with pytest.raises(E.BadRequest, match="no stop sequences"):
        body_of("openai_responses", stop=["\n"])


def test_gemini_request_has_user_and_model_turns_and_generation_config():
    body = body_of("gemini", tools=TOOLS, tool_choice="required", max_tokens=64, temperature=0.5, top_p=0.9,
                   top_k=40, stop="END")
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Weather in Paris?"}]},
        {"role": "model", "parts": [{"text": "Checking."}, {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"temperature": 21}}},
                                   {"text": "And tomorrow?"}]}]
    assert body["generationConfig"] == {"maxOutputTokens": 64, "temperature": 0.5, "topP": 0.9, "topK": 40,
                                        "stopSequences": ["END"]}
    assert body["tools"] == [{"functionDeclarations": [{"name": "get_weather", "description": "Weather in a city.",
                                                        "parameters": TOOLS[0]["function"]["parameters"]}]}]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    plain = body_of("gemini", messages=[
        {"role": "assistant", "content": "", "tool_calls": [{"id": "x", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "x", "content": "sunny"}])
    assert plain["contents"][1]["parts"] == [{"functionResponse": {"name": "f", "response": {"output": "sunny"}}}]


def test_cohere_request_keeps_chat_roles_and_renames_sampling_parameters():
    body = body_of("cohere", tools=TOOLS, tool_choice="required", max_tokens=64, top_p=0.9, top_k=40, stop="END",
                   stream=True)
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "tool", "user"]
    assert body["messages"][2]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]
    assert body["messages"][3] == {"role": "tool", "content": '{"temperature": 21}', "tool_call_id": "call_1"}
    assert (body["max_tokens"], body["p"], body["k"], body["stop_sequences"]) == (64, 0.9, 40, ["END"])
    assert body["tool_choice"] == "REQUIRED" and body["stream"] is True and body["model"] == "command-r-08-2024"
    assert body["tools"] == [{"type": "function", "function": {k: TOOLS[0]["function"][k]
                                                                for k in ("name", "description", "parameters")}}]


def test_bedrock_request_alternates_turns_with_tool_blocks():
    body = body_of("bedrock", tools=TOOLS, tool_choice={"type": "function", "function": {"name": "get_weather"}},
                   max_tokens=64, temperature=0.1, stop=["END"])
    assert body["system"] == [{"text": "Be brief."}]
    assert body["messages"] == [
        {"role": "user", "content": [{"text": "Weather in Paris?"}]},
        {"role": "assistant", "content": [{"text": "Checking."}, {"toolUse": {
            "toolUseId": "call_1", "name": "get_weather", "input": {"city": "Paris"}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "call_1", "content": [{"text": '{"temperature": 21}'}]}},
                                     {"text": "And tomorrow?"}]}]
    assert body["inferenceConfig"] == {"maxTokens": 64, "temperature": 0.1, "stopSequences": ["END"]}
    assert body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"] == {"json": TOOLS[0]["function"]["parameters"]}
    assert body["toolConfig"]["toolChoice"] == {"tool": {"name": "get_weather"}}
    assert "toolConfig" not in body_of("bedrock", messages=CONVERSATION[:2], tools=TOOLS, tool_choice="none")


def test_anthropic_request_uses_the_shared_turn_folding():
    body = body_of("anthropic", tools=TOOLS, tool_choice="required")
    assert body["system"] == "Be brief." and [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    assert body["messages"][1]["content"][1] == {"type": "tool_use", "id": "call_1", "name": "get_weather",
                                                 "input": {"city": "Paris"}}
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "call_1", "content": '{"temperature": 21}'},
        {"type": "text", "text": "And tomorrow?"}]
    assert body["tool_choice"] == {"type": "any"}


@pytest.mark.parametrize("provider", ["gemini", "cohere", "bedrock", "openai_responses"])
def test_parts_other_than_text_are_a_bad_request(provider):
    image = [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                          {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]
    with pytest.raises(E.BadRequest, match="image_url"):
        body_of(provider, messages=image)


@pytest.mark.parametrize("provider", ["gemini", "bedrock", "anthropic"])
def test_tool_arguments_that_are_not_a_json_object_are_a_bad_request(provider):
    broken = [CONVERSATION[1], {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": "{not json"}}]}]
    with pytest.raises(E.BadRequest, match="not a JSON object"):
        body_of(provider, messages=broken)


def test_other_bad_input_is_typed():
    with pytest.raises(E.BadRequest, match="answers no tool call"):
        body_of("gemini", messages=[{"role": "tool", "tool_call_id": "nope", "content": "x"}])
    with pytest.raises(E.BadRequest, match="tool_choice"):
        body_of("cohere", tool_choice="sometimes")
    with pytest.raises(E.ConfigError, match="options.region"):
        runner_for("bedrock", options={})
    with pytest.raises(E.ConfigError, match="options.auth"):
        runner_for("gemini", options={"auth": "query"})


@pytest.mark.parametrize("secret", [None, "just-one-part", "{broken json", {"access_key_id": "AKID"}])
def test_unusable_aws_credentials_are_an_authentication_error_that_shows_nothing(secret):
    runner = runner_for("bedrock")
    with pytest.raises(E.AuthenticationError) as info:
        runner.build_request(InferenceRequest("m", CONVERSATION), None if secret is None else Secret(secret))
    assert "just-one-part" not in str(info.value) and "broken" not in str(info.value)
    assert "ACCESS_KEY_ID:SECRET_ACCESS_KEY" in str(info.value)


# --- whole responses ----------------------------------------------------------------------

def parse(provider: str, name: str) -> StreamAccumulator:
    acc = StreamAccumulator()
    acc.add(runner_for(provider).parse_response((FIXTURES / provider / name).read_bytes()))
    return acc


@pytest.mark.parametrize("provider,text,tools,finish,usage", [
    ("openai_responses", "Checking the weather in Paris.", [("call_12345xyz", "get_weather", {"location": "Paris, France"})],
     ("tool_calls", "completed"), (328, 52, 256, 30)),
    ("gemini", "Checking the weather.", [("call_0_get_weather", "get_weather", {"location": "Paris, France"})],
     ("tool_calls", "STOP"), (310, 24 + 66, 256, 66)),
    ("cohere", "Checking now.", [("get_weather_1byjy32y4hvq", "get_weather", {"location": "Toronto"})],
     ("tool_calls", "TOOL_CALL"), (1042, 59, 0, 0)),
    ("bedrock", "I'll check the weather.", [("tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "get_weather", {"location": "Seattle, WA"})],
     ("tool_calls", "tool_use"), (412 + 2048, 96, 2048, 0)),
])
def test_whole_responses(provider, text, tools, finish, usage):
    acc = parse(provider, "response.json")
    assert acc.text == text and acc.done and acc.error is None
    assert [(c.id, c.name, json.loads(c.arguments)) for c in acc.tool_calls()] == tools
    assert (acc.finish_reason, acc.raw_finish_reason) == finish
    assert acc.usage.as_dict() == dict(zip(("input_tokens", "output_tokens", "cached_input_tokens",
                                            "reasoning_tokens"), usage))


# --- error bodies ---------------------------------------------------------------------------

@pytest.mark.parametrize("provider,name,status,headers,expected,fields", [
    ("openai", "context_length.json", 400, {}, E.ContextLengthExceeded, {"tokens": 130412, "max_tokens": 128000}),
    ("openai_responses", "context_length.json", 400, {}, E.ContextLengthExceeded, {}),
    ("anthropic", "context_length.json", 400, {}, E.ContextLengthExceeded, {"tokens": 208310, "max_tokens": 200000}),
    ("gemini", "context_length.json", 400, {}, E.ContextLengthExceeded, {"tokens": 1231237, "max_tokens": 1048576}),
    ("gemini", "resource_exhausted.json", 429, {}, E.RateLimited, {"retry_after_s": 33.0, "retryable": True}),
    ("gemini", "api_key_invalid.json", 400, {}, E.AuthenticationError, {}),
    ("cohere", "context_length.json", 400, {}, E.ContextLengthExceeded, {}),
    ("cohere", "rate_limited.json", 429, {"Retry-After": "7"}, E.RateLimited, {"retry_after_s": 7.0}),
    ("cohere", "invalid_token.json", 401, {}, E.AuthenticationError, {}),
    ("cohere", "invalid_token.json", 499, {}, E.StreamError, {"status": 499, "retryable": True}),
    ("bedrock", "validation_context.json", 400,
     {"x-amzn-errortype": "ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/",
      "x-amzn-RequestId": "b5e1bd6a-0000"}, E.ContextLengthExceeded,
     {"tokens": 208310, "max_tokens": 200000, "request_id": "b5e1bd6a-0000"}),
    ("bedrock", "throttling.json", 429, {"x-amzn-errortype": "ThrottlingException:http://internal.amazon.com/"},
     E.RateLimited, {"retryable": True, "message": "Too many requests, please wait before trying again."}),
])
def test_error_bodies_are_classified(provider, name, status, headers, expected, fields):
    body = (FIXTURES / provider / name).read_bytes()
    error = runner_for(provider).classify_error(status, headers, body)
    assert type(error) is expected and error.provider == provider, error
    for field, value in fields.items():
        assert getattr(error, field) == value, field


@pytest.mark.parametrize("errortype,status,expected,retryable", [
    ("ServiceQuotaExceededException", 400, E.RateLimited, False),
    ("ServiceUnavailableException", 503, E.Overloaded, True),
    ("ModelStreamErrorException", 424, E.StreamError, True),
    ("ModelTimeoutException", 408, E.Timeout, True),
    ("InternalServerException", 500, E.ServerError, True),
    ("AccessDeniedException", 403, E.PermissionDenied, False),
    ("UnrecognizedClientException", 403, E.AuthenticationError, False),
    ("ExpiredTokenException", 403, E.AuthenticationError, False),
    ("ResourceNotFoundException", 404, E.NotFound, False),
    ("ValidationException", 400, E.BadRequest, False),
    ("", 502, E.ServerError, True),
])
def test_bedrock_error_types(errortype, status, expected, retryable):
    headers = {"x-amzn-errortype": f"{errortype}:http://internal.amazon.com/coral/"} if errortype else {}
    body = b'{"message":"something happened"}' if errortype else b"<html>Bad Gateway</html>"
    error = runner_for("bedrock").classify_error(status, headers, body)
    assert type(error) is expected and error.retryable is retryable and error.status == status


def test_error_messages_never_echo_a_key():
    body = json.dumps({"message": f"invalid api token {KEY}"}).encode()
    error = runner_for("cohere").classify_error(401, {}, body)
    assert KEY not in str(error) and "[redacted]" in error.message
