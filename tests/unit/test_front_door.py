"""The front door's WSGI application against a real in-process node: routing and serving, both dialects.

``FrontDoor`` is called as waitress calls it (``actors/testing/wsgi.py`` builds the environ and
reads the body iterator); its ``GatewayClient`` talks through ``InProcessLink`` to a real node
whose workers' HTTP goes to scripted upstreams (the transport seam). What the upstream received
is the evidence of what was sent; the server's socket side is tests/process/test_http*.py's.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from typing import Any

import pytest

from actors.client import GatewayClient
from actors.core.retry import RetryPolicy
from actors.http.app import FrontDoor
from actors.node_link import InProcessLink
from actors.runtime.protocol import Deploy, Deployed
from actors.runtime.protocol.ledger import LedgerInit
from actors.settings.schema import ApiKeySource, HttpConfig, HttpKey, KeyLimits
from actors.testing.mock_transport import EOF
from actors.testing.wsgi import call, opened, sse_events
from harness import Answer, ask, deployment, openai_completion, openai_stream, stream_answer

HI = [{"role": "user", "content": "hi"}]
ALICE = {"authorization": "Bearer sk-alice"}
TWO_DAYS = 2 * 86400.0   # a key's rate window that cannot roll over mid-test
QUICK = RetryPolicy(max_retries=0, base_delay_s=0.01, max_delay_s=0.05, jitter="none")


def dep(name: str = "d1", **overrides: Any) -> Any:
    overrides.setdefault("retry", QUICK)
    overrides.setdefault("workers", 1)
    return deployment(name=name, model=overrides.pop("model", name), **overrides)


def key(name: str, secret: str, **kw: Any) -> HttpKey:
    return HttpKey(name, ApiKeySource(value=secret), **kw)


@pytest.fixture
def door(asys, upstream, tmp_path):
    """Factory: door(*deployments, keys=[...], ledger=False, **http config) -> a FrontDoor over a real
    in-process node (with a spend ledger in tmp_path when ``ledger``)."""
    made: list[tuple[FrontDoor, GatewayClient]] = []

    def make(*deployments: Any, keys: list[HttpKey] | None = None, models: list[str] | None = None,
             ledger: bool = False, **config: Any) -> FrontDoor:
        deployments = deployments or (dep("d1"),)
        link = InProcessLink(asys)
        books = LedgerInit(str(tmp_path / "ledger.db"), batch_interval_s=0.01) if ledger else None
        ask(asys, link.registry, Deploy("n1", list(deployments), admin_port=1900, ledger=books), Deployed, 15)
        client = GatewayClient(link=link, timeout_s=10.0, liveness_after_s=0.1)
        http = HttpConfig(keys=keys if keys is not None else [key("alice", "sk-alice", team="search")], **config)
        app = FrontDoor(http, client, models or [d.model for d in deployments],
                        upstreams={d.name: d.provider for d in deployments})
        made.append((app, client))
        return app

    yield make
    for app, client in made:
        app.close()
        client.close()


def chat(app: FrontDoor, headers: dict[str, str] | None = ALICE, **doc: Any) -> Any:
    doc.setdefault("model", "d1")
    doc.setdefault("messages", HI)
    return call(app, "POST", "/v1/chat/completions", json=doc, headers=headers)


def messages(app: FrontDoor, **doc: Any) -> Any:
    doc.setdefault("model", "d1")
    doc.setdefault("messages", HI)
    doc.setdefault("max_tokens", 16)
    return call(app, "POST", "/v1/messages", json=doc, headers={"x-api-key": "sk-alice",
                                                                "anthropic-version": "2023-06-01"})


def until(condition: Any, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s}s"
        time.sleep(0.01)


def error_of(response: Any) -> tuple[int, str, str | None]:
    """(status, OpenAI error type, code) of an OpenAI-shaped error."""
    err = response.json()["error"]
    return response.status, err["type"], err["code"]


# --- serving, OpenAI ------------------------------------------------------------------------

def test_a_chat_completion_is_served_with_its_ids_deployment_and_usage(door, upstream):
    app = door()
    r = chat(app, max_completion_tokens=7, temperature=0.5, metadata=None)
    assert r.status == 200 and r.headers["content-type"] == "application/json"
    assert int(r.headers["content-length"]) == len(r.body)
    doc = r.json()
    rid = r.headers["x-request-id"]
    assert r.headers["request-id"] == rid and doc["id"] == "chatcmpl-" + rid[len("req_"):]
    assert doc["choices"][0]["message"]["content"] == "ok" and doc["choices"][0]["finish_reason"] == "stop"
    assert doc["usage"]["prompt_tokens"] == 3 and doc["usage"]["completion_tokens"] == 2
    assert (r.headers["x-atomr-deployment"], r.headers["x-atomr-fallback"], r.headers["x-atomr-usage"]) == \
        ("d1", "false", "reported")
    (sent,) = upstream.requests
    assert sent.json()["max_completion_tokens"] == 7 and sent.json()["temperature"] == 0.5
    assert (app.in_flight, app.calls, app.served) == (0, 0, 1)


def spent(app: FrontDoor, query: str, requests: int) -> Any:
    """The spend document once the ledger has written ``requests`` records (it writes in batches)."""
    deadline = time.monotonic() + 10
    while True:
        doc = call(app, "GET", "/v1/spend", headers=ALICE, query=query).json()
        if doc["total"]["requests"] >= requests or time.monotonic() > deadline:
            return doc
        time.sleep(0.02)


def test_the_callers_key_and_team_are_what_the_ledger_counts_the_call_under(door, upstream):
    app = door(ledger=True)
    assert chat(app).status == 200 and chat(app).status == 200
    by_key = spent(app, "since=1d&by=key", 2)
    assert [(row["group"], row["requests"]) for row in by_key["rows"]] == [("alice", 2)]
    assert by_key["total"]["requests"] == 2 and by_key["nodes"] == [{"node": "n1@?:1900", "error": ""}]
    by_team = spent(app, "by=team", 2)
    assert [row["group"] for row in by_team["rows"]] == ["search"]


def test_the_sdks_announced_timeout_bounds_the_call(door, upstream):
    app = door(request_timeout_s=5.0)

    def late() -> Answer:   # the whole answer, after a pause longer than the announced timeout
        body = json.dumps(openai_completion("late")).encode()
        return Answer(200, parts=[body[:10], 0.4, body[10:]], headers={"content-type": "application/json"})

    upstream.then(late(), late())
    assert error_of(chat(app, headers={**ALICE, "x-stainless-timeout": "0.15"})) == \
        (504, "server_error", "deadline_exceeded")
    r = chat(app, headers={**ALICE, "x-stainless-timeout": "soon"})   # unreadable: the config's 5 s
    assert r.status == 200 and r.json()["choices"][0]["message"]["content"] == "late"


def test_a_stream_is_server_sent_events_ending_with_usage_and_done(door, upstream):
    app = door()
    upstream.then(stream_answer(["Hel", "lo", "!"], pause_s=0.01))
    r = chat(app, stream=True, stream_options={"include_usage": True})
    assert r.status == 200 and r.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert r.headers["cache-control"] == "no-cache" and r.headers["x-atomr-deployment"] == "d1"
    events = [data for _, data in r.events()]
    assert events[-1] == "[DONE]"
    docs = events[:-1]
    assert docs[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(d["choices"][0]["delta"].get("content") or "" for d in docs if d["choices"]) == "Hello!"
    assert [d["choices"][0]["finish_reason"] for d in docs if d["choices"]][-1] == "stop"
    assert docs[-1]["choices"] == [] and docs[-1]["usage"]["total_tokens"] == 5
    assert {d["id"] for d in docs} == {"chatcmpl-" + r.headers["x-request-id"][len("req_"):]}
    # The finish, the usage and [DONE] are due together: one write, so one send, not three.
    assert [data for _, data in sse_events(r.parts[-1])][-3:] == docs[-2:] + ["[DONE]"]
    assert len(sse_events(r.parts[-1])) == 3
    assert upstream.requests[0].json()["stream"] is True
    assert (app.in_flight, app.calls) == (0, 0)


def test_a_streams_chunks_are_written_by_the_servers_write_from_any_thread_or_else_yielded(door, upstream):
    app = door()
    shapes = {}
    for push in (True, False):
        upstream.then(stream_answer(["Hel", "lo", "!"], pause_s=0.01))
        r = call(app, "POST", "/v1/chat/completions", json={"model": "d1", "messages": HI, "stream": True},
                 headers=ALICE, push=push)
        docs = [data for _, data in r.events()][:-1]
        shapes[push] = (r.pushed, [[c["delta"] for c in d["choices"]] for d in docs])
    # With the server's write (environ["atomr.write_now"]), what follows the first part is written
    # by it; without it (a plain WSGI server) yielded: the same events either way.
    assert shapes[True][0] >= 2 and shapes[False][0] == 0
    assert shapes[True][1] == shapes[False][1]
    assert "".join(d.get("content") or "" for ds in shapes[True][1] for d in ds) == "Hello!"
    assert (app.in_flight, app.calls) == (0, 0)


def test_legacy_completions_embeddings_and_responses_are_served(door, upstream):
    app = door(dep("d1"), dep("emb", provider="openai_compatible"))
    r = call(app, "POST", "/v1/completions", json={"model": "d1", "prompt": "say", "max_tokens": 3}, headers=ALICE)
    assert r.status == 200 and r.json()["object"] == "text_completion" and r.json()["choices"][0]["text"] == "ok"
    assert upstream.requests[-1].json()["messages"] == [{"role": "user", "content": "say"}]

    upstream.then(Answer(200, {"object": "list", "model": "m", "usage": {"prompt_tokens": 4, "total_tokens": 4},
                               "data": [{"object": "embedding", "index": i, "embedding": [float(i)]}
                                        for i in range(2)]}))
    r = call(app, "POST", "/v1/embeddings", json={"model": "emb", "input": ["a", "b"], "dimensions": 8,
                                                  "user": "u1"}, headers=ALICE)
    assert r.status == 200 and [d["embedding"] for d in r.json()["data"]] == [[0.0], [1.0]]
    assert r.json()["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    assert r.headers["x-atomr-deployment"] == "emb" and r.headers["x-atomr-usage"] == "reported"
    assert upstream.requests[-1].json()["dimensions"] == 8 and upstream.requests[-1].json()["user"] == "u1"

    r = call(app, "POST", "/v1/responses", json={"model": "d1", "input": "hello"}, headers=ALICE)
    assert r.status == 200 and r.json()["object"] == "response" and r.json()["status"] == "completed"
    assert r.json()["output"][0]["content"][0]["text"] == "ok"

    upstream.then(stream_answer(["a", "b"]))
    r = call(app, "POST", "/v1/responses", json={"model": "d1", "input": "hello", "stream": True}, headers=ALICE)
    names = [name for name, _ in r.events()]
    assert names[0] == "response.created" and names[-1] == "response.completed"
    assert "".join(d["delta"] for n, d in r.events() if n == "response.output_text.delta") == "ab"


# --- serving, Anthropic ---------------------------------------------------------------------

def test_an_anthropic_message_and_its_stream(door, upstream):
    app = door()
    r = messages(app, system="be brief")
    assert r.status == 200
    doc = r.json()
    assert (doc["type"], doc["role"], doc["content"], doc["stop_reason"]) == \
        ("message", "assistant", [{"type": "text", "text": "ok"}], "end_turn")
    assert doc["usage"]["input_tokens"] == 3 and doc["usage"]["output_tokens"] == 2
    assert upstream.requests[0].json()["messages"][0] == {"role": "system", "content": "be brief"}

    upstream.then(stream_answer(["He", "llo"], pause_s=0.01))
    r = messages(app, stream=True)
    names = [name for name, _ in r.events()]
    assert names[:2] == ["message_start", "content_block_start"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(names[2:-3]) <= {"content_block_delta", "ping"}
    text = "".join(d["delta"]["text"] for n, d in r.events() if n == "content_block_delta")
    assert text == "Hello"
    delta = [d for n, d in r.events() if n == "message_delta"][0]
    assert delta["delta"]["stop_reason"] == "end_turn" and delta["usage"]["output_tokens"] == 2


def test_count_tokens_models_and_cards_in_each_dialect(door):
    app = door(dep("d1"), dep("d2"), keys=[key("alice", "sk-alice", models=["d1"])])
    r = call(app, "POST", "/v1/messages/count_tokens", json={"model": "d1", "messages": HI},
             headers={"x-api-key": "sk-alice"})
    assert r.status == 200 and r.json()["input_tokens"] > 0 and r.json()["counted_by"].startswith("gateway:")
    listing = call(app, "GET", "/v1/models", headers=ALICE)
    assert listing.json()["object"] == "list" and [m["id"] for m in listing.json()["data"]] == ["d1"]
    listing = call(app, "GET", "/v1/models", headers={**ALICE, "anthropic-version": "2023-06-01"})
    assert listing.json()["has_more"] is False and [m["type"] for m in listing.json()["data"]] == ["model"]
    card = call(app, "GET", "/v1/models/d1", headers=ALICE)
    assert card.status == 200 and card.json()["id"] == "d1" and card.json()["object"] == "model"
    assert error_of(call(app, "GET", "/v1/models/d2", headers=ALICE))[0] == 404   # not this key's


def test_the_models_listed_are_what_the_node_reaches_not_what_the_listener_started_with(door):
    # Started knowing only "gone" (as if another node that served it had left); the node serves d1 and d2.
    app = door(dep("d1"), dep("d2"), models=["gone"])
    assert [m["id"] for m in call(app, "GET", "/v1/models", headers=ALICE).json()["data"]] == ["d1", "d2"]
    assert call(app, "GET", "/v1/models/d2", headers=ALICE).status == 200
    assert error_of(call(app, "GET", "/v1/models/gone", headers=ALICE))[0] == 404


# --- refusals, in the caller's dialect ------------------------------------------------------

def test_unknown_paths_and_methods_and_keys_are_refused_in_the_callers_dialect(door, upstream):
    app = door(keys=[key("alice", "sk-alice", models=["d1"]), key("bob", "sk-bob")])
    r = call(app, "GET", "/v1/nothing", headers=ALICE)
    assert error_of(r) == (404, "invalid_request_error", "unknown_url") and "/v1/chat/completions" in r.json()[
        "error"]["message"]
    assert error_of(call(app, "GET", "/v1/chat/completions", headers=ALICE)) == \
        (405, "invalid_request_error", "method_not_allowed")
    missing = chat(app, headers={})
    assert error_of(missing) == (401, "invalid_request_error", "missing_api_key")
    assert error_of(chat(app, headers={"authorization": "Bearer sk-mallory"}))[2] == "invalid_api_key"
    anthropic = call(app, "POST", "/v1/messages", json={"model": "d1", "messages": HI, "max_tokens": 5},
                     headers={"x-api-key": "sk-nope"})
    assert anthropic.status == 401 and anthropic.json() == {
        "type": "error", "error": {"type": "authentication_error", "message": "invalid API key"}}
    denied = chat(app, model="d2")
    assert error_of(denied) == (403, "invalid_request_error", "model_not_allowed")
    assert denied.json()["error"]["param"] == "model"
    assert chat(app, fallbacks=["d2"]).json()["error"]["param"] == "fallbacks[0]"
    assert upstream.requests == []                          # none of those reached a provider
    assert "x-request-id" in missing.headers and (app.in_flight, app.calls, app.served) == (0, 0, 7)


def test_bad_bodies_are_400_or_413_before_anything_is_sent(door, upstream):
    app = door(max_body_bytes=2048)
    raw = {"authorization": "Bearer sk-alice", "content-type": "application/json"}
    assert error_of(call(app, "POST", "/v1/chat/completions", body=b"{not json", headers=raw))[2] == "invalid_json"
    nested: Any = "x"
    for _ in range(80):
        nested = [nested]
    deep = chat(app, user=nested)
    assert error_of(deep)[:2] == (400, "invalid_request_error") and deep.json()["error"]["param"] == "user"
    big = chat(app, messages=[{"role": "user", "content": "x" * 4000}])
    assert error_of(big) == (413, "invalid_request_error", "request_too_large")
    no_length = call(app, "POST", "/v1/chat/completions", body=b"{" + b" " * 3000 + b"}", headers=raw,
                     content_length=False)
    assert error_of(no_length)[0] == 413 and "over the limit of 2048 bytes" in no_length.json()["error"]["message"]
    assert error_of(call(app, "POST", "/v1/chat/completions", body=b"{}", headers=raw,
                         CONTENT_LENGTH="two"))[0] == 400
    absurd = chat(app, max_tokens=10 ** 12)
    assert error_of(absurd) == (400, "invalid_request_error", "invalid_value")
    assert absurd.json()["error"]["param"] == "max_tokens"
    assert error_of(chat(app, model=3))[0] == 400
    assert upstream.requests == []


def test_a_bug_in_the_door_is_a_500_that_names_nothing_and_is_logged(door, caplog):
    app = door()

    class Broken(io.RawIOBase):
        def read(self, *_: Any) -> bytes:
            raise RuntimeError("secret internals")

    r = call(app, "POST", "/v1/chat/completions", headers=ALICE, **{"wsgi.input": Broken()})
    assert error_of(r) == (500, "server_error", "internal_error")
    assert "secret" not in r.body.decode()
    assert any("front door failed on POST /v1/chat/completions" in m.getMessage() for m in caplog.records)
    assert app.in_flight == 0 and app.calls == 0


# --- upstream errors: a status before the first byte, an event after -------------------------

def test_upstream_errors_become_statuses_with_retry_after_in_each_dialect(door, upstream):
    app = door()
    upstream.then(Answer(429, {"error": {"message": "slow down"}}, headers={"retry-after": "7"}))
    r = chat(app)
    assert error_of(r) == (429, "rate_limit_error", "rate_limit_exceeded") and r.headers["retry-after"] == "7"
    upstream.then(Answer(529, {"error": {"message": "busy"}}))
    r = messages(app)
    assert r.status == 529 and r.json()["type"] == "error" and r.json()["error"]["type"] == "overloaded_error"
    assert r.headers["retry-after"] == "1"
    upstream.then(Answer(503, {"error": {"message": "overloaded"}}))
    r = chat(app, stream=True)            # before any output: a real status, not a 200 with an error event
    assert r.status == 502 and r.headers["content-type"] == "application/json"
    assert (app.in_flight, app.calls) == (0, 0)


def test_a_stream_broken_after_its_first_token_ends_with_an_error_event(door, upstream):
    app = door()
    broken = Answer(200, parts=openai_stream(["one ", "two "])[:1] + [0.01, EOF],
                    headers={"content-type": "text/event-stream"})
    upstream.then(broken)
    r = chat(app, stream=True)
    assert r.status == 200
    events = [data for _, data in r.events()]
    assert events[1]["choices"][0]["delta"]["content"] == "one "
    assert events[-1]["error"]["code"] == "upstream_stream_broken"
    upstream.then(Answer(200, parts=openai_stream(["one "])[:1] + [0.01, EOF],
                         headers={"content-type": "text/event-stream"}))
    r = messages(app, stream=True)
    assert r.events()[-1] == ("error", {"type": "error", "error": {"type": "api_error", "message": r.events()[-1][1][
        "error"]["message"]}})
    assert (app.in_flight, app.calls) == (0, 0)


def test_a_fallback_serves_and_says_so(door, upstream):
    app = door(dep("a", model="m", endpoint="http://a.invalid/v1"), dep("b", model="backup",
                                                                         endpoint="http://b.invalid/v1"))
    upstream.then(Answer(503, {"error": {"message": "overloaded"}}))
    r = chat(app, model="m", fallbacks=["backup"])
    assert r.status == 200 and (r.headers["x-atomr-deployment"], r.headers["x-atomr-fallback"]) == ("b", "true")
    assert [q.host for q in upstream.requests] == ["a.invalid", "b.invalid"]


# --- the listener's own limits ----------------------------------------------------------------

def test_a_full_listener_refuses_at_once_and_a_stream_left_early_is_cancelled_and_counted(door, upstream):
    app = door(max_in_flight=1, threads=4, request_timeout_s=5.0)
    hold = threading.Event()
    parts = openai_stream(["w0 ", "w1 "])
    upstream.then(Answer(200, parts=parts[:1] + [hold] + parts[1:], headers={"content-type": "text/event-stream"},
                         hold_s=30.0))
    try:
        stream = opened(app, "POST", "/v1/chat/completions", json={"model": "d1", "messages": HI, "stream": True},
                        headers=ALICE)
        assert stream.status == 200 and b'"w0 "' in next(stream)
        assert (app.in_flight, app.calls) == (1, 1)
        full = chat(app)
        assert error_of(full) == (429, "rate_limit_error", "queue_full") and full.headers["retry-after"] == "1"
        stream.close()                                # the caller went away mid-stream
    finally:
        hold.set()
    assert (app.in_flight, app.calls) == (0, 0)
    assert chat(app).status == 200                    # the worker was let go: the next call is served
    (engine,) = app.client.status().engines
    assert (engine.completed, engine.failed) == (1, 1)


def test_a_caller_that_disconnects_is_cancelled_by_the_watcher(door, upstream):
    app = door(request_timeout_s=5.0)    # bounds the test should the watcher not cancel
    hold = threading.Event()
    parts = openai_stream(["w0 ", "w1 "])
    upstream.then(Answer(200, parts=parts[:1] + [hold] + parts[1:], headers={"content-type": "text/event-stream"},
                         hold_s=30.0))
    gone = threading.Event()
    try:
        stream = opened(app, "POST", "/v1/chat/completions", json={"model": "d1", "messages": HI, "stream": True},
                        headers=ALICE, **{"waitress.client_disconnected": gone.is_set})
        assert b'"w0 "' in next(stream)
        gone.set()                                    # waitress now says the connection closed
        rest = b"".join(stream)                       # the watcher cancelled the call: the stream ends
        stream.close()
    finally:
        hold.set()
    assert app.watcher.cancelled == 1
    assert b'"cancelled"' in rest
    assert (app.in_flight, app.calls) == (0, 0)


def test_a_whole_completion_whose_caller_left_is_cancelled(door, upstream):
    app = door(request_timeout_s=5.0)
    upstream.then(Answer.silent())
    gone = threading.Event()
    timer = threading.Timer(0.15, gone.set)
    timer.start()
    try:
        r = call(app, "POST", "/v1/chat/completions", json={"model": "d1", "messages": HI}, headers=ALICE,
                 **{"waitress.client_disconnected": gone.is_set})
    finally:
        timer.cancel()
    assert error_of(r)[0] == 499 and app.watcher.cancelled == 1


def test_a_draining_door_refuses_calls_and_says_it_is_not_ready(door, upstream):
    app = door()
    assert call(app, "GET", "/health/live").json() == {"status": "live"}
    ready = call(app, "GET", "/health/ready")
    assert ready.status == 200 and ready.json() == {"status": "ready",
                                                    "detail": "1 of 1 engines have a closed or half-open circuit"}
    app.draining = True
    r = chat(app)
    assert error_of(r) == (503, "server_error", "shutting_down") and r.headers["retry-after"] == "1"
    assert call(app, "GET", "/health/ready").json()["status"] == "ready"    # the answer is kept for READY_CACHE_S
    draining = FrontDoor(HttpConfig(keys=[key("alice", "sk-alice")]), app.client, ["d1"])
    try:
        draining.draining = True
        r = call(draining, "GET", "/health/ready")
        assert r.status == 503 and r.json() == {"status": "not ready", "detail": "draining"}
    finally:
        draining.close()
    assert upstream.requests == []


def test_a_node_that_does_not_answer_is_not_ready_and_its_status_is_a_503(asys):
    from harness import Recorder
    from thespian.actors import ActorExitRequest

    gone = asys.createActor(Recorder)
    asys.tell(gone, ActorExitRequest())               # an address nothing answers at any more
    client = GatewayClient(link=InProcessLink(asys, registry=gone), timeout_s=1.0)
    app = FrontDoor(HttpConfig(keys=[key("alice", "sk-alice")]), client, ["d1"])
    try:
        r = call(app, "GET", "/health/ready")
        assert r.status == 503 and r.json()["detail"] == \
            "the node does not answer: the in-process node did not answer a status request (got nothing)"
        r = call(app, "GET", "/v1/status")
        assert error_of(r) == (503, "server_error", "status_unavailable") and r.headers["retry-after"] == "1"
        assert error_of(call(app, "GET", "/metrics"))[2] == "status_unavailable"
    finally:
        app.close()
        client.close()


# --- key budgets ------------------------------------------------------------------------------

def test_a_keys_own_request_budget_refuses_the_call_past_it_and_another_key_is_served(door, upstream):
    app = door(keys=[key("alice", "sk-alice", limits=KeyLimits(rpm=2, window_s=TWO_DAYS)),
                     key("bob", "sk-bob")])
    assert app.key_sync is not None
    assert [chat(app).status for _ in range(2)] == [200, 200]
    refused = chat(app)
    assert error_of(refused)[0] == 429 and int(refused.headers["retry-after"]) >= 1
    assert chat(app, headers={"authorization": "Bearer sk-bob"}).status == 200
    assert len(upstream.requests) == 3
    until(lambda: app.key_sync.hub is not None, "the node's limiter hub answered")
    assert app.key_sync.node == "n1@?:1900"   # the node's limiter hub answered
    assert app.key_limits.outside is None      # and that it is in its cluster: the whole budget applies


def test_two_front_doors_of_a_node_spend_from_one_key_budget_through_its_hub(door, upstream):
    limited = [key("alice", "sk-alice", limits=KeyLimits(rpm=4, window_s=TWO_DAYS))]
    first = door(keys=limited)
    second = FrontDoor(HttpConfig(keys=limited), first.client, ["d1"])
    try:
        assert [chat(first).status for _ in range(2)] == [200, 200]
        until(lambda: second.key_limits.usage()[0]["requests"] == 2, "the first door's calls counted by the second")
        assert second.key_sync.merged >= 1 and first.key_sync.published >= 1
        served = 0
        while chat(second).status == 200:
            served += 1
            assert served <= 2, "the second door served past what the first left of the budget"
        assert len(upstream.requests) == 2 + served          # refused ones never reached the provider
        until(lambda: first.key_limits.usage()[0]["requests"] == 2 + served, "the second door's calls counted back")
        assert error_of(chat(first))[0] == 429
    finally:
        second.close()


# --- the operator's routes --------------------------------------------------------------------

def test_metrics_status_and_the_dashboard_for_an_admin_or_loopback(door, upstream):
    app = door(keys=[key("ops", "sk-ops", admin=True), key("alice", "sk-alice")])
    assert chat(app).status == 200
    admin = {"authorization": "Bearer sk-ops"}
    metrics = call(app, "GET", "/metrics", headers=admin, remote_addr="10.0.0.9")
    assert metrics.status == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert 'atomr_requests_total{deployment="d1"' in metrics.body.decode()
    status = call(app, "GET", "/v1/status", headers=admin)
    assert status.status == 200 and [d["deployment"] for d in status.json()["deployments"]] == ["d1"]
    assert "sk-" not in status.body.decode()
    page = call(app, "GET", "/ui", headers={"authorization": "Basic " + base64.b64encode(b"x:sk-ops").decode()})
    assert page.status == 200 and page.headers["content-type"] == "text/html; charset=utf-8" and page.body
    head = call(app, "HEAD", "/ui/app.js", headers=admin)
    assert head.status == 200 and head.body == b"" and int(head.headers["content-length"]) > 0

    assert error_of(call(app, "GET", "/metrics", headers=ALICE)) == (403, "invalid_request_error", "admin_required")
    assert error_of(call(app, "GET", "/metrics"))[0] == 401     # an admin key exists: loopback is not enough
    ask_browser = call(app, "GET", "/ui")
    assert ask_browser.status == 401 and ask_browser.headers["www-authenticate"].startswith("Basic realm=")
    assert error_of(call(app, "POST", "/metrics", headers=admin))[0] == 405


def test_without_admin_keys_the_operators_routes_are_for_loopback_only(door):
    app = door()
    assert call(app, "GET", "/v1/status", remote_addr="127.0.0.1").status == 200
    refused = call(app, "GET", "/v1/status", remote_addr="10.1.2.3")
    assert error_of(refused)[0] == 401 and "loopback only" in refused.json()["error"]["message"]


def test_spend_by_key_from_the_ledger(door, upstream):
    app = door()
    assert chat(app).status == 200
    r = call(app, "GET", "/v1/spend", headers=ALICE, query="since=1d&by=key")
    assert r.status == 200 and r.json()["object"] == "spend" and r.json()["by"] == "key"
    bad = call(app, "GET", "/v1/spend", headers=ALICE, query="by=colour")
    assert error_of(bad) == (400, "invalid_request_error", "invalid_parameter") and bad.json()["error"]["param"] == "by"
    bad = call(app, "GET", "/v1/spend", headers=ALICE, query="since=forever")
    assert bad.json()["error"]["param"] == "since"
