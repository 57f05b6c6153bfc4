"""The HTTP front door with the real openai and anthropic SDKs, against a node on the mock provider.

Each test starts a node (conftest's ``gateway``) and the listener process beside it
(actors/ops/http_process.py), then talks to it only over HTTP, as an application would.
"""

from __future__ import annotations

import json
import socket
import threading

import anthropic
import openai
import pytest
import requests

from actors.client import GatewayClient
from actors.core.procstat import live_stat
from actors.ops.http_process import start_http
from actors.settings.loader import build
from actors.settings.schema import HttpConfig

from conftest import deployment, wait_for

KEY = "sk-atomr-test-key-0123456789"
OTHER = "sk-atomr-other-key-abcdefgh"
HI = [{"role": "user", "content": "hi"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
NO_RETRY = {"max_retries": 0, "base_delay_s": 0.05, "max_delay_s": 0.2}


@pytest.fixture
def front(gateway, mock, tmp_path):
    """front(**http) -> (url, mock, node handle): a node serving gpt (OpenAI) and claude (Anthropic) upstreams."""
    started = []

    def make(deployments=None, **http):
        deployments = deployments or [deployment(mock.url, "gpt", retry=NO_RETRY),
                                      deployment(mock.url, "claude", provider="anthropic", retry=NO_RETRY)]
        node, _ = gateway(deployments)
        section = {"listen": "127.0.0.1:0", "keys": [{"name": "team", "key": {"value": KEY}},
                                                    {"name": "narrow", "key": {"value": OTHER}, "models": ["claude"]}],
                   **http}
        handle = start_http(build(HttpConfig, section, "http"), node.admin_port,
                            models=[d["model"] for d in deployments], log_file=str(tmp_path / "http.log"))
        started.append(handle)
        return handle, node

    yield make
    for handle in started:
        handle.stop(timeout_s=10)


def oai(url, key=KEY, retries=0):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=retries, timeout=30)


def ant(url, key=KEY, retries=0):
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=retries, timeout=30)


# --- the happy paths ----------------------------------------------------------------

