"""GatewayClient against a real node on the in-process system: no socket, no process.

The client is handed ``InProcessLink`` (its seam, actors/node_link.py); the node is a real
``NodeRegistry`` that deploys real engines, workers and breakers, whose HTTP goes through the
worker's transport seam to scripted upstreams (``FakeUpstream``, the mock transport). What
the upstream received is the evidence of what was sent, cancelled or never sent.
"""

from __future__ import annotations

import gc
import threading
import time
from typing import Any

import pytest
from thespian.actors import ActorExitRequest

from actors import errors as E
from actors.client import GatewayClient
from actors.core.retry import RetryPolicy
from actors.core.routing import RoutingPolicy
from actors.node_link import InProcessLink
from actors.params import NOT_GIVEN
from actors.runtime.protocol import Deploy, Deployed
from actors.testing.mock_transport import EOF
from harness import Answer, ask, deployment, openai_stream, stream_answer

HI = [{"role": "user", "content": "hi"}]
QUICK = RetryPolicy(max_retries=0, base_delay_s=0.01, max_delay_s=0.05, jitter="none")


def dep(name: str = "d1", **overrides: Any) -> Any:
    overrides.setdefault("retry", QUICK)
    overrides.setdefault("workers", 1)
    return deployment(name=name, model=overrides.pop("model", name), **overrides)


@pytest.fixture
def node_client(asys, upstream):
    """Factory: node_client(*deployments, routing=None, **client) -> a GatewayClient of a real in-process node."""
    made: list[GatewayClient] = []

    def make(*deployments: Any, routing: RoutingPolicy | None = None, **kw: Any) -> GatewayClient:
        link = InProcessLink(asys)
        ask(asys, link.registry, Deploy("n1", list(deployments), admin_port=1900, routing=routing), Deployed, 15)
        made.append(GatewayClient(link=link, **{"timeout_s": 10.0, "liveness_after_s": 0.1, **kw}))
        return made[-1]

    yield make
    for client in made:
        client.close()


def held_stream(words: int = 3) -> tuple[Answer, threading.Event]:
    """A stream that sends its first words, then holds (a long answer still running upstream)."""
    hold = threading.Event()
    parts = openai_stream([f"w{i} " for i in range(words)])
    answer = Answer(200, parts=parts[:1] + [hold] + parts[1:], headers={"content-type": "text/event-stream"},
                    hold_s=30.0)
    return answer, hold


def test_complete_and_stream_through_a_real_node(node_client, upstream):
    gw = node_client(dep("d1"))
    result = gw.complete("d1", HI, max_tokens=5)
    assert (result.text, result.usage.input_tokens, result.usage.output_tokens) == ("ok", 3, 2)
    assert result.deployment == "d1" and result.attempts == 1
    assert [(a.deployment, a.error_kind) for a in result.attempt_log] == [("d1", "")]
    (sent,) = upstream.requests
    assert sent.json()["max_completion_tokens"] == 5 and "temperature" not in sent.json()

    upstream.then(stream_answer(["Hel", "lo", "!"]))
    with gw.stream("d1", HI) as stream:
        chunks = list(stream)
    assert [c.seq for c in chunks] == list(range(len(chunks))) and len(chunks) >= 1
    assert "".join(c.text for c in chunks) == stream.result.text == "Hello!"
    assert stream.deployment == "d1" and not stream.fallback and upstream.requests[-1].json()["stream"] is True


