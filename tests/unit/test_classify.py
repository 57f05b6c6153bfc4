import json
from email.utils import format_datetime
from datetime import datetime, timezone

import pytest

from actors import errors as E
from actors.core.classify import classify_error_body, classify_http_status, parse_retry_after, redact

NOW = 1_800_000_000.0


def clock():
    return NOW


@pytest.mark.parametrize("status", [200, 201, 204, 299])
def test_success_is_none(status):
    assert classify_http_status(status, {}) is None


@pytest.mark.parametrize("status,cls,retryable,counts", [
    (400, E.BadRequest, False, False),
    (401, E.AuthenticationError, False, False),
    (403, E.PermissionDenied, False, False),
    (404, E.NotFound, False, False),
    (408, E.Timeout, True, True),
    (409, E.Conflict, True, False),
    (413, E.BadRequest, False, False),
    (422, E.BadRequest, False, False),
    (429, E.RateLimited, True, False),
    (418, E.BadRequest, False, False),
    (500, E.ServerError, True, True),
    (502, E.ServerError, True, True),
    (503, E.ServerError, True, True),
    (504, E.ServerError, True, True),
    (529, E.Overloaded, True, True),
    (599, E.ServerError, True, True),
])
def test_status_table(status, cls, retryable, counts):
    err = classify_http_status(status, {}, None, provider="openai")
    assert type(err) is cls
    assert err.status == status and err.provider == "openai"
    assert err.retryable is retryable
    assert type(err).counts_for_breaker is counts


def test_retry_after_forms():
    assert parse_retry_after({"Retry-After": "12"}) == 12
    assert parse_retry_after({"retry-after": " 3 "}) == 3
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    # retry-after-ms is the more precise and wins
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    date = format_datetime(datetime.fromtimestamp(NOW + 30, timezone.utc), usegmt=True)
    assert parse_retry_after({"Retry-After": date}, now=clock) == pytest.approx(30)
    past = format_datetime(datetime.fromtimestamp(NOW - 30, timezone.utc), usegmt=True)
    assert parse_retry_after({"Retry-After": past}, now=clock) == 0.0
    assert parse_retry_after({}) is None


@pytest.mark.parametrize("value", ["garbage", "-1", "", "nan", "inf", "Mon, 99 Foo 2025", "1e999", "\x00"])
def test_malformed_retry_after_is_ignored(value):
    assert parse_retry_after({"retry-after": value}) is None
    err = classify_http_status(429, {"retry-after": value, "retry-after-ms": value})
    assert type(err) is E.RateLimited and err.retry_after_s is None


def test_malformed_ms_falls_back_to_seconds():
    assert parse_retry_after({"retry-after-ms": "soon", "retry-after": "4"}) == 4


def test_retry_after_reaches_every_status():
    err = classify_http_status(503, {"Retry-After": "7"})
    assert err.retry_after_s == 7


@pytest.mark.parametrize("value,expected", [("true", True), ("TRUE", True), ("false", False), (" false ", False)])
def test_x_should_retry_overrides(value, expected):
    assert classify_http_status(400, {"x-should-retry": value}).retryable is expected
    assert classify_http_status(503, {"x-should-retry": value}).retryable is expected


def test_x_should_retry_garbage_ignored():
    assert classify_http_status(503, {"x-should-retry": "maybe"}).retryable is True
    assert classify_http_status(400, {"x-should-retry": "1"}).retryable is False


def test_openai_context_length():
    body = {"error": {"message": "This model's maximum context length is 8192 tokens. However, your "
                                 "messages resulted in 9000 tokens.", "type": "invalid_request_error",
                      "param": "messages", "code": "context_length_exceeded"}}
    err = classify_http_status(400, {"x-request-id": "req_1"}, json.dumps(body), provider="openai")
    assert type(err) is E.ContextLengthExceeded
    assert (err.tokens, err.max_tokens) == (9000, 8192)
    assert err.request_id == "req_1" and isinstance(err, E.BadRequest)


def test_openai_content_filter_by_code_and_azure_inner_error():
    body = {"error": {"message": "The response was filtered", "type": None, "param": "prompt",
                      "code": "content_filter", "status": 400,
                      "innererror": {"code": "ResponsibleAIPolicyViolation"}}}
    err = classify_http_status(400, {}, json.dumps(body).encode(), provider="azure")
    assert type(err) is E.ContentFiltered and not err.retryable
    body2 = {"error": {"message": "blocked", "type": "content_filter"}}
    assert type(classify_http_status(400, {}, body2)) is E.ContentFiltered


