"""One caller never takes a model away from the others, and one SDK call costs the provider at most
the deployment's ``max_retries + 1`` requests (docs/reliability.md), over HTTP with the real SDKs
at their default settings, against the mock provider scripted by request shape.
"""

from __future__ import annotations

import threading

import anthropic
import openai
import pytest

from actors.ops.http_process import start_http
from actors.settings.loader import build
from actors.settings.schema import HttpConfig

from conftest import deployment

BAD_KEY = "sk-atomr-bad-caller-0123456789"
GOOD_KEY = "sk-atomr-good-caller-0123456789"
MAX_RETRIES = 2
RETRY = {"max_retries": MAX_RETRIES, "base_delay_s": 0.01, "max_delay_s": 0.05}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


@pytest.fixture
def front(gateway, tmp_path):
    """front(deployments) -> (http handle, node handle, python client): a node and its HTTP listener."""
    started = []

    def make(deployments):
        node, client = gateway(deployments)
        keys = [{"name": "bad", "key": {"value": BAD_KEY}}, {"name": "good", "key": {"value": GOOD_KEY}}]
        handle = start_http(build(HttpConfig, {"listen": "127.0.0.1:0", "keys": keys}, "http"), node.admin_port,
                            models=[d["model"] for d in deployments], log_file=str(tmp_path / "http.log"))
        started.append(handle)
        return handle, node, client

    yield make
    for handle in started:
        handle.stop(timeout_s=10)


def bad_call(i: int) -> dict:
    """One of three request shapes the upstream cannot handle, as three kinds of server say it."""
    prompt = f"bad call {i}"
    shape = i % 3
    if shape == 0:
        return {"messages": [{"role": "user", "content": prompt}], "response_format": {
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "foo"}}}}
    if shape == 1:
        return {"messages": [{"role": "user", "content": prompt}], "logit_bias": {"50256": -100}}
    return {"tools": TOOLS, "messages": [
        {"role": "user", "content": prompt},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]}


RULES = [{"when": {"response_format": "*"}, "fault": {"status": 500, "body": "llama.cpp"}},
         {"when": {"logit_bias": "*"}, "fault": {"status": 500, "body": "vllm"}},
         {"when": {"messages.-1.role": "tool"}, "fault": {"status": 500, "body": "pydantic"}}]
SAID = ["JSON schema conversion failed", "token ids must be integers", "tool_call_id: Field required"]