def test_parameters_left_out_are_not_sent_and_bad_ones_never_leave_the_client(node_client, upstream):
    gw = node_client(dep("d1"))
    for call in (gw.complete, gw.stream, gw.request):
        with pytest.raises(TypeError, match=f"{call.__name__}\\(\\) got an unexpected keyword argument 'max_tokenz'"):
            call("d1", HI, max_tokenz=3)
    with pytest.raises(TypeError, match="max_tokens given both as a parameter and in extra_body"):
        gw.complete("d1", HI, max_tokens=3, extra_body={"max_tokens": 4})
    with pytest.raises(TypeError, match="extra_body must be a dict"):
        gw.complete("d1", HI, extra_body=["max_tokens"])
    with pytest.raises(TypeError, match="fallbacks must be a list of model names"):
        gw.complete("d1", HI, fallbacks="d2")
    with pytest.raises(TypeError, match="timeout_s must be a number of seconds, got str"):
        gw.complete("d1", HI, timeout_s="5")
    with pytest.raises(ValueError, match="timeout_s must be finite"):
        gw.complete("d1", HI, timeout_s=float("nan"))
    with pytest.raises(E.DeadlineExceeded, match="the deadline passed before the call was sent"):
        gw.complete("d1", HI, timeout_s=0)
    with pytest.raises(E.BadRequest, match="params.temperature must be a number in"):
        gw.complete("d1", HI, temperature=7.5)        # the engine's check, before anything is queued
    assert upstream.requests == []                    # none of those reached the provider

    request = gw.request("d1", (m for m in HI), temperature=0.0, stop=None, max_tokens=NOT_GIVEN,
                         extra_body={"top_k": 3}, metadata={"team": "search"}, priority="high", idempotent=False,
                         request_id="r-1", fallbacks=("d2",), timeout_s=None)
    assert request.params == {"temperature": 0.0, "stop": None, "top_k": 3}
    assert request.messages == HI and (request.priority, request.idempotent, request.request_id) == ("high", False, "r-1")
    assert request.metadata == {"team": "search"} and request.fallbacks == ["d2"]
    assert 9 < request.deadline_unix - time.time() <= 10    # timeout_s None: the client's own
    with pytest.raises(E.BadRequest, match="messages must be a non-empty list"):
        gw.complete("d1", None)                       # not messages at all: the engine names what is wrong


def test_leaving_a_stream_early_cancels_it_upstream_and_frees_the_worker(node_client, upstream):
    gw = node_client(dep("d1"))          # one worker: the next call waits for it
    answer, hold = held_stream()
    upstream.then(answer)
    try:
        for chunk in gw.stream("d1", HI):
            assert chunk.text == "w0 "
            break                        # leave the loop while the upstream is still sending
        assert gw.complete("d1", HI).text == "ok"     # served by the one worker: the first call let go of it
    finally:
        hold.set()
    (engine,) = gw.status().engines
    assert (engine.accepted, engine.completed, engine.failed, engine.in_flight) == (2, 1, 1, 0)   # one cancelled


def test_a_dropped_stream_is_cancelled(node_client, upstream):
    gw = node_client(dep("d1"))
    answer, hold = held_stream()
    upstream.then(answer)
    try:
        stream = gw.stream("d1", HI)
        next(iter(stream))
        del stream
        gc.collect()
        assert gw.complete("d1", HI).text == "ok"
    finally:
        hold.set()
    assert gw.status().engines[0].failed == 1


def test_the_deadline_ends_a_call_whose_upstream_never_answers(node_client, upstream):
    gw = node_client(dep("d1"))
    upstream.then(Answer.silent())
    with pytest.raises(E.DeadlineExceeded) as caught:
        gw.complete("d1", HI, timeout_s=0.3)
    assert caught.value.request_id and not caught.value.retryable
    assert len(upstream.requests) == 1


def test_a_failed_call_goes_to_its_fallback_and_a_stream_never_after_its_first_token(node_client, upstream):
    gw = node_client(dep("a", model="m", endpoint="http://a.invalid/v1"),
                     dep("b", model="backup", endpoint="http://b.invalid/v1"),
                     routing=RoutingPolicy(fallbacks={"m": ["backup"]}))
    upstream.then(Answer(503, {"error": {"message": "overloaded"}}))
    result = gw.complete("m", HI)
    assert result.deployment == "b" and result.attempts == 2
    assert [(a.deployment, a.status, a.sent) for a in result.attempt_log] == [("a", 503, True), ("b", None, True)]
    assert [r.host for r in upstream.requests] == ["a.invalid", "b.invalid"]

    broken = Answer(200, parts=openai_stream(["one ", "two "])[:1] + [EOF], headers={"content-type": "text/event-stream"})
    upstream.then(broken)
    stream = gw.stream("m", HI)
    with pytest.raises(E.StreamError):
        for _ in stream:
            pass
    assert [c.text for c in stream.chunks] == ["one "] and upstream.requests[-1].host == "a.invalid"