@pytest.mark.parametrize("model", ["gpt", "claude"])
def test_openai_sdk_completion_and_stream_with_usage(front, model):
    handle, _ = front()
    client = oai(handle.url)
    whole = client.chat.completions.create(model=model, messages=HI, max_tokens=6)
    assert whole.choices[0].message.content.startswith("You said: hi")
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage.completion_tokens == 6 and whole.usage.total_tokens == whole.usage.prompt_tokens + 6
    stream = client.chat.completions.create(model=model, messages=HI, max_tokens=6, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6  # the usage chunk comes last


@pytest.mark.parametrize("model", ["claude", "gpt"])
def test_anthropic_sdk_message_and_stream(front, model):
    handle, _ = front()
    client = ant(handle.url)
    whole = client.messages.create(model=model, max_tokens=6, messages=HI, system="be brief")
    assert whole.content[0].text.startswith("You said: hi") and whole.stop_reason == "end_turn"
    assert whole.usage.output_tokens == 6
    with client.messages.stream(model=model, max_tokens=6, messages=HI) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == whole.content[0].text == final.content[0].text
    assert final.usage.output_tokens == 6 and final.stop_reason == "end_turn"


def test_raw_streams_end_as_each_dialect_says(front):
    handle, _ = front()
    headers = {"Authorization": f"Bearer {KEY}"}
    r = requests.post(handle.url + "/v1/chat/completions", headers=headers, timeout=30,
                      json={"model": "gpt", "messages": HI, "max_tokens": 3, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-request-id"].startswith("req_")
    frames = [f for f in r.text.split("\n\n") if f]
    assert frames[-1] == "data: [DONE]" and all(f.startswith("data: ") for f in frames)
    r = requests.post(handle.url + "/v1/messages", headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
                      json={"model": "gpt", "messages": HI, "max_tokens": 3, "stream": True}, timeout=30)
    events = [line[len("event: "):] for line in r.text.splitlines() if line.startswith("event: ")]
    assert events[0] == "message_start" and events[1] == "content_block_start"
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(events[2:-3]) == {"content_block_delta"}


def test_tool_calls_in_both_dialects_from_either_provider(front):
    handle, _ = front()
    ask = [{"role": "user", "content": "weather? [[tool]]"}]
    for model in ("gpt", "claude"):
        whole = oai(handle.url).chat.completions.create(model=model, messages=ask, tools=TOOLS)
        call = whole.choices[0].message.tool_calls[0]
        assert whole.choices[0].finish_reason == "tool_calls"
        assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] == "Paris"
        streamed = oai(handle.url).chat.completions.create(model=model, messages=ask, tools=TOOLS, stream=True)
        args, names = "", []
        for chunk in streamed:
            for tc in chunk.choices[0].delta.tool_calls or () if chunk.choices else ():
                names += [tc.function.name] if tc.function and tc.function.name else []
                args += (tc.function.arguments or "") if tc.function else ""
        assert names == ["get_weather"] and json.loads(args)["city"] == "Paris"
        # The answer to the tool goes back in OpenAI's shape and is served.
        back = ask + [whole.choices[0].message.model_dump(exclude_none=True),
                      {"role": "tool", "tool_call_id": call.id, "content": "18C"}]
        assert oai(handle.url).chat.completions.create(model=model, messages=back, tools=TOOLS).choices[0].message.content
    tools = [{"name": "get_weather", "description": "weather", "input_schema": {"type": "object"}}]
    for model in ("gpt", "claude"):
        message = ant(handle.url).messages.create(model=model, max_tokens=50, messages=ask, tools=tools)
        use = [b for b in message.content if b.type == "tool_use"][0]
        assert message.stop_reason == "tool_use" and use.name == "get_weather" and use.input["city"] == "Paris"
        with ant(handle.url).messages.stream(model=model, max_tokens=50, messages=ask, tools=tools) as stream:
            final = stream.get_final_message()
        assert [b.input for b in final.content if b.type == "tool_use"] == [use.input]
        back = ask + [{"role": "assistant", "content": [b.model_dump() for b in message.content]},
                      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18C"}]}]
        assert ant(handle.url).messages.create(model=model, max_tokens=20, messages=back, tools=tools).content


def test_models_and_health(front):
    handle, _ = front()
    assert sorted(m.id for m in oai(handle.url).models.list()) == ["claude", "gpt"]
    assert [m.id for m in oai(handle.url, key=OTHER).models.list()] == ["claude"]
    assert [m.id for m in ant(handle.url, key=OTHER).models.list()] == ["claude"]
    assert requests.get(handle.url + "/health/live", timeout=5).json() == {"status": "live"}
    ready = requests.get(handle.url + "/health/ready", timeout=5)
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


# --- errors as each SDK's own exception ------------------------------------------------

def test_keys_wrong_missing_and_outside_the_allow_list(front, mock):
    handle, _ = front()
    with pytest.raises(openai.AuthenticationError) as wrong:
        oai(handle.url, key="sk-not-a-key").chat.completions.create(model="gpt", messages=HI)
    assert wrong.value.body["code"] == "invalid_api_key" and "sk-not-a-key" not in str(wrong.value)
    with pytest.raises(anthropic.AuthenticationError):
        ant(handle.url, key="sk-not-a-key").messages.create(model="gpt", max_tokens=5, messages=HI)
    r = requests.post(handle.url + "/v1/chat/completions", json={"model": "gpt", "messages": HI}, timeout=5)
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    with pytest.raises(openai.PermissionDeniedError) as narrow:
        oai(handle.url, key=OTHER).chat.completions.create(model="gpt", messages=HI)
    assert "narrow" in str(narrow.value) and narrow.value.body["code"] == "model_not_allowed"
    with pytest.raises(anthropic.PermissionDeniedError):
        ant(handle.url, key=OTHER).messages.create(model="gpt", max_tokens=5, messages=HI)
    assert oai(handle.url, key=OTHER).chat.completions.create(model="claude", messages=HI, max_tokens=2)
    assert mock.stats()["total"] == 1  # no refused request reached the provider


def test_rate_limited_is_a_429_with_its_retry_after_that_the_sdk_does_not_repeat(front, mock):
    handle, _ = front()
    limited = [{"role": "user", "content": "[[mock status=429 retry_after=1]] hi"}]
    with pytest.raises(openai.RateLimitError) as caught:
        oai(handle.url, retries=1).chat.completions.create(model="gpt", messages=limited)
    assert caught.value.response.headers["retry-after"] == "1"
    # The gateway spent the deployment's retries (none here): the SDK is told not to add its own.
    assert caught.value.response.headers["x-should-retry"] == "false" and mock.stats()["total"] == 1
    with pytest.raises(anthropic.RateLimitError):
        ant(handle.url).messages.create(model="claude", max_tokens=5, messages=limited)


def test_server_errors_and_529(front, mock):
    handle, _ = front()
    with pytest.raises(openai.InternalServerError) as caught:
        oai(handle.url).chat.completions.create(model="gpt", messages=[{"role": "user", "content": "[[mock status=502]]"}])
    assert caught.value.status_code == 502 and caught.value.body["code"] == "upstream_error"
    # A 500 for this request alone, while the deployment serves the gateway's known-good probe: the request's.
    with pytest.raises(openai.BadRequestError) as caught:
        oai(handle.url).chat.completions.create(model="gpt", messages=[
            {"role": "user", "content": "[[mock status=500 body=vllm]]"}])
    assert caught.value.body["code"] == "upstream_rejected_request" and "token ids must be integers" in \
        caught.value.body["message"]
    overloaded = [{"role": "user", "content": "[[mock status=529]] hi"}]
    with pytest.raises(anthropic.OverloadedError) as caught:
        ant(handle.url).messages.create(model="claude", max_tokens=5, messages=overloaded)
    assert caught.value.response.headers.get("retry-after")
    with pytest.raises(openai.APIStatusError) as caught:
        oai(handle.url).chat.completions.create(model="claude", messages=overloaded)
    assert caught.value.status_code == 529


def test_bad_requests_are_400s_naming_the_field(front, mock):
    handle, _ = front()
    client = oai(handle.url)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt", messages=HI, n=2, stream=True)   # several choices: whole only
    assert caught.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt", messages=HI, temperature="hot")
    assert caught.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt", messages=HI, temperature=7.5)  # refused by the node
    with pytest.raises(anthropic.BadRequestError) as caught:
        ant(handle.url).messages.create(model="gpt", max_tokens=5, messages=[{"role": "robot", "content": "x"}])
    assert "messages[0].role" in str(caught.value)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=HI)
    assert mock.stats()["total"] == 0


def test_bad_input_at_the_edge(front):
    handle, _ = front(max_body_bytes=64 * 1024)
    url, auth = handle.url + "/v1/chat/completions", {"Authorization": f"Bearer {KEY}"}
    r = requests.post(url, data=b'{"model": "gpt", "messages": [', headers=auth, timeout=5)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = requests.post(url, json={"model": "gpt", "messages": "hello"}, headers=auth, timeout=5)
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = requests.post(url, json=[1, 2], headers=auth, timeout=5)
    assert r.status_code == 400
    r = requests.post(url, json={"model": "gpt", "messages": [{"role": "user", "content": "x" * 100_000}]},
                      headers=auth, timeout=5)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = requests.post(handle.url + "/v1/messages", headers={"x-api-key": KEY}, timeout=5,
                      json={"model": "gpt", "messages": HI, "max_tokens": 3, "system": "x" * 100_000})
    assert r.status_code == 413 and r.json() == {"type": "error", "error": {
        "type": "request_too_large", "message": r.json()["error"]["message"]}}
    r = requests.get(handle.url + "/v1/nothing", headers=auth, timeout=5)
    assert r.status_code == 404
    r = requests.get(url, headers=auth, timeout=5)
    assert r.status_code == 405
    assert oai(handle.url).chat.completions.create(model="gpt", messages=HI, max_tokens=2).choices


# --- streams that go wrong -------------------------------------------------------------

def test_an_error_mid_stream_ends_it_as_each_sdk_surfaces_it(front):
    handle, _ = front()
    broken = [{"role": "user", "content": "[[mock error_after=4 drip_ms=40]] hi"}]
    got = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in oai(handle.url).chat.completions.create(model="gpt", messages=broken, stream=True):
            got.append(chunk.choices[0].delta.content or "")
    assert "".join(got) and not isinstance(caught.value, openai.APIStatusError)  # an error frame, not a status
    text = []
    with pytest.raises(anthropic.APIStatusError):
        with ant(handle.url).messages.stream(model="claude", max_tokens=50, messages=broken) as stream:
            for piece in stream.text_stream:
                text.append(piece)
    assert "".join(text)


@pytest.mark.parametrize("fault", ["drip_ms=100 words=400", "stall_after=2"])
def test_a_caller_that_disconnects_mid_stream_cancels_the_upstream(front, mock, fault):
    handle, _ = front()
    r = requests.post(handle.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, stream=True,
                      json={"model": "gpt", "stream": True,
                            "messages": [{"role": "user", "content": f"[[mock {fault}]] long"}]}, timeout=30)
    lines = r.iter_lines()
    assert next(l for l in lines if l).startswith(b"data: ")
    wait_for(lambda: mock.stats()["in_flight"] == 1, message="the upstream call to be running")
    r.close()  # the caller goes away (400 words at 100 ms, or a stall of 60 s, would run on)
    wait_for(lambda: mock.stats()["in_flight"] == 0, timeout_s=15, message="the upstream call to be cancelled")
    assert oai(handle.url).chat.completions.create(model="gpt", messages=HI, max_tokens=2).choices


def test_a_caller_that_gives_up_on_a_whole_completion_cancels_it(front):
    handle, node = front()
    gw = GatewayClient(node.admin_port, timeout_s=10)
    try:
        with pytest.raises(requests.Timeout):
            requests.post(handle.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=1,
                          json={"model": "gpt", "messages": [{"role": "user", "content": "[[mock delay_ms=30000]] x"}]})
        # Its deadline is 600 s away: only the cancel ends it at the node this soon.
        wait_for(lambda: sum(e.in_flight + e.queued for e in gw.status().engines) == 0, timeout_s=10,
                 message="the abandoned call to leave the engine")
        assert any(e.failed for e in gw.status().engines if e.deployment == "gpt")
    finally:
        gw.close()


def test_a_slow_client_does_not_hold_up_others_and_is_cut_off(front):
    handle, _ = front(read_timeout_s=2)
    host, port = handle.url.removeprefix("http://").split(":")
    slow = socket.create_connection((host, int(port)), timeout=30)
    slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # and then almost nothing
    for _ in range(5):
        assert oai(handle.url).chat.completions.create(model="gpt", messages=HI, max_tokens=2).choices
    slow.sendall(b"X-Slow: 1\r\n")
    # Idle for longer than read_timeout_s: the listener closes it (recv returns b"" or fails).
    try:
        assert slow.recv(1024) == b""
    except ConnectionResetError:
        pass
    slow.close()
    assert oai(handle.url).chat.completions.create(model="gpt", messages=HI, max_tokens=2).choices


def test_stop_drains_a_running_stream_then_refuses(front):
    handle, _ = front()
    r = requests.post(handle.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, stream=True,
                      json={"model": "gpt", "stream": True, "max_tokens": 20,
                            "messages": [{"role": "user", "content": "[[mock drip_ms=50]] hi"}]}, timeout=30)
    lines = r.iter_lines()
    assert next(l for l in lines if l).startswith(b"data: ")
    stopper = threading.Thread(target=handle.stop, kwargs={"timeout_s": 20})
    stopper.start()
    rest = [l for l in lines if l]
    stopper.join(30)
    assert rest[-1] == b"data: [DONE]"  # the stream in flight finished whole
    assert handle.proc.returncode == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(handle.url + "/health/live", timeout=2)


def test_auth_none_on_loopback(front):
    handle, _ = front(auth="none", keys=[])
    r = requests.post(handle.url + "/v1/chat/completions", json={"model": "gpt", "messages": HI, "max_tokens": 2},
                      timeout=10)
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]


def test_a_full_listener_answers_429_at_once_not_a_hang(front, mock):
    handle, _ = front(threads=6, max_in_flight=2)
    slow = {"model": "gpt", "stream": True, "messages": [{"role": "user", "content": "[[mock drip_ms=100 words=300]] x"}]}
    held = []
    for _ in range(2):
        r = requests.post(handle.url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                          json=slow, stream=True, timeout=30)
        assert r.status_code == 200
        held.append(r)
    with pytest.raises(openai.RateLimitError) as caught:
        oai(handle.url).chat.completions.create(model="gpt", messages=HI, max_tokens=2)
    assert caught.value.response.headers["retry-after"] == "1" and caught.value.body["code"] == "queue_full"
    assert requests.get(handle.url + "/health/live", timeout=5).status_code == 200  # still answering
    for r in held:
        r.close()
    wait_for(lambda: mock.stats()["in_flight"] == 0, timeout_s=15, message="the held streams to be cancelled")
    wait_for(lambda: _served(handle), timeout_s=10, message="a call to be served again")


def _served(handle):
    try:
        return oai(handle.url).chat.completions.create(model="gpt", messages=HI, max_tokens=2).choices
    except openai.RateLimitError:
        return False


def test_the_listener_leaves_when_its_launcher_dies(gateway, mock, tmp_path):
    import subprocess
    import sys
    import textwrap

    node, _ = gateway([deployment(mock.url, "gpt")])
    script = tmp_path / "launcher.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path[:0] = {sys.path!r}
        from actors.ops.http_process import start_http
        from actors.settings.schema import HttpConfig
        handle = start_http(HttpConfig(listen="127.0.0.1:0", auth="none"), {node.admin_port})
        print(handle.pid, flush=True)
        time.sleep(600)
    """))
    launcher = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pid = int(launcher.stdout.readline())
        launcher.kill()  # no stop(): the launcher crashed
        launcher.wait(10)
        wait_for(lambda: not _alive(pid), timeout_s=20, message="the orphaned listener to exit")
    finally:
        launcher.kill()
        launcher.stdout.close()


def _alive(pid):
    return live_stat(pid) is not None