def test_one_callers_requests_the_upstream_rejects_with_500_never_fail_another_callers(front, mock):
    mock.rules(RULES)
    breaker = {"consecutive_failures": 3, "open_s": 30, "max_open_s": 60}   # 3 counted failures would open it
    handle, node, client = front([deployment(mock.url, "shared", retry=RETRY, breaker=breaker)])
    bad = openai.OpenAI(base_url=handle.url + "/v1", api_key=BAD_KEY, timeout=60)     # the SDK's default retries
    good = openai.OpenAI(base_url=handle.url + "/v1", api_key=GOOD_KEY, timeout=60)
    bad_errors: list[Exception | None] = [None] * 50
    good_failures: list[tuple[int, Exception]] = []

    def bad_caller():
        for i in range(50):
            try:
                bad.chat.completions.create(model="shared", max_tokens=3, **bad_call(i))
            except Exception as exc:  # noqa: BLE001 - asserted below
                bad_errors[i] = exc

    def good_caller():
        for i in range(50):
            try:
                good.chat.completions.create(model="shared", max_tokens=3,
                                             messages=[{"role": "user", "content": f"good call {i}"}])
            except Exception as exc:  # noqa: BLE001 - asserted below
                good_failures.append((i, exc))

    threads = [threading.Thread(target=bad_caller), threading.Thread(target=good_caller)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    assert not any(t.is_alive() for t in threads)
    assert good_failures == []
    prompts = mock.stats()["prompts"]
    for i, error in enumerate(bad_errors):
        # The caller's own error, naming what the upstream said; the SDK did not repeat it (a 400).
        assert isinstance(error, openai.BadRequestError), (i, error)
        assert error.body["code"] == "upstream_rejected_request" and SAID[i % 3] in error.body["message"], error.body
        assert 1 <= prompts[f"bad call {i}"] <= MAX_RETRIES + 1
    assert all(prompts[f"good call {i}"] == 1 for i in range(50))
    status = client.status()
    assert [b.opens for b in status.breakers] == [0]     # the circuit never opened
    (engine,) = status.engines
    assert engine.stats["outcomes"]["failed"] == {"UpstreamRejected": 50}


def test_a_deployment_answering_500_to_everything_opens_within_its_failures_then_refuses_locally(front, mock):
    breaker = {"consecutive_failures": 5, "open_s": 60, "max_open_s": 120}
    handle, node, client = front([deployment(mock.url + "/mock:status=500", "down", retry=RETRY, breaker=breaker)])
    sdk = openai.OpenAI(base_url=handle.url + "/v1", api_key=GOOD_KEY, timeout=60)          # default retries
    failed_calls = 0
    while [b.state.value for b in client.status().breakers] != ["open"]:
        with pytest.raises(openai.InternalServerError) as caught:
            sdk.chat.completions.create(model="down", max_tokens=3,
                                        messages=[{"role": "user", "content": f"call {failed_calls}"}])
        # The deployment's own failure, as it was (a probe confirmed it): the SDK was told not to repeat it.
        assert caught.value.status_code == 502 and caught.value.response.headers["x-should-retry"] == "false"
        assert mock.stats()["prompts"][f"call {failed_calls}"] == MAX_RETRIES + 1
        failed_calls += 1
        assert failed_calls <= 5, "the circuit did not open within consecutive_failures calls"
    # Each failed call counted once, and so did the known-good probe that confirmed it.
    assert failed_calls == 3 and mock.stats()["prompts"]["ping"] == 3
    before = mock.stats()["total"]
    once = openai.OpenAI(base_url=handle.url + "/v1", api_key=GOOD_KEY, timeout=60, max_retries=0)
    with pytest.raises(openai.InternalServerError) as caught:
        once.chat.completions.create(model="down", max_tokens=3, messages=[{"role": "user", "content": "next"}])
    # Refused locally: nothing reached the upstream; worth repeating after the time to the probe.
    assert caught.value.status_code == 503 and caught.value.body["code"] == "circuit_open"
    assert mock.stats()["total"] == before
    assert caught.value.response.headers["x-should-retry"] == "true"
    assert 50 <= int(caught.value.response.headers["retry-after"]) <= 60


CASES = {
    # name: (the upstream's misbehaviour on every request, streamed, upstream requests per SDK call)
    "storm": ("status=500", False, MAX_RETRIES + 1),                 # the gateway's retries, then no more
    "rate_limited": ("status=429;retry_after=1", False, MAX_RETRIES + 1),
    "empty": ("empty=1", True, 2),                                   # an empty 200 is retried once at most
    "cut_early": ("cut_after=0", True, MAX_RETRIES + 1),             # cut before any token: retried
    "cut_late": ("cut_after=2", True, 1),                            # cut after tokens: never repeated
    "context": ("context=5", False, 1),                              # a 400 is never retried
}


def _openai_call(url: str, case: str, prompt: str, stream: bool) -> Exception:
    sdk = openai.OpenAI(base_url=url + "/v1", api_key=GOOD_KEY, timeout=60)
    try:
        if stream:
            for _ in sdk.chat.completions.create(model=case, max_tokens=8, stream=True,
                                                 messages=[{"role": "user", "content": prompt}]):
                pass
        else:
            sdk.chat.completions.create(model=case, max_tokens=8, messages=[{"role": "user", "content": prompt}])
    except openai.APIError as exc:
        return exc
    raise AssertionError(f"{case}: the openai SDK call succeeded")


def _anthropic_call(url: str, case: str, prompt: str, stream: bool) -> Exception:
    sdk = anthropic.Anthropic(base_url=url, api_key=GOOD_KEY, timeout=60)
    try:
        if stream:
            with sdk.messages.stream(model=case, max_tokens=8, messages=[{"role": "user", "content": prompt}]) as s:
                for _ in s.text_stream:
                    pass
        else:
            sdk.messages.create(model=case, max_tokens=8, messages=[{"role": "user", "content": prompt}])
    except anthropic.APIError as exc:
        return exc
    raise AssertionError(f"{case}: the anthropic SDK call succeeded")


def test_with_both_sdks_at_default_settings_one_call_costs_at_most_max_retries_plus_one(front, mock):
    deployments = [deployment(mock.url + f"/mock:{directive}", name, retry=RETRY, workers=1)
                   for name, (directive, _, _) in CASES.items()]
    handle, _, _ = front(deployments)
    seen = {}
    for name, (_, stream, expected) in CASES.items():
        for sdk, call in (("openai", _openai_call), ("anthropic", _anthropic_call)):
            prompt = f"{sdk} {name} with some more words than five"
            error = call(handle.url, name, prompt, stream)
            seen[(sdk, name)] = (mock.stats()["prompts"].get(prompt, 0), type(error).__name__)
            assert seen[(sdk, name)][0] == expected, (sdk, name, seen[(sdk, name)], error)
    assert all(n <= MAX_RETRIES + 1 for n, _ in seen.values())
    # The gateway's own known-good probes, judging the storm's 500s: at most one per failed call.
    probes = mock.stats()["prompts"].get("ping", 0)
    assert 1 <= probes <= 2