def test_the_router_refuses_a_prompt_too_long_for_a_deployment_and_the_node_counts_it(node_client, upstream):
    gw = node_client(dep("small", model="m", max_input_tokens=10), dep("big", model="big"),
                     routing=RoutingPolicy(context_window_fallbacks={"m": ["big"]}))
    long = [{"role": "user", "content": "word " * 100}]
    served = gw.complete("m", long)       # not sent to "small": its window is too small; its fallback serves
    assert [(a.deployment, a.error_kind, a.sent) for a in served.attempt_log] == \
        [("small", "context_length_exceeded", False), ("big", "", True)]
    with pytest.raises(E.ContextLengthExceeded, match="longer than the 10-token context window") as caught:
        gw.complete("small", long)        # the deployment by name: no fallback list of its own
    assert [(a.deployment, a.sent) for a in caught.value.attempt_log] == [("small", False)]
    assert [r.host for r in upstream.requests] == ["upstream.invalid"]   # only the call "big" served went out
    gw.close()                            # reports what the router refused, held back or not
    status_client = GatewayClient(link=InProcessLink(gw.link.system))
    try:
        assert status_client.status().refusals == {"small": {"ContextLengthExceeded": 1}}
    finally:
        status_client.close()


def test_embeddings_are_cut_into_the_deployments_batches_and_merged_in_order(node_client, upstream):
    gw = node_client(dep("emb", provider="openai_compatible", options={"embed_batch": 2}))

    def vectors(first: int, count: int) -> Answer:
        return Answer(200, {"object": "list", "model": "m", "usage": {"prompt_tokens": count, "total_tokens": count},
                            "data": [{"object": "embedding", "index": i, "embedding": [float(first + i)]}
                                     for i in range(count)]})
    upstream.then(vectors(0, 2), vectors(2, 2), vectors(4, 1))
    result = gw.embed("emb", [f"text {i}" for i in range(5)], request_id="e1", dimensions=8)
    assert result.embeddings == [[0.0], [1.0], [2.0], [3.0], [4.0]]
    assert result.usage.input_tokens == 5 and result.usage.reported and result.deployment == "emb"
    assert [c.request_id for c in result.calls] == ["e1-0", "e1-1", "e1-2"]
    assert [r.json()["input"] for r in upstream.requests] == [["text 0", "text 1"], ["text 2", "text 3"], ["text 4"]]
    assert all(r.json()["dimensions"] == 8 for r in upstream.requests)
    with pytest.raises(TypeError, match="input must be a string or a non-empty list of strings"):
        gw.embed("emb", [])
    with pytest.raises(TypeError, match="batch_size must be a positive integer"):
        gw.embed("emb", "x", batch_size=0)
    upstream.then(vectors(7, 1))
    assert gw.embed("emb", "one text").embeddings == [[7.0]]


def test_a_call_sent_to_an_engine_that_died_is_sent_again_to_its_replacement(node_client, upstream):
    gw = node_client(dep("d1"), route_ttl_s=60.0)
    (entry,) = gw.routes("d1")
    gw.asys.tell(entry.engine, ActorExitRequest())     # the node restarts it; the client's cache still has it
    result = gw.complete("d1", HI)
    assert result.text == "ok" and len(upstream.requests) == 1
    assert gw.routes("d1")[0].engine != entry.engine

    (entry,) = gw.routes("d1")
    gw.asys.tell(entry.engine, ActorExitRequest())
    with pytest.raises(E.EngineCrashed, match="died; restarting") as caught:
        gw.complete("d1", HI, idempotent=False)
    assert caught.value.retryable and len(upstream.requests) == 1   # not sent anywhere: the caller may repeat it