def test_openai_insufficient_quota_is_not_retried():
    body = {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                      "code": "insufficient_quota"}}
    err = classify_http_status(429, {}, body)
    assert type(err) is E.RateLimited and err.retryable is False


def test_anthropic_bodies():
    def anth(etype, message, status):
        body = {"type": "error", "error": {"type": etype, "message": message}, "request_id": "req_a"}
        return classify_http_status(status, {}, json.dumps(body), provider="anthropic")

    err = anth("invalid_request_error", "prompt is too long: 215000 tokens > 200000 maximum", 400)
    assert type(err) is E.ContextLengthExceeded and (err.tokens, err.max_tokens) == (215000, 200000)
    assert err.request_id == "req_a"
    assert type(anth("overloaded_error", "Overloaded", 529)) is E.Overloaded
    assert anth("overloaded_error", "Overloaded", 529).retryable
    assert type(anth("rate_limit_error", "slow", 429)) is E.RateLimited
    assert type(anth("authentication_error", "bad key", 401)) is E.AuthenticationError
    assert type(anth("permission_error", "no", 403)) is E.PermissionDenied
    assert type(anth("not_found_error", "no model", 404)) is E.NotFound
    assert type(anth("request_too_large", "big", 413)) is E.BadRequest
    assert type(anth("api_error", "boom", 500)) is E.ServerError
    assert type(anth("invalid_request_error", "messages: field required", 400)) is E.BadRequest


def test_anthropic_spend_limit_not_retried():
    body = {"type": "error", "error": {"type": "rate_limit_error", "message": "spend limit",
                                        "details": {"error_code": "enforced_spend_limit_reached"}}}
    assert classify_http_status(429, {}, body).retryable is False