def test_lookups_status_and_spend_of_a_real_node(node_client):
    gw = node_client(dep("d1"))
    status = gw.status()
    assert status.node == "n1" and [e.deployment for e in status.engines] == ["d1"]
    (report,) = gw.spend(0.0)
    assert report.error           # this node keeps no ledger, and says so
    (member,) = gw.spend(0.0, cluster=True)     # each member's own answer
    assert member.error == report.error
    assert gw.routes("d1", refresh=True)[0].deployment == "d1"
    with pytest.raises(E.NotFound, match="no deployment serves model 'nothing'"):
        gw.complete("nothing", HI)


def test_a_stream_closed_from_another_thread_ends_that_threads_iteration_with_cancelled(node_client, upstream):
    gw = node_client(dep("d1"))
    answer, hold = held_stream()
    upstream.then(answer)
    stream = gw.stream("d1", HI)
    first, outcome = threading.Event(), []

    def iterate() -> None:
        try:
            for _ in stream:
                first.set()
            outcome.append("ended")
        except E.InferenceError as exc:
            outcome.append(exc)

    reader = threading.Thread(target=iterate)
    reader.start()
    try:
        assert first.wait(10), "no first chunk"
        stream.close()                       # while the other thread is inside the iteration
        reader.join(10)
        assert not reader.is_alive()
    finally:
        hold.set()
    (error,) = outcome
    assert isinstance(error, E.Cancelled) and error.request_id == stream.request_id
    assert gw.status().engines[0].failed == 1


def test_a_client_used_as_a_context_manager_reports_and_detaches_on_leaving(asys, upstream):
    link = InProcessLink(asys)
    ask(asys, link.registry, Deploy("n1", [dep("d1", max_input_tokens=1)], admin_port=1900), Deployed, 15)
    with GatewayClient(link=link) as gw:
        for _ in range(2):
            with pytest.raises(E.ContextLengthExceeded):
                gw.complete("d1", [{"role": "user", "content": "far more than one token"}])
    assert gw.asys is None
    gw.cancel("req_after_close")              # a closed client sends nothing, and does not fail
    with GatewayClient(link=InProcessLink(asys)) as other:
        assert other.status().refusals == {"d1": {"ContextLengthExceeded": 2}}
        assert [m.node for m in other.cluster_status(members_only=True).members] == ["n1"]


def test_a_threads_endpoint_is_released_once_the_thread_ended_and_its_stream_is_read(node_client, upstream):
    gw = node_client(dep("d1"))
    link = gw.link
    held = len(link._endpoints)                # the client's own (for cancels)
    results: list[str] = []

    def one_call() -> None:
        results.append(gw.complete("d1", HI, max_tokens=1).text)

    for _ in range(5):                         # a server with a thread per request
        t = threading.Thread(target=one_call)
        t.start()
        t.join(30)
    gc.collect()
    assert results == ["ok"] * 5 and len(link._endpoints) == held
    # A stream begun in a thread that ended keeps that thread's endpoint until it is read and dropped.
    upstream.then(stream_answer(["a", "b", "c"]))
    begun: list[Any] = []

    def begin() -> None:
        stream = gw.stream("d1", HI)
        chunks = iter(stream)              # (dropping an iterator early cancels the call)
        begun.append((stream, chunks, next(chunks).text))

    t = threading.Thread(target=begin)
    t.start()
    t.join(30)
    gc.collect()
    assert len(link._endpoints) == held + 1
    stream, chunks, first = begun.pop()
    with stream:
        assert first + "".join(c.text for c in chunks) == "abc"
    del stream, chunks
    gc.collect()
    assert len(link._endpoints) == held