def test_gemini_bodies():
    def gem(code, status, message):
        return classify_http_status(code, {}, json.dumps({"error": {"code": code, "message": message,
                                                                     "status": status}}), provider="gemini")

    err = gem(400, "INVALID_ARGUMENT", "The input token count (1200000) exceeds the maximum number "
                                       "of tokens allowed (1048576).")
    assert type(err) is E.ContextLengthExceeded and (err.tokens, err.max_tokens) == (1200000, 1048576)
    assert type(gem(429, "RESOURCE_EXHAUSTED", "Quota exceeded")) is E.RateLimited
    assert type(gem(400, "FAILED_PRECONDITION", "Request blocked due to safety")) is E.ContentFiltered
    assert type(gem(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.")) is E.AuthenticationError
    assert type(gem(503, "UNAVAILABLE", "The model is overloaded.")) is E.Overloaded
    assert type(gem(403, "PERMISSION_DENIED", "denied")) is E.PermissionDenied
    # Gemini without alt=sse wraps the error in a JSON array
    arr = json.dumps([{"error": {"code": 429, "message": "q", "status": "RESOURCE_EXHAUSTED"}}])
    assert type(classify_http_status(429, {}, arr)) is E.RateLimited


def test_mid_stream_error_events():
    err = classify_error_body({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}},
                              provider="anthropic")
    assert type(err) is E.Overloaded and err.status is None
    flat = classify_error_body({"type": "error", "code": "context_length_exceeded", "message": "too long",
                                "sequence_number": 3})
    assert type(flat) is E.ContextLengthExceeded
    assert classify_error_body({"choices": []}) is None
    assert classify_error_body("not json") is None


def test_plain_text_and_html_bodies_are_bounded_and_kept():
    err = classify_http_status(502, {}, "<html>" + "x" * 5000 + "</html>")
    assert type(err) is E.ServerError and len(err.message) <= 501
    assert classify_http_status(503, {}, b"upstream busy").message == "upstream busy"
    assert classify_http_status(500, {}, b"\xff\xfe not utf8").message.endswith("not utf8")


def test_secrets_in_bodies_are_redacted():
    body = {"error": {"message": "Incorrect API key provided: sk-proj-abcdefghijklmnop1234. Bearer abc.def.ghijklmn",
                      "type": "invalid_request_error", "code": "invalid_api_key"}}
    err = classify_http_status(401, {}, body)
    assert type(err) is E.AuthenticationError
    assert "sk-proj" not in str(err) and "abc.def" not in repr(err)
    assert redact("key AIzaSyA1234567890abcdefghijklmnop") == "key [redacted]"


def test_non_string_header_values_are_ignored():
    err = classify_http_status(429, {"Retry-After": ["5"], "x-should-retry": 1, "retry-after-ms": None})
    assert type(err) is E.RateLimited and err.retry_after_s is None and err.retryable
    assert classify_http_status(500, None).status == 500


def test_token_counts_in_either_order():
    cohere = classify_error_body({"error": {"message": "too many tokens: the prompt cannot exceed 128000 - "
                                                       "received 131084", "code": "context_length_exceeded"}}, 400)
    assert type(cohere) is E.ContextLengthExceeded and (cohere.tokens, cohere.max_tokens) == (131084, 128000)


def test_openai_stream_server_error_is_a_server_error():
    err = classify_error_body({"error": {"message": "The server had an error", "type": "server_error"}})
    assert type(err) is E.ServerError and err.retryable


@pytest.mark.parametrize("status,body,cls,message", [
    (500, {"error": {"message": "1 validation error for Request: temperature must be a float",
                     "type": "internal_server_error"}}, E.ServerError, "1 validation error for Request"),
    (429, {"error": {"code": 429, "message": "Rate limit exceeded", "status": "rate_limit_error"}},
     E.RateLimited, "Rate limit exceeded"),
    (503, [{"error": {"code": 503, "message": "backend warming up", "status": "WARMING"}}], E.ServerError,
     "backend warming up"),
    (422, {"detail": "max_tokens too large"}, E.BadRequest, "max_tokens too large"),
])
def test_an_unknown_error_type_keeps_the_providers_message(status, body, cls, message):
    error = classify_http_status(status, {}, json.dumps(body).encode())
    assert type(error) is cls and message in error.message and error.status == status


def test_a_kept_message_is_bounded_and_redacted():
    body = {"error": {"message": "bad key sk-abcdefghijklmnopqrstuvwx " + "y" * 2000, "type": "weird"}}
    error = classify_http_status(500, {}, json.dumps(body).encode())
    assert "sk-abc" not in error.message and "[redacted]" in error.message and len(error.message) < 600


# -- servers that answer 500 to input they cannot handle (docs/reliability.md, "Whose fault is a failure") --

@pytest.mark.parametrize("body, said", [
    # llama.cpp's server (format_error_response)
    ({"error": {"code": 500, "message": "JSON schema conversion failed: unrecognized type 'foo'",
                "type": "server_error"}}, "JSON schema conversion failed: unrecognized type 'foo'"),
    # vLLM's ErrorResponse, flat
    ({"object": "error", "message": "logit_bias: invalid token id 'abc'", "type": "InternalServerError",
      "param": None, "code": 500}, "logit_bias: invalid token id 'abc'"),
    # a FastAPI server whose pydantic validation error became a 500; the input it echoes is left out
    ({"detail": [{"type": "missing", "loc": ["body", "messages", 1, "tool_call_id"], "msg": "Field required",
                  "input": {"role": "tool", "content": "sk-secret-0123456789abcdef"}}]},
     "body.messages.1.tool_call_id: Field required"),
])
def test_a_validation_500_keeps_what_the_server_said_and_is_a_suspect_server_error(body, said):
    from actors.core.caller_fault import is_suspect

    err = classify_http_status(500, {}, json.dumps(body).encode())
    assert type(err) is E.ServerError and err.status == 500 and err.message == said
    assert is_suspect(err) and "sk-secret" not in repr(err)


@pytest.mark.parametrize("body, said", [
    ({"error": "  upstream exploded  "}, "upstream exploded"),
    ({"error": {"detail": "the model is loading"}}, "the model is loading"),
    ({"error": {"Message": "Internal failure (AWS style)"}}, "Internal failure (AWS style)"),
    ({"error": {"message": "   ", "detail": "blank message skipped"}}, "blank message skipped"),
    ({"detail": [{"loc": ["body", "n"], "msg": "must be >= 1"}, {"msg": "no location"}, "junk",
                 {"loc": ["x"], "msg": 3}]}, "body.n: must be >= 1; no location"),
    ({"detail": [{"loc": [str(i)], "msg": f"m{i}"} for i in range(7)]}, "0: m0; 1: m1; 2: m2; 3: m3; 4: m4"),
])
def test_the_message_of_an_unrecognised_error_body_is_kept_wherever_it_is(body, said):
    err = classify_http_status(500, {}, json.dumps(body).encode())
    assert type(err) is E.ServerError and err.message == said


@pytest.mark.parametrize("body", [{"detail": [{"loc": ["a"]}]}, {"detail": "   "}, {"error": 7}])
def test_an_error_body_that_says_nothing_falls_back_to_the_status(body):
    assert classify_http_status(500, {}, json.dumps(body).encode()).message == "HTTP 500"


def test_a_zero_retry_after_is_now_and_a_negative_one_is_nonsense():
    assert parse_retry_after({"retry-after": "0"}) == 0.0
    assert parse_retry_after({"retry-after": "0.5"}) == 0.5
    assert parse_retry_after({"retry-after": "-1"}) is None
    assert parse_retry_after({"retry-after-ms": "0", "retry-after": "9"}) == 0.0


@pytest.mark.parametrize("headers, body, expected", [
    ({"X-Request-Id": "a"}, None, "a"), ({"request-id": "b"}, None, "b"), ({"x-amzn-RequestId": "c"}, None, "c"),
    ({"x-goog-request-id": "d"}, None, "d"), ({"apim-request-id": "e"}, None, "e"),
    ({"x-request-id": "a", "request-id": "b"}, None, "a"),
    ({}, {"request_id": "from-body"}, "from-body"), ({}, {"request_id": 5}, ""),
    ({"x-request-id": "r" * 300}, None, "r" * 128), ({}, {"request_id": "q" * 300}, "q" * 128),
])
def test_the_providers_request_id_is_kept_from_any_of_its_names_bounded(headers, body, expected):
    err = classify_http_status(500, headers, json.dumps(body).encode() if body else None)
    assert err.request_id == expected


@pytest.mark.parametrize("message, tokens, limit", [
    ("This model's maximum context length is 128,000 tokens. However, your messages resulted in 130,512 tokens.",
     130512, 128000),
    ("prompt is too long: 210,345 tokens > 200000 maximum", 210345, 200000),
    ("limit 4096 exceeded: the prompt has 5000 tokens", 5000, 4096),
    ("input of 5000 tokens; the limit is 4096 tokens", 5000, 4096),
])
def test_context_length_counts_are_read_whichever_order_the_provider_says_them(message, tokens, limit):
    err = classify_http_status(400, {}, json.dumps({"error": {"message": message, "code": "context_length_exceeded"}}))
    assert isinstance(err, E.ContextLengthExceeded) and (err.tokens, err.max_tokens) == (tokens, limit)


@pytest.mark.parametrize("status, cls", [(300, E.ServerError), (399, E.ServerError), (400, E.BadRequest),
                                         (418, E.BadRequest), (499, E.BadRequest), (500, E.ServerError)])
def test_statuses_outside_the_table_are_a_bad_request_below_500_and_a_server_error_otherwise(status, cls):
    err = classify_http_status(status, {}, b"")
    assert type(err) is cls and err.status == status and err.provider == ""


def test_the_status_reaches_the_error_body_and_the_retry_after_reaches_the_error():
    body = json.dumps({"error": {"message": "slow down", "type": "weird_type"}})
    err = classify_http_status(429, {"retry-after": "7"}, body, provider="p")
    assert type(err) is E.RateLimited and err.retry_after_s == 7.0 and err.status == 429 and err.provider == "p"
    when = format_datetime(datetime.fromtimestamp(NOW + 12, timezone.utc), usegmt=True)
    assert classify_http_status(503, {"retry-after": when}, b"", now=clock).retry_after_s == pytest.approx(12)
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00"}) is None   # no zone: not a date we trust


@pytest.mark.parametrize("status, body, cls, attrs", [
    (400, {"error": {"message": "too big", "code": "string_above_max_length"}}, E.ContextLengthExceeded, {}),
    (400, {"error": {"message": "nope", "code": "content_filter"}}, E.ContentFiltered, {"reason": "content_filter"}),
    (400, {"error": {"message": "nope", "type": "content_filter_results_violation"}}, E.ContentFiltered,
     {"reason": "content_filter_results_violation"}),
    (400, {"error": {"message": "nope", "innererror": {"code": "ResponsibleAIPolicyViolation"}}}, E.ContentFiltered,
     {"reason": "content_filter"}),
    (400, {"error": {"message": "blocked by safety settings", "status": "INVALID_ARGUMENT"}}, E.ContentFiltered,
     {"reason": "INVALID_ARGUMENT"}),
    (None, {"error": {"message": "busy", "status": "UNAVAILABLE"}}, E.Overloaded, {}),
    (529, {"error": {"message": "busy", "status": "UNAVAILABLE"}}, E.Overloaded, {}),
    (500, {"error": {"message": "busy", "status": "UNAVAILABLE"}}, E.ServerError, {}),
    (429, {"error": {"message": "quota", "status": "RESOURCE_EXHAUSTED"}}, E.RateLimited, {"retryable": True}),
    (400, {"error": {"message": "API key not valid. Please pass a valid API key."}}, E.AuthenticationError, {}),
    (None, {"error": {"message": "boom", "code": 503, "status": "INTERNAL"}}, E.ServerError, {"status": 503}),
    (None, {"type": "error", "error": "flat message"}, None, {}),
    (None, {"type": "error", "message": "rate", "code": "rate_limit_exceeded"}, E.RateLimited, {}),
    (300, {"error": {"message": "odd", "type": "api_error"}}, E.ServerError, {"status": 300}),
])
def test_error_bodies_are_typed_by_their_own_words_and_keep_their_message(status, body, cls, attrs):
    from actors.core.classify import classify_error_body

    err = classify_error_body(body, status, "p")
    if cls is None:
        assert err is None
        return
    assert type(err) is cls and err.provider == "p"
    assert err.message in ("too big", "nope", "blocked by safety settings", "busy", "quota", "boom", "rate", "odd",
                           "API key not valid. Please pass a valid API key.")
    for name, value in attrs.items():
        assert getattr(err, name) == value, name


def test_an_error_shaped_body_in_a_2xx_answer_is_not_an_error_by_its_type():
    from actors.core.classify import classify_error_body

    body = {"error": {"message": "odd", "type": "api_error"}}
    assert classify_error_body(body, 200, "p") is None and classify_error_body(body, 299, "p") is None


@pytest.mark.parametrize("body, said", [
    ({"detail": "plain words from a FastAPI server"}, "plain words from a FastAPI server"),
    ({"detail": [{"msg": "Xylophone out of tune"}]}, "Xylophone out of tune"),
    ({"detail": [{"loc": [], "msg": ": colon first"}]}, "colon first"),
])
def test_a_fastapi_detail_is_kept_as_said(body, said):
    assert classify_http_status(500, {}, json.dumps(body).encode()).message == said


def test_a_recognised_error_body_keeps_the_status_the_retry_time_and_the_request_id():
    body = {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}
    err = classify_http_status(429, {"Retry-After": "7", "x-request-id": "req-9"}, json.dumps(body).encode(),
                               provider="openai")
    assert type(err) is E.RateLimited and err.status == 429 and err.retry_after_s == 7.0
    assert err.request_id == "req-9" and err.provider == "openai"


@pytest.mark.parametrize("err, kind, said", [
    ({"status": "ABORTED"}, E.Conflict, "ABORTED"),                  # only a Google RPC status: it is the message
    ({"type": "overloaded_error"}, E.Overloaded, "overloaded_error"),  # only a type
])
def test_an_error_without_a_message_is_named_by_what_it_has(err, kind, said):
    got = classify_error_body({"error": err})
    assert type(got) is kind and got.message == said and got.provider == ""


def test_an_error_given_as_a_bare_string_is_read_as_its_message():
    text = "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens."
    got = classify_error_body({"error": text}, 400)
    assert type(got) is E.ContextLengthExceeded and got.message == text
    assert (got.tokens, got.max_tokens) == (9000, 8192)


def test_a_body_that_is_not_an_error_is_not_classified():
    assert classify_error_body({"id": "chatcmpl-1", "object": "chat.completion", "message": "hello"}) is None


def test_token_counts_read_the_order_from_the_words_before_the_first_number():
    from actors.core.classify import _token_counts

    assert _token_counts("input is 150 tokens, which exceeds the 100 token limit (150 > 100)") == (150, 100)


def test_the_detail_beside_an_unrecognised_error_object_is_the_message():
    body = {"error": {"code": "E42"}, "detail": "  the real words  "}
    assert classify_http_status(500, {}, json.dumps(body).encode()).message == "the real words"


def test_an_azure_filter_verdict_without_words_is_still_named_and_a_413_can_be_a_context_error():
    filtered = classify_error_body({"error": {"innererror": {"code": "ResponsibleAIPolicyViolation"}}})
    assert type(filtered) is E.ContentFiltered and filtered.message == "error" and filtered.reason == "content_filter"
    too_long = {"error": {"message": "This model's maximum context length is 8192 tokens, you requested 9000 tokens"}}
    assert type(classify_error_body(too_long, 413)) is E.ContextLengthExceeded
    assert type(classify_error_body(too_long, 414)) is not E.ContextLengthExceeded


def test_a_message_of_exactly_the_bound_is_kept_whole():
    assert redact("m" * 500) == "m" * 500 and redact("m" * 501) == "m" * 500 + "…"


def test_a_body_with_error_like_fields_but_no_error_object_is_not_an_error():
    assert classify_error_body({"status": "RESOURCE_EXHAUSTED", "message": "a field of some answer"}) is None
